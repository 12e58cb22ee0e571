//! Writes the tiny colour-classifier test model: `cargo run --example color_model -- out.onnx`.
fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "color.onnx".into());
    std::fs::write(&out, instrument_model::testkit::color_model(32)).expect("writing the model");
    for (i, label) in instrument_model::testkit::COLOR_LABELS.iter().enumerate() {
        let path = std::path::Path::new(&out).with_file_name(format!("{label}-{i}.png"));
        instrument_model::testkit::write_color_image(&path, label, image::ImageFormat::Png, i as u32).unwrap();
    }
}
