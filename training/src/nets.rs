//! The two architectures, in tch, named exactly like their ImageNet weights:
//! EfficientNet-Lite0 in the lukemelas / `efficientnet-lite-pytorch` layout and
//! ResNet50 in torchvision's. Each layer also knows how to write itself into an
//! ONNX graph (batch norm folded into the convolution), so the exported model
//! is built from the same description that trained.

use instrument_model::onnx::{Attr, GraphBuilder};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Arch {
    /// EfficientNet-Lite0 (no squeeze-excitation, ReLU6, TF "SAME" padding; 4.7 M parameters, 224 px).
    #[value(name = "efficientnet-lite0")]
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
    /// EfficientNet-Lite1: Lite0 1.1x deeper (5.4 M parameters, 240 px).
    #[value(name = "efficientnet-lite1")]
    #[serde(rename = "efficientnet-lite1")]
    EfficientNetLite1,
    /// EfficientNet-Lite2: Lite0 1.1x wider and 1.2x deeper (6.1 M parameters, 260 px).
    #[value(name = "efficientnet-lite2")]
    #[serde(rename = "efficientnet-lite2")]
    EfficientNetLite2,
    /// torchvision's ResNet50 (25.6 M parameters).
    #[value(name = "resnet50")]
    #[serde(rename = "resnet50")]
    ResNet50,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::EfficientNetLite0 => "efficientnet-lite0",
            Arch::EfficientNetLite1 => "efficientnet-lite1",
            Arch::EfficientNetLite2 => "efficientnet-lite2",
            Arch::ResNet50 => "resnet50",
        }
    }

    /// Name prefix of the classification layer in the state dict.
    pub fn head_name(self) -> &'static str {
        match self {
            Arch::ResNet50 => "fc",
            _ => "_fc",
        }
    }

    pub fn feature_dim(self) -> i64 {
        match self {
            Arch::ResNet50 => 2048,
            _ => 1280,
        }
    }

    /// The input side its ImageNet weights were trained at.
    pub fn native_size(self) -> u32 {
        match self {
            Arch::EfficientNetLite1 => 240,
            Arch::EfficientNetLite2 => 260,
            _ => 224,
        }
    }

    /// (width, depth) multipliers of an EfficientNet-Lite variant.
    fn lite_scaling(self) -> Option<(f64, f64)> {
        match self {
            Arch::EfficientNetLite0 => Some((1.0, 1.0)),
            Arch::EfficientNetLite1 => Some((1.0, 1.1)),
            Arch::EfficientNetLite2 => Some((1.1, 1.2)),
            Arch::ResNet50 => None,
        }
    }
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy)]
enum Pad {
    /// TensorFlow "SAME": output = ceil(input / stride), extra pixel at the end.
    Same,
    Fixed(i64),
}

/// A bias-free convolution followed by batch norm.
#[derive(Debug)]
struct ConvBn {
    w: Tensor,
    bn: nn::BatchNorm,
    eps: f64,
    k: i64,
    stride: i64,
    groups: i64,
    pad: Pad,
}

struct ConvCfg {
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    groups: i64,
    pad: Pad,
    eps: f64,
    momentum: f64,
}

impl ConvBn {
    fn new(conv: nn::Path, bn: nn::Path, c: ConvCfg) -> ConvBn {
        let w = conv.var(
            "weight",
            &[c.cout, c.cin / c.groups, c.k, c.k],
            nn::init::DEFAULT_KAIMING_UNIFORM,
        );
        // PyTorch initialises gamma to 1; tch's default draws it from U(0, 1), which
        // shrinks a random-init network's activations ~0.6x per layer (1e-12 after Lite0).
        let cfg = nn::BatchNormConfig {
            eps: c.eps,
            momentum: c.momentum,
            ws_init: nn::Init::Const(1.0),
            ..Default::default()
        };
        let bn = nn::batch_norm2d(bn, c.cout, cfg);
        ConvBn {
            w,
            bn,
            eps: c.eps,
            k: c.k,
            stride: c.stride,
            groups: c.groups,
            pad: c.pad,
        }
    }

