//! Ctrl-C during training: the first press asks the loop to save a checkpoint
//! and stop; a second press exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once: the first press asks the loop to save a
/// checkpoint and stop; a second press exits at once.
pub(crate) fn install_ctrlc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond Ctrl-C: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: saving a checkpoint after this step (press again to quit now)");
        });
    });
}

/// Whether Ctrl-C has been pressed since the handler was installed.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
