//! Wraps a JPEG into a camera RAW layout as its embedded preview, for the
//! format benchmark (`scripts/bench_formats.sh`): the file the RAW reader
//! sees has a real-size preview next to stand-in sensor data.
//!
//!     make_raw dng|nef|arw|cr2|orf|raf|cr3 IN.jpg OUT

use instrument_model::testkit::raw_files::{RawLayout, raw_file};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, layout, input, output] = args.as_slice() else {
        return Err("usage: make_raw dng|nef|arw|cr2|orf|raf|cr3 IN.jpg OUT".into());
    };
    let layout = RawLayout::ALL
        .into_iter()
        .find(|l| l.extension() == layout)
        .ok_or_else(|| format!("unknown layout {layout}"))?;
    let jpeg = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    std::fs::write(output, raw_file(layout, &jpeg, 1)).map_err(|e| format!("{output}: {e}"))
}