    /// (top, left, bottom, right) padding and output size for an `h`x`w` input.
    fn geometry(&self, h: i64, w: i64) -> ([i64; 4], i64, i64) {
        match self.pad {
            Pad::Same => {
                let (oh, ow) = (
                    (h + self.stride - 1) / self.stride,
                    (w + self.stride - 1) / self.stride,
                );
                let ph = ((oh - 1) * self.stride + self.k - h).max(0);
                let pw = ((ow - 1) * self.stride + self.k - w).max(0);
                ([ph / 2, pw / 2, ph - ph / 2, pw - pw / 2], oh, ow)
            }
            Pad::Fixed(p) => (
                [p, p, p, p],
                (h + 2 * p - self.k) / self.stride + 1,
                (w + 2 * p - self.k) / self.stride + 1,
            ),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let size = x.size();
        let (pads, _, _) = self.geometry(size[2], size[3]);
        let [t, l, b, r] = pads;
        let y = if t == b && l == r {
            x.conv2d(
                &self.w,
                None::<Tensor>,
                [self.stride, self.stride],
                [t, l],
                [1, 1],
                self.groups,
            )
        } else {
            x.constant_pad_nd([l, r, t, b]).conv2d(
                &self.w,
                None::<Tensor>,
                [self.stride, self.stride],
                [0, 0],
                [1, 1],
                self.groups,
            )
        };
        y.apply_t(&self.bn, train)
    }

    /// Writes Conv (with batch norm folded in) and returns (output, h, w).
    fn emit(&self, g: &mut GraphBuilder, x: &str, h: i64, w: i64) -> (String, i64, i64) {
        let (pads, oh, ow) = self.geometry(h, w);
        let (wf, bf) = tch::no_grad(|| {
            let d = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
            let gamma = self
                .bn
                .ws
                .as_ref()
                .map(d)
                .unwrap_or_else(|| Tensor::ones_like(&d(&self.bn.running_var)));
            let beta = self
                .bn
                .bs
                .as_ref()
                .map(d)
                .unwrap_or_else(|| Tensor::zeros_like(&d(&self.bn.running_var)));
            let scale = gamma / (d(&self.bn.running_var) + self.eps).sqrt();
            let wf = d(&self.w) * scale.view([-1, 1, 1, 1]);
            let bf = beta - d(&self.bn.running_mean) * &scale;
            (to_vec(&wf), to_vec(&bf))
        });
        let dims = self.w.size();
        let wn = g.fresh("conv_w");
        let bn = g.fresh("conv_b");
        g.constant_f32(&wn, &dims, &wf);
        g.constant_f32(&bn, &[dims[0]], &bf);
        let out = g.fresh("conv");
        g.node(
            "Conv",
            &[x, &wn, &bn],
            &out,
            vec![
                ("kernel_shape", Attr::Ints(vec![self.k, self.k])),
                ("strides", Attr::Ints(vec![self.stride, self.stride])),
                ("pads", Attr::Ints(pads.to_vec())),
                ("dilations", Attr::Ints(vec![1, 1])),
                ("group", Attr::Int(self.groups)),
            ],
        );
        (out, oh, ow)
    }
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&flat).expect("a float tensor converts to Vec<f32>")
}

/// Shared ONNX constants (Clip bounds) and small helpers.
struct Emitter<'a> {
    g: &'a mut GraphBuilder,
    zero: String,
    six: String,
}

