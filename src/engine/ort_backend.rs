//! ONNX Runtime backend (CPU and CUDA). Placeholder until the ORT issue lands.

use super::{Backend, Classifier, EngineError, EngineOptions};
use crate::model::LoadedModel;
use ndarray::{Array2, ArrayView4};

pub struct OrtClassifier {
    backend: Backend,
}

impl OrtClassifier {
    pub fn new(_model: &LoadedModel, _options: &EngineOptions, cuda: bool) -> Result<Self, EngineError> {
        let backend = if cuda { Backend::Cuda } else { Backend::OrtCpu };
        Err(EngineError::Unavailable { backend, reason: "ONNX Runtime support is not built yet".into() })
    }
}

impl Classifier for OrtClassifier {
    fn backend(&self) -> Backend {
        self.backend
    }
    fn preferred_batch(&self) -> usize {
        16
    }
    fn run(&mut self, _batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        unreachable!("never constructed")
    }
}
