//! Tensor buffers handed back by the batchers once copied into a batch and
//! reused by the workers: no zero-fill and no fresh pages per image.

use crossbeam_channel::{Receiver, Sender};

pub(crate) struct TensorPool {
    free: (Sender<Vec<f32>>, Receiver<Vec<f32>>),
}

impl TensorPool {
    /// Keeps at most `capacity` free buffers.
    pub(crate) fn new(capacity: usize) -> Self {
        TensorPool { free: crossbeam_channel::bounded(capacity) }
    }

    /// A buffer of `len` elements, reused if one is free. Its content is
    /// whatever it held: the caller overwrites every element.
    pub(crate) fn take(&self, len: usize) -> Vec<f32> {
        match self.free.1.try_recv() {
            Ok(mut v) => {
                v.resize(len, 0.0);
                v
            }
            Err(_) => vec![0.0; len],
        }
    }

    /// Hands a buffer back (dropped if enough are free already).
    pub(crate) fn give_back(&self, v: Vec<f32>) {
        let _ = self.free.0.try_send(v);
    }
}