impl<'a> Emitter<'a> {
    fn new(g: &'a mut GraphBuilder) -> Emitter<'a> {
        let zero = g.constant_f32("clip_min", &[], &[0.0]);
        let six = g.constant_f32("clip_max", &[], &[6.0]);
        Emitter { g, zero, six }
    }
    fn relu6(&mut self, x: &str) -> String {
        let out = self.g.fresh("relu6");
        let (z, s) = (self.zero.clone(), self.six.clone());
        self.g.node("Clip", &[x, &z, &s], &out, vec![])
    }
    fn relu(&mut self, x: &str) -> String {
        let out = self.g.fresh("relu");
        self.g.node("Relu", &[x], &out, vec![])
    }
    fn add(&mut self, a: &str, b: &str) -> String {
        let out = self.g.fresh("add");
        self.g.node("Add", &[a, b], &out, vec![])
    }
}

fn relu6(x: &Tensor) -> Tensor {
    x.clamp(0.0, 6.0)
}

// ---------------------------------------------------------------- EfficientNet-Lite

/// Lite0's stages, (expand ratio, kernel, stride, output channels, repeats),
/// from the reference builder; the other variants scale them (see [`lite_stages`]).
const LITE0_STAGES: [(i64, i64, i64, i64, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];
const LITE_EPS: f64 = 1e-3;
/// PyTorch's default (the reference uses TF's 0.01, which needs many more steps than a
/// short fine-tune takes for the running statistics to settle).
const LITE_MOMENTUM: f64 = 0.1;
/// The Lite variants keep the stem and the head at Lite0's width.
const LITE_STEM: i64 = 32;
const LITE_HEAD: i64 = 1280;

/// Channels scaled by the width multiplier, rounded to a multiple of 8 as
/// TensorFlow's builder does (never more than 10% below the exact value).
fn round_channels(c: i64, width: f64) -> i64 {
    let exact = c as f64 * width;
    let mut rounded = (((exact + 4.0) as i64) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * exact {
        rounded += 8;
    }
    rounded
}

/// The stages of a Lite variant: channels scaled by `width`, repeats by
/// `depth` (rounded up), except the first and last stage, which Lite keeps as
/// they are (the reference's `fix_head_stem`).
fn lite_stages(width: f64, depth: f64) -> Vec<(i64, i64, i64, i64, usize)> {
    let last = LITE0_STAGES.len() - 1;
    LITE0_STAGES
        .iter()
        .enumerate()
        .map(|(i, &(ratio, k, stride, cout, repeats))| {
            let repeats = if i == 0 || i == last {
                repeats
            } else {
                (repeats as f64 * depth).ceil() as usize
            };
            (ratio, k, stride, round_channels(cout, width), repeats)
        })
        .collect()
}

#[derive(Debug)]
struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    skip: bool,
}

#[derive(Debug)]
struct Lite {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
}

impl Lite {
    fn new(p: &nn::Path, width: f64, depth: f64) -> Lite {
        let cfg = |cin, cout, k, stride, groups| ConvCfg {
            cin,
            cout,
            k,
            stride,
            groups,
            pad: Pad::Same,
            eps: LITE_EPS,
            momentum: LITE_MOMENTUM,
        };
        let stem = ConvBn::new(p / "_conv_stem", p / "_bn0", cfg(3, LITE_STEM, 3, 2, 1));
        let mut blocks = Vec::new();
        let mut cin = LITE_STEM;
        for (ratio, k, stride, cout, repeats) in lite_stages(width, depth) {
            for r in 0..repeats {
                let bp = p / "_blocks" / blocks.len();
                let s = if r == 0 { stride } else { 1 };
                let cexp = cin * ratio;
                let expand = (ratio != 1).then(|| {
                    ConvBn::new(&bp / "_expand_conv", &bp / "_bn0", cfg(cin, cexp, 1, 1, 1))
                });
                let depthwise = ConvBn::new(
                    &bp / "_depthwise_conv",
                    &bp / "_bn1",
                    cfg(cexp, cexp, k, s, cexp),
                );
                let project = ConvBn::new(
                    &bp / "_project_conv",
                    &bp / "_bn2",
                    cfg(cexp, cout, 1, 1, 1),
                );
                blocks.push(MbConv {
                    expand,
                    depthwise,
                    project,
                    skip: s == 1 && cin == cout,
                });
                cin = cout;
            }
        }
        let head = ConvBn::new(p / "_conv_head", p / "_bn1", cfg(cin, LITE_HEAD, 1, 1, 1));
        Lite { stem, blocks, head }
    }

    fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = relu6(&self.stem.forward(x, train));
        for b in &self.blocks {
            let mut y = match &b.expand {
                Some(e) => relu6(&e.forward(&x, train)),
                None => x.shallow_clone(),
            };
            y = relu6(&b.depthwise.forward(&y, train));
            y = b.project.forward(&y, train);
            x = if b.skip { y + &x } else { y };
        }
        relu6(&self.head.forward(&x, train))
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
    }

    fn emit(&self, e: &mut Emitter, x: &str, h: i64, w: i64) -> String {
        let (y, mut h, mut w) = self.stem.emit(e.g, x, h, w);
        let mut x = e.relu6(&y);
        for b in &self.blocks {
            let mut y = x.clone();
            if let Some(ex) = &b.expand {
                let (o, _, _) = ex.emit(e.g, &y, h, w);
                y = e.relu6(&o);
            }
            let (o, oh, ow) = b.depthwise.emit(e.g, &y, h, w);
            y = e.relu6(&o);
            let (o, _, _) = b.project.emit(e.g, &y, oh, ow);
            x = if b.skip { e.add(&o, &x) } else { o };
            (h, w) = (oh, ow);
        }
        let (o, _, _) = self.head.emit(e.g, &x, h, w);
        e.relu6(&o)
    }
}

// ---------------------------------------------------------------- ResNet50

const RES_EPS: f64 = 1e-5;

#[derive(Debug)]
struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    down: Option<ConvBn>,
}

