//! Every integration test, linked into one binary (see `autotests` in
//! Cargo.toml). Each module below is one area of behaviour, driven through
//! the real `instrument-detector` binary or the public library API.
//!
//! Run one area with `cargo test --release --test tests <module>::`.

mod common;

mod backends_cli;
mod cli_pipes;
mod corrections;
mod daemon;
mod day_two;
mod engine_ort;
mod engine_tract;
mod formats;
mod library_events;
mod open_world;
mod ort_fallback;
mod quantize;
mod reliability;
mod reliability_fuzz;
mod report;
mod retrain;
mod triton;
mod web_page;
