//! One module per subcommand; each turns parsed flags into library calls and
//! formats the answer for a person or a program.

pub mod classify;
pub mod config;
pub mod correct;
pub mod evaluate;
pub mod quantize;
pub mod query;
pub mod reclassify;
pub mod report;
pub mod retrain;
pub mod serve;
pub mod status;
pub mod watch;

use std::path::PathBuf;

/// File name of the model shipped in `models/`.
pub const SHIPPED_MODEL: &str = "instrument-lite2.onnx";

/// The shipped model: `./models/…` if run from the repository, else next to
/// the executable's repository (`target/release/../../models`), else the
/// source tree this binary was built from.
pub fn default_model_path() -> PathBuf {
    let mut candidates = vec![PathBuf::from("models").join(SHIPPED_MODEL)];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join("models").join(SHIPPED_MODEL));
        }
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(SHIPPED_MODEL));
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| candidates.remove(0))
}