#[derive(Debug)]
struct ResNet50 {
    stem: ConvBn,
    layers: Vec<Bottleneck>,
}

impl ResNet50 {
    fn new(p: &nn::Path) -> ResNet50 {
        let cfg = |cin, cout, k, stride, pad| ConvCfg {
            cin,
            cout,
            k,
            stride,
            groups: 1,
            pad: Pad::Fixed(pad),
            eps: RES_EPS,
            momentum: 0.1,
        };
        let stem = ConvBn::new(p / "conv1", p / "bn1", cfg(3, 64, 7, 2, 3));
        let mut layers = Vec::new();
        let mut cin = 64;
        for (li, (planes, blocks, stride)) in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
            .into_iter()
            .enumerate()
        {
            for bi in 0..blocks {
                let bp = p / format!("layer{}", li + 1) / bi;
                let s = if bi == 0 { stride } else { 1 };
                let cout = planes * 4;
                let down = (bi == 0).then(|| {
                    ConvBn::new(
                        &bp / "downsample" / "0",
                        &bp / "downsample" / "1",
                        cfg(cin, cout, 1, s, 0),
                    )
                });
                layers.push(Bottleneck {
                    c1: ConvBn::new(&bp / "conv1", &bp / "bn1", cfg(cin, planes, 1, 1, 0)),
                    c2: ConvBn::new(&bp / "conv2", &bp / "bn2", cfg(planes, planes, 3, s, 1)),
                    c3: ConvBn::new(&bp / "conv3", &bp / "bn3", cfg(planes, cout, 1, 1, 0)),
                    down,
                });
                cin = cout;
            }
        }
        ResNet50 { stem, layers }
    }

    fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x =
            self.stem
                .forward(x, train)
                .relu()
                .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for b in &self.layers {
            let y = b.c1.forward(&x, train).relu();
            let y = b.c2.forward(&y, train).relu();
            let y = b.c3.forward(&y, train);
            let shortcut = match &b.down {
                Some(d) => d.forward(&x, train),
                None => x.shallow_clone(),
            };
            x = (y + shortcut).relu();
        }
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    fn emit(&self, e: &mut Emitter, x: &str, h: i64, w: i64) -> String {
        let (y, h, w) = self.stem.emit(e.g, x, h, w);
        let y = e.relu(&y);
        let pooled = e.g.fresh("maxpool");
        let mut x = e.g.node(
            "MaxPool",
            &[&y],
            &pooled,
            vec![
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("strides", Attr::Ints(vec![2, 2])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ],
        );
        let (mut h, mut w) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
        for b in &self.layers {
            let (y, _, _) = b.c1.emit(e.g, &x, h, w);
            let y = e.relu(&y);
            let (y, oh, ow) = b.c2.emit(e.g, &y, h, w);
            let y = e.relu(&y);
            let (y, _, _) = b.c3.emit(e.g, &y, oh, ow);
            let shortcut = match &b.down {
                Some(d) => d.emit(e.g, &x, h, w).0,
                None => x.clone(),
            };
            let s = e.add(&y, &shortcut);
            x = e.relu(&s);
            (h, w) = (oh, ow);
        }
        x
    }
}

// ---------------------------------------------------------------- Network

#[derive(Debug)]
enum Body {
    Lite(Lite),
    ResNet50(ResNet50),
}

/// Variable prefix of the kept ImageNet classifier (the weights file calls it
/// `_fc`, the name our own head takes).
pub const IMAGENET_HEAD: &str = "imagenet_fc";

/// A backbone plus the classification head (dropout + linear), and optionally
/// the backbone's own ImageNet classifier, kept frozen beside it.
#[derive(Debug)]
pub struct Network {
    pub arch: Arch,
    pub vs: nn::VarStore,
    pub num_classes: i64,
    pub dropout: f64,
    body: Body,
    fc: nn::Linear,
    imagenet: Option<nn::Linear>,
}

impl Network {
    pub fn new(arch: Arch, num_classes: i64, dropout: f64, device: Device) -> Network {
        Self::build(arch, num_classes, dropout, device, None)
    }

    /// A network that keeps the ImageNet classifier (`imagenet_classes` wide,
    /// loaded from the pretrained file's head, never trained). Its output rows
    /// are our logits followed by the ImageNet logits (see `instrument_model::open_world`).
    pub fn with_imagenet_head(
        arch: Arch,
        num_classes: i64,
        dropout: f64,
        device: Device,
        imagenet_classes: i64,
    ) -> Network {
        Self::build(arch, num_classes, dropout, device, Some(imagenet_classes))
    }

    fn build(
        arch: Arch,
        num_classes: i64,
        dropout: f64,
        device: Device,
        imagenet_classes: Option<i64>,
    ) -> Network {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let body = match arch.lite_scaling() {
            Some((width, depth)) => Body::Lite(Lite::new(&root, width, depth)),
            None => Body::ResNet50(ResNet50::new(&root)),
        };
        let fc = nn::linear(
            &root / arch.head_name(),
            arch.feature_dim(),
            num_classes,
            Default::default(),
        );
        let imagenet = imagenet_classes.map(|n| {
            nn::linear(
                &root / IMAGENET_HEAD,
                arch.feature_dim(),
                n,
                Default::default(),
            )
        });
        Network {
            arch,
            vs,
            num_classes,
            dropout,
            body,
            fc,
            imagenet,
        }
    }

    /// Width of the kept ImageNet classifier, if there is one.
    pub fn imagenet_classes(&self) -> Option<i64> {
        self.imagenet.as_ref().map(|l| l.ws.size()[0])
    }

    /// Weight and bias of the kept ImageNet classifier.
    pub fn imagenet_weights(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        self.imagenet.as_ref().map(|l| (&l.ws, l.bs.as_ref()))
    }

    /// Weight and bias of our own head.
    pub fn head_weights(&self) -> (&Tensor, Option<&Tensor>) {
        (&self.fc.ws, self.fc.bs.as_ref())
    }

