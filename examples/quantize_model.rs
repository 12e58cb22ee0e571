//! The `quantize` subcommand's code as a stand-alone program, until the
//! subcommand is wired into the main binary:
//!
//!     cargo run --release --example quantize_model -- MODEL --calibration DIR --out OUT

#[path = "../src/commands/quantize.rs"]
mod quantize;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: quantize::QuantizeArgs,
}

fn main() -> std::process::ExitCode {
    match quantize::run(Cli::parse().args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
