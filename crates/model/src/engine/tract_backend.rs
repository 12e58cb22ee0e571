//! The pure-Rust backend: `tract-onnx`, CPU only, always available.

use super::{Backend, Classifier, EngineError, EngineOptions};
use crate::model::LoadedModel;
use ndarray::{Array2, ArrayView4, Ix2};
use tract_onnx::prelude::*;

pub(crate) struct TractClassifier {
    plan: std::sync::Arc<TypedSimplePlan>,
}

impl TractClassifier {
    pub(crate) fn new(model: &LoadedModel, _options: &EngineOptions) -> Result<Self, EngineError> {
        let err = |e: TractError| EngineError::Model { backend: Backend::Tract, reason: format!("{e:#}") };
        let mut graph = tract_onnx::onnx().model_for_proto_model(&model.proto).map_err(err)?;
        // A symbolic batch axis: one optimised plan serves every batch size.
        let n = graph.symbols.sym("N");
        let size = model.spec.preprocess.size as usize;
        let shape: TVec<TDim> = tvec![n.into(), 3.into(), size.into(), size.into()];
        graph.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape)).map_err(err)?;
        let plan = graph.into_optimized().map_err(err)?.into_runnable().map_err(err)?;
        Ok(TractClassifier { plan })
    }
}

impl Classifier for TractClassifier {
    fn split(self: Box<Self>) -> Vec<Box<dyn Classifier>> {
        vec![self]
    }

    fn backend(&self) -> Backend {
        Backend::Tract
    }

    fn preferred_batch(&self) -> usize {
        // On a CPU, batching buys little; small batches keep latency low.
        8
    }

    fn run(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        let err = |e: TractError| EngineError::Inference { backend: Backend::Tract, reason: format!("{e:#}") };
        let input: Tensor = batch.to_owned().into_dyn().into();
        let outputs = self.plan.run(tvec!(input.into())).map_err(err)?;
        let view = outputs[0].to_plain_array_view::<f32>().map_err(err)?;
        let rows = view.shape().first().copied().unwrap_or(0);
        let out = view
            .to_shape((rows, view.len() / rows.max(1)))
            .map_err(|e| EngineError::Inference { backend: Backend::Tract, reason: e.to_string() })?
            .into_dimensionality::<Ix2>()
            .map_err(|e| EngineError::Inference { backend: Backend::Tract, reason: e.to_string() })?
            .to_owned();
        Ok(out)
    }
}