    /// Whether a variable belongs to the kept ImageNet classifier.
    pub fn is_imagenet_var(name: &str) -> bool {
        name.starts_with(&format!("{IMAGENET_HEAD}."))
    }

    /// Pooled backbone features `[N, feature_dim]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::Lite(b) => b.features(x, train),
            Body::ResNet50(b) => b.features(x, train),
        }
    }

    /// Dropout then our linear layer: one logit per class.
    pub fn probe(&self, f: &Tensor, train: bool) -> Tensor {
        f.dropout(self.dropout, train).apply(&self.fc)
    }

    /// The ImageNet logits of features `f` (no gradient: that head never trains).
    pub fn imagenet_logits(&self, f: &Tensor) -> Option<Tensor> {
        self.imagenet.as_ref().map(|l| tch::no_grad(|| f.apply(l)))
    }

    /// The model's output rows: our logits, then the ImageNet logits when kept.
    pub fn head(&self, f: &Tensor, train: bool) -> Tensor {
        let own = self.probe(f, train);
        match self.imagenet_logits(f) {
            Some(imagenet) => Tensor::cat(&[own, imagenet], 1),
            None => own,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.head(&self.features(x, train), train)
    }

    /// Names of the head's variables (trained from the start, never frozen).
    pub fn is_head_var(&self, name: &str) -> bool {
        name.starts_with(&format!("{}.", self.arch.head_name()))
    }

    /// Writes the backbone (up to the pooled, flattened features) into `g`.
    pub fn emit_features(&self, g: &mut GraphBuilder, input: &str, size: i64) -> String {
        let mut e = Emitter::new(g);
        let fmap = match &self.body {
            Body::Lite(b) => b.emit(&mut e, input, size, size),
            Body::ResNet50(b) => b.emit(&mut e, input, size, size),
        };
        let pooled = e.g.node("GlobalAveragePool", &[&fmap], "pooled", vec![]);
        e.g.node(
            "Flatten",
            &[&pooled],
            "features",
            vec![("axis", Attr::Int(1))],
        )
    }

    /// Writes the whole network into `g` after `input` (`[N, 3, size, size]`)
    /// and returns the name of the logits tensor.
    pub fn emit(&self, g: &mut GraphBuilder, input: &str, size: i64) -> String {
        let flat = self.emit_features(g, input, size);
        let (w, b) = tch::no_grad(|| (to_vec(&self.fc.ws), self.fc.bs.as_ref().map(to_vec)));
        let wn = g.constant_f32(
            "fc_weight",
            &[self.num_classes, self.arch.feature_dim()],
            &w,
        );
        let bn = g.constant_f32(
            "fc_bias",
            &[self.num_classes],
            &b.unwrap_or_else(|| vec![0.0; self.num_classes as usize]),
        );
        let own = g.node(
            "Gemm",
            &[&flat, &wn, &bn],
            "logits",
            vec![("transB", Attr::Int(1))],
        );
        let Some(head) = &self.imagenet else {
            return own;
        };
        let (w, b) = tch::no_grad(|| (to_vec(&head.ws), head.bs.as_ref().map(to_vec)));
        let n = head.ws.size()[0];
        let wn = g.constant_f32("imagenet_fc_weight", &[n, self.arch.feature_dim()], &w);
        let bn = g.constant_f32(
            "imagenet_fc_bias",
            &[n],
            &b.unwrap_or_else(|| vec![0.0; n as usize]),
        );
        let imagenet = g.node(
            "Gemm",
            &[&flat, &wn, &bn],
            "imagenet_logits",
            vec![("transB", Attr::Int(1))],
        );
        g.node(
            "Concat",
            &[&own, &imagenet],
            "scores",
            vec![("axis", Attr::Int(1))],
        )
    }

    /// Columns of one output row.
    pub fn output_width(&self) -> i64 {
        self.num_classes + self.imagenet_classes().unwrap_or(0)
    }
}
