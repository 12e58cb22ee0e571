//! Writes an EfficientNet-Lite0-shaped ONNX model with random weights: the same
//! layers, channel counts, "SAME" paddings and op pattern (Conv with folded BN,
//! Clip as ReLU6, Add, GlobalAveragePool, Flatten, Gemm) as the `training`
//! export, so it costs the same to run as the shipped model. The benchmarks and
//! the quantiser use it when `models/instrument-lite0.onnx` is not there yet.
//!
//!     cargo run --release --example lite0_standin -- OUT.onnx [CLASSES]
//!
//! The labels are `class0..classN` unless a folder of class folders is given.

use instrument_model::model::{ModelSpec, keys};
use instrument_model::onnx::{Attr, Dim, GraphBuilder, dtype, encode};
use instrument_model::preprocess::{PreprocessSpec, ResizeMode};

/// xorshift64* and Box-Muller: deterministic, no extra dependency.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let u1 = self.next_f64().max(1e-12);
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// One convolution's shape: channels in and out, kernel side, stride, groups.
#[derive(Clone, Copy)]
struct Conv {
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    groups: i64,
}

/// A pointwise (1x1, stride 1, dense) convolution.
fn pointwise(cin: i64, cout: i64) -> Conv {
    Conv { cin, cout, k: 1, stride: 1, groups: 1 }
}

struct Emit {
    g: GraphBuilder,
    rng: Rng,
}

impl Emit {
    /// Conv with bias and TF "SAME" padding; returns (output, new side).
    fn conv(&mut self, x: &str, side: i64, c: Conv) -> (String, i64) {
        let Conv { cin, cout, k, stride, groups } = c;
        let out_side = (side + stride - 1) / stride;
        let total = ((out_side - 1) * stride + k - side).max(0);
        let (a, b) = (total / 2, total - total / 2);
        let fan_in = (cin / groups) * k * k;
        let std = (2.0 / fan_in as f32).sqrt();
        let n = (cout * (cin / groups) * k * k) as usize;
        let w: Vec<f32> = (0..n).map(|_| self.rng.normal() * std).collect();
        let bias: Vec<f32> = (0..cout).map(|_| self.rng.normal() * 0.05).collect();
        let wn = self.g.fresh("conv_w");
        let bn = self.g.fresh("conv_b");
        self.g.constant_f32(&wn, &[cout, cin / groups, k, k], &w);
        self.g.constant_f32(&bn, &[cout], &bias);
        let out = self.g.fresh("conv");
        self.g.node(
            "Conv",
            &[x, &wn, &bn],
            &out,
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(vec![a, a, b, b])),
                ("dilations", Attr::Ints(vec![1, 1])),
                ("group", Attr::Int(groups)),
            ],
        );
        (out, out_side)
    }
    fn relu6(&mut self, x: &str) -> String {
        let out = self.g.fresh("relu6");
        self.g.node("Clip", &[x, "clip_min", "clip_max"], &out, vec![])
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| {
        eprintln!("usage: lite0_standin OUT.onnx [CLASS_DIR | N_CLASSES]");
        std::process::exit(2)
    });
    let labels: Vec<String> = match args.next() {
        Some(a) if std::path::Path::new(&a).is_dir() => {
            let mut v: Vec<String> = std::fs::read_dir(&a)
                .expect("class folder readable")
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Some(n) => (0..n.parse::<usize>().expect("a number of classes")).map(|i| format!("class{i}")).collect(),
        None => (0..30).map(|i| format!("class{i}")).collect(),
    };
    let size = 224i64;
    let mut e = Emit { g: GraphBuilder::new("lite0-standin"), rng: Rng(0x9E37_79B9_7F4A_7C15) };
    let n = Dim::Named("N".into());
    e.g.input("input", dtype::FLOAT, &[n.clone(), Dim::Fixed(3), Dim::Fixed(size), Dim::Fixed(size)]);
    e.g.constant_f32("clip_min", &[], &[0.0]);
    e.g.constant_f32("clip_max", &[], &[6.0]);
    let (y, mut side) = e.conv("input", size, Conv { cin: 3, cout: 32, k: 3, stride: 2, groups: 1 });
    let mut x = e.relu6(&y);
    let mut cin = 32;
    const STAGES: [(i64, i64, i64, i64, usize); 7] = [
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ];
    for (ratio, k, stride, cout, repeats) in STAGES {
        for r in 0..repeats {
            let s = if r == 0 { stride } else { 1 };
            let cexp = cin * ratio;
            let mut y = x.clone();
            if ratio != 1 {
                let (o, _) = e.conv(&y, side, pointwise(cin, cexp));
                y = e.relu6(&o);
            }
            let (o, oside) = e.conv(&y, side, Conv { cin: cexp, cout: cexp, k, stride: s, groups: cexp });
            y = e.relu6(&o);
            let (o, _) = e.conv(&y, oside, pointwise(cexp, cout));
            x = if s == 1 && cin == cout {
                let out = e.g.fresh("add");
                e.g.node("Add", &[&o, &x], &out, vec![])
            } else {
                o
            };
            side = oside;
            cin = cout;
        }
    }
    let (o, _) = e.conv(&x, side, pointwise(320, 1280));
    let fmap = e.relu6(&o);
    let pooled = e.g.node("GlobalAveragePool", &[&fmap], "pooled", vec![]);
    let flat = e.g.node("Flatten", &[&pooled], "features", vec![("axis", Attr::Int(1))]);
    let classes = labels.len() as i64;
    let w: Vec<f32> = (0..classes * 1280).map(|_| e.rng.normal() * (1.0 / 1280f32).sqrt()).collect();
    e.g.constant_f32("fc_w", &[classes, 1280], &w);
    e.g.constant_f32("fc_b", &[classes], &vec![0.0; classes as usize]);
    e.g.node("Gemm", &[&flat, "fc_w", "fc_b"], "logits", vec![("transB", Attr::Int(1))]);
    e.g.output("logits", dtype::FLOAT, &[n, Dim::Fixed(classes)]);
    let preprocess =
        PreprocessSpec { size: size as u32, mean: [0.49803922; 3], std: [0.5019608; 3], resize: ResizeMode::Stretch };
    let mut spec = ModelSpec::new(labels.clone(), preprocess);
    spec.metadata.insert(keys::ARCHITECTURE.into(), "efficientnet-lite0-standin".into());
    e.g.metadata_all(spec.to_metadata());
    std::fs::write(&out, encode(&e.g.build())).expect("model written");
    eprintln!("wrote {out} ({} labels)", labels.len());
}
