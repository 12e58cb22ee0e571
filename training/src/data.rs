//! The dataset, augmentation and the parallel loader.
//!
//! Every image goes through the daemon's own decode ([`decode_rgb`]), resize
//! ([`resize_rgb`] / [`tensor_from_rgb`]) and normalisation ([`normalize_into`]),
//! so training sees exactly the pixels serving will see. Augmentation works on
//! the decoded picture before that last resize.

use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use image::RgbImage;
use instrument_model::preprocess::{
    DecodeLimits, PreprocessSpec, ResizeMode, crop_for, decode_rgb, normalize_into, resize_rgb,
    tensor_from_rgb,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

/// The images under `dir`, recursively, sorted: files with an image
/// extension, hidden names (`.*`) skipped, like the dataset's class folders.
/// (The daemon's own folder walk lives in the daemon, which training does
/// not link.)
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|e| IMAGE_EXTS.contains(&e.to_string_lossy().to_lowercase().as_str()))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    /// Class names in output order: Python's `sorted()` (byte order, capitals first).
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub valid: Vec<Sample>,
    pub test: Vec<Sample>,
}

/// What [`Dataset::add_corrections`] took from a folder of corrections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CorrectionsAdded {
    /// Photos added to the train split (each `repeat` times).
    pub photos: usize,
    /// Photos corrected to `none`, which the head has no output for: the
    /// `none` rule comes from the ImageNet head and its thresholds, not from
    /// examples, so they are counted and left out.
    pub none: usize,
}

/// Every format the shared decoder reads, phone and camera formats included.
const IMAGE_EXTS: [&str; 21] = instrument_model::formats::PHOTO_EXTENSIONS;

impl Dataset {
    /// Reads an image-folder tree (`train/`, `valid/`, `test/`, each `<class>/<image>`)
    /// or the dataset CSV (`filepaths,labels,data set`, paths relative to the CSV).
    pub fn open(path: &Path) -> Result<Dataset> {
        if path.is_file() {
            return Self::from_csv(path);
        }
        let csv = path.join("instruments.csv");
        if !path.join("train").is_dir() && csv.is_file() {
            return Self::from_csv(&csv);
        }
        Self::from_folders(path)
    }

    /// Adds a person's corrections to the train split: `dir/<label>/<photo>`,
    /// as `instrument-detector correct --export DIR` writes them. Each photo
    /// goes in `repeat` times. A label that is not one of the dataset's
    /// classes is refused (the head has no output for it), except `none`.
    pub fn add_corrections(&mut self, dir: &Path, repeat: usize) -> Result<CorrectionsAdded> {
        let mut added = CorrectionsAdded::default();
        let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading the corrections folder {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        for folder in folders {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let photos = images_under(&folder)?;
            if name == instrument_model::open_world::NONE {
                added.none += photos.len();
                continue;
            }
            let Some(label) = self.classes.iter().position(|c| *c == name) else {
                bail!(
                    "{}: '{name}' is not a class of the dataset ({} classes: {})",
                    folder.display(),
                    self.classes.len(),
                    self.classes.join(", ")
                );
            };
            for path in photos {
                for _ in 0..repeat.max(1) {
                    self.train.push(Sample {
                        path: path.clone(),
                        label,
                    });
                }
                added.photos += 1;
            }
        }
        Ok(added)
    }

    fn from_folders(root: &Path) -> Result<Dataset> {
        let train_dir = root.join("train");
        if !train_dir.is_dir() {
            bail!(
                "{} has no train/ folder (expected train/, valid/, test/, each <class>/<image>, or a CSV)",
                root.display()
            );
        }
        let mut classes: Vec<String> = std::fs::read_dir(&train_dir)
            .with_context(|| format!("reading {}", train_dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.len() < 2 {
            bail!(
                "{} holds {} class folders; at least 2 are needed",
                train_dir.display(),
                classes.len()
            );
        }
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let split = |name: &str| -> Result<Vec<Sample>> {
            let dir = root.join(name);
            let mut out = Vec::new();
            if !dir.is_dir() {
                return Ok(out);
            }
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if !entry.path().is_dir() {
                    continue;
                }
                let cname = entry.file_name().to_string_lossy().into_owned();
                let Some(&label) = index.get(cname.as_str()) else {
                    bail!("{}/{cname} is not a class of train/", dir.display());
                };
                let mut files: Vec<PathBuf> = std::fs::read_dir(entry.path())?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension()
                            .map(|e| {
                                IMAGE_EXTS.contains(&e.to_string_lossy().to_lowercase().as_str())
                            })
                            .unwrap_or(false)
                    })
                    .collect();
                files.sort();
                out.extend(files.into_iter().map(|path| Sample { path, label }));
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        };
        let (train, valid, test) = (split("train")?, split("valid")?, split("test")?);
        Ok(Dataset {
            root: root.to_path_buf(),
            classes,
            train,
            valid,
            test,
        })
    }

    fn from_csv(csv_path: &Path) -> Result<Dataset> {
        let root = csv_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut reader = csv::Reader::from_path(csv_path)
            .with_context(|| format!("reading {}", csv_path.display()))?;
        let headers = reader.headers()?.clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim() == name)
                .with_context(|| {
                    format!(
                        "{} has no '{name}' column (expected filepaths,labels,data set)",
                        csv_path.display()
                    )
                })
        };
        let (cp, cl, cs) = (col("filepaths")?, col("labels")?, col("data set")?);
        let mut rows = Vec::new();
        for rec in reader.records() {
            let rec = rec?;
            rows.push((
                rec[cp].to_string(),
                rec[cl].to_string(),
                rec[cs].trim().to_lowercase(),
            ));
        }
        let mut classes: Vec<String> = rows
            .iter()
            .filter(|r| r.2 == "train")
            .map(|r| r.1.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        classes.sort();
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for (p, l, s) in &rows {
            let label = *index
                .get(l.as_str())
                .with_context(|| format!("label '{l}' of {p} is not a training class"))?;
            let sample = Sample {
                path: root.join(p),
                label,
            };
            match s.as_str() {
                "train" => train.push(sample),
                "valid" | "validation" => valid.push(sample),
                "test" => test.push(sample),
                other => bail!("unknown split '{other}' for {p}"),
            }
        }
        Ok(Dataset {
            root,
            classes,
            train,
            valid,
            test,
        })
    }
}

/// Training-time augmentation. All randomness comes from the caller's [`Rng`].
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random resized crop: smallest fraction of the area kept (1 disables).
    pub min_scale: f32,
    pub hflip: bool,
    /// Brightness/contrast/saturation jitter strength (0 disables).
    pub jitter: f32,
    /// Probability of turning a picture grayscale.
    pub grayscale: f32,
    /// Probability of a light blur.
    pub blur: f32,
    /// Probability of shrinking the instrument into a synthetic scene (the
    /// world's photos are rarely one instrument filling the frame).
    #[serde(default)]
    pub scene: f32,
}

impl Augment {
    pub fn none() -> Augment {
        Augment {
            min_scale: 1.0,
            hflip: false,
            jitter: 0.0,
            grayscale: 0.0,
            blur: 0.0,
            scene: 0.0,
        }
    }
}

pub fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

/// Reads and decodes one file through the daemon's decoder.
pub fn read_rgb(path: &Path, size: u32) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_rgb(&bytes, size, &limits()).with_context(|| format!("decoding {}", path.display()))
}

/// A random crop box (left, top, width, height) covering `scale` of the area
/// with aspect ratio in [3/4, 4/3], torchvision-style, falling back to the whole.
pub fn random_crop_box(
    w: u32,
    h: u32,
    min_scale: f32,
    max_scale: f32,
    rng: &mut Rng,
) -> (f64, f64, f64, f64) {
    let (wf, hf) = (w as f32, h as f32);
    for _ in 0..10 {
        let area = wf * hf * rng.range(min_scale, max_scale);
        let log_r = rng.range((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
        let ratio = log_r.exp();
        let cw = (area * ratio).sqrt();
        let ch = (area / ratio).sqrt();
        if cw <= wf && ch <= hf && cw >= 1.0 && ch >= 1.0 {
            let l = rng.range(0.0, wf - cw);
            let t = rng.range(0.0, hf - ch);
            return (l as f64, t as f64, cw as f64, ch as f64);
        }
    }
    (0.0, 0.0, w as f64, h as f64)
}

fn to_gray(img: &mut RgbImage) {
    for p in img.pixels_mut() {
        let y = (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
            .round()
            .clamp(0.0, 255.0) as u8;
        p.0 = [y, y, y];
    }
}

/// Brightness, contrast and saturation, each by a factor in [1-s, 1+s].
fn jitter(img: &mut RgbImage, s: f32, rng: &mut Rng) {
    let b = rng.range(1.0 - s, 1.0 + s);
    let c = rng.range(1.0 - s, 1.0 + s);
    let sat = rng.range(1.0 - s, 1.0 + s);
    let n = (img.width() * img.height()).max(1) as f32;
    let mean: f32 = img
        .pixels()
        .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
        .sum::<f32>()
        / n;
    for p in img.pixels_mut() {
        let y = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        for k in 0..3 {
            let mut v = p[k] as f32 * b;
            v = y * b + (v - y * b) * sat;
            v = mean * b + (v - mean * b) * c;
            p[k] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// One training example: decode, augment, resize with the daemon's resizer, normalise.
pub fn load_augmented(
    path: &Path,
    spec: &PreprocessSpec,
    aug: &Augment,
    rng: &mut Rng,
    out: &mut [f32],
) -> Result<()> {
    let img = read_rgb(path, spec.size)?;
    augment_into(&img, spec, aug, rng, out);
    Ok(())
}

pub fn augment_into(
    img: &RgbImage,
    spec: &PreprocessSpec,
    aug: &Augment,
    rng: &mut Rng,
    out: &mut [f32],
) {
    let crop = if aug.min_scale < 1.0 {
        Some(random_crop_box(
            img.width(),
            img.height(),
            aug.min_scale,
            1.0,
            rng,
        ))
    } else {
        crop_for(spec.resize, img.width(), img.height())
    };
    let mut small = resize_rgb(img, spec.size, spec.size, crop);
    if aug.hflip && rng.chance(0.5) {
        image::imageops::flip_horizontal_in_place(&mut small);
    }
    if aug.jitter > 0.0 {
        jitter(&mut small, aug.jitter, rng);
    }
    if aug.scene > 0.0 && rng.chance(aug.scene) {
        small = in_a_scene(&small, rng);
    }
    if aug.grayscale > 0.0 && rng.chance(aug.grayscale) {
        to_gray(&mut small);
    }
    if aug.blur > 0.0 && rng.chance(aug.blur) {
        small = image::imageops::blur(&small, rng.range(0.3, 1.5));
    }
    normalize_into(&small, spec.mean, spec.std, out);
}

/// Plain evaluation preprocessing: exactly what the daemon does.
pub fn load_plain(path: &Path, spec: &PreprocessSpec, out: &mut [f32]) -> Result<()> {
    let img = read_rgb(path, spec.size)?;
    tensor_from_rgb(&img, spec, out);
    Ok(())
}

/// The names of the hard-validation distortions, in variant order.
pub const HARD_VARIANTS: [&str; 9] = [
    "strong_crop",
    "rotate",
    "blur",
    "noise",
    "jpeg_q12",
    "grayscale",
    "low_light",
    "small_on_clutter",
    "zoom_out",
];

#[allow(clippy::needless_range_loop)]
fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = (w / 2.0, h / 2.0);
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let dx = x as f32 + 0.5 - cx;
        let dy = y as f32 + 0.5 - cy;
        let sx = c * dx + s * dy + cx - 0.5;
        let sy = -s * dx + c * dy + cy - 0.5;
        if sx < 0.0 || sy < 0.0 || sx > w - 1.0 || sy > h - 1.0 {
            return image::Rgb([118, 118, 118]);
        }
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = (
            (x0 + 1).min(img.width() - 1),
            (y0 + 1).min(img.height() - 1),
        );
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let mut px = [0u8; 3];
        for k in 0..3 {
            let v = img.get_pixel(x0, y0)[k] as f32 * (1.0 - fx) * (1.0 - fy)
                + img.get_pixel(x1, y0)[k] as f32 * fx * (1.0 - fy)
                + img.get_pixel(x0, y1)[k] as f32 * (1.0 - fx) * fy
                + img.get_pixel(x1, y1)[k] as f32 * fx * fy;
            px[k] = v.round().clamp(0.0, 255.0) as u8;
        }
        image::Rgb(px)
    })
}

/// A busy background: overlapping random rectangles and stripes plus noise.
fn clutter(w: u32, h: u32, rng: &mut Rng) -> RgbImage {
    let mut bg = RgbImage::from_pixel(
        w,
        h,
        image::Rgb([
            rng.below(256) as u8,
            rng.below(256) as u8,
            rng.below(256) as u8,
        ]),
    );
    for _ in 0..40 {
        let rw = 8 + rng.below((w / 2) as usize) as u32;
        let rh = 8 + rng.below((h / 2) as usize) as u32;
        let x0 = rng.below(w as usize) as u32;
        let y0 = rng.below(h as usize) as u32;
        let col = [
            rng.below(256) as u8,
            rng.below(256) as u8,
            rng.below(256) as u8,
        ];
        let stripes = rng.chance(0.3);
        for y in y0..(y0 + rh).min(h) {
            for x in x0..(x0 + rw).min(w) {
                if !stripes || (x / 4) % 2 == 0 {
                    bg.put_pixel(x, y, image::Rgb(col));
                }
            }
        }
    }
    for p in bg.pixels_mut() {
        for k in 0..3 {
            p[k] = (p[k] as f32 + 12.0 * rng.normal())
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    bg
}

/// A synthetic room for the scene augmentation: a gradient between two
/// colours with soft rectangles and discs on it, and sensor noise. It is
/// deliberately unlike the hard validation's `clutter`, so that variant
/// stays a test of what training did not see.
fn scene_background(w: u32, h: u32, rng: &mut Rng) -> RgbImage {
    let colour = |rng: &mut Rng| [0; 3].map(|_: u8| rng.range(0.0, 255.0));
    let (top, bottom) = (colour(rng), colour(rng));
    let vertical = rng.chance(0.5);
    let mut bg = RgbImage::from_fn(w, h, |x, y| {
        let t = if vertical {
            y as f32 / h.max(1) as f32
        } else {
            x as f32 / w.max(1) as f32
        };
        image::Rgb([0, 1, 2].map(|k| (top[k] * (1.0 - t) + bottom[k] * t) as u8))
    });
    for _ in 0..3 + rng.below(12) {
        let (cx, cy) = (rng.range(0.0, w as f32), rng.range(0.0, h as f32));
        let (rx, ry) = (
            rng.range(5.0, w as f32 / 3.0),
            rng.range(5.0, h as f32 / 3.0),
        );
        let fill = colour(rng).map(|v| v as u8);
        let disc = rng.chance(0.5);
        for (x, y, p) in bg.enumerate_pixels_mut() {
            let (dx, dy) = ((x as f32 - cx) / rx, (y as f32 - cy) / ry);
            let inside = if disc {
                dx * dx + dy * dy <= 1.0
            } else {
                dx.abs() <= 1.0 && dy.abs() <= 1.0
            };
            if inside {
                p.0 = fill;
            }
        }
    }
    let mut bg = image::imageops::blur(&bg, rng.range(0.5, 3.0));
    let sigma = rng.range(0.0, 12.0);
    for p in bg.pixels_mut() {
        for k in 0..3 {
            p[k] = (p[k] as f32 + sigma * rng.normal())
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    bg
}

/// The picture shrunk to 30-65% of each side, somewhere in a synthetic scene.
fn in_a_scene(img: &RgbImage, rng: &mut Rng) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let mut bg = scene_background(w, h, rng);
    let f = rng.range(0.3, 0.65);
    let fw = ((w as f32 * f * rng.range(0.85, 1.15)) as u32).clamp(1, w);
    let fh = ((h as f32 * f * rng.range(0.85, 1.15)) as u32).clamp(1, h);
    paste_shrunk(&mut bg, img, fw, fh, rng);
    bg
}

/// `img` shrunk to `fw`x`fh` and pasted at a random place on `bg`.
fn paste_shrunk(bg: &mut RgbImage, img: &RgbImage, fw: u32, fh: u32, rng: &mut Rng) {
    let fg = resize_rgb(img, fw.max(1), fh.max(1), None);
    let x0 = rng.below((bg.width() - fw) as usize + 1) as u32;
    let y0 = rng.below((bg.height() - fh) as usize + 1) as u32;
    paste(bg, &fg, x0, y0);
}

fn paste(bg: &mut RgbImage, fg: &RgbImage, x0: u32, y0: u32) {
    for (x, y, p) in fg.enumerate_pixels() {
        if x0 + x < bg.width() && y0 + y < bg.height() {
            bg.put_pixel(x0 + x, y0 + y, *p);
        }
    }
}

/// One deterministic hard-validation distortion of a decoded image (variant
/// index into [`HARD_VARIANTS`]). The result still goes through the normal
/// resize + normalise of the daemon.
pub fn hard_variant(img: &RgbImage, variant: usize, rng: &mut Rng) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match variant {
        0 => {
            let b = random_crop_box(w, h, 0.25, 0.45, rng);
            resize_rgb(img, w, h, Some(b))
        }
        1 => {
            let deg = rng.range(15.0, 35.0) * if rng.chance(0.5) { 1.0 } else { -1.0 };
            rotate(img, deg)
        }
        2 => image::imageops::blur(img, rng.range(2.0, 3.5) * w.max(h) as f32 / 224.0),
        3 => {
            let mut out = img.clone();
            for p in out.pixels_mut() {
                for k in 0..3 {
                    p[k] = (p[k] as f32 + 30.0 * rng.normal())
                        .round()
                        .clamp(0.0, 255.0) as u8;
                }
            }
            out
        }
        4 => {
            let mut buf = Vec::new();
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 12);
            if img.write_with_encoder(enc).is_ok()
                && let Ok(d) = decode_rgb(&buf, 0, &limits())
            {
                return d;
            }
            img.clone()
        }
        5 => {
            let mut out = img.clone();
            to_gray(&mut out);
            out
        }
        6 => {
            let f = rng.range(0.2, 0.35);
            let mut out = img.clone();
            for p in out.pixels_mut() {
                for k in 0..3 {
                    let v = (p[k] as f32 / 255.0).powf(1.3) * f * 255.0 + 6.0 * rng.normal();
                    p[k] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
            out
        }
        7 => {
            let mut bg = clutter(w, h, rng);
            let s = rng.range(0.35, 0.55);
            let (fw, fh) = (((w as f32) * s) as u32, ((h as f32) * s) as u32);
            paste_shrunk(&mut bg, img, fw, fh, rng);
            bg
        }
        _ => {
            // Zoom out: the photo shrunk onto a plain, off-centre canvas.
            let mut bg = RgbImage::from_pixel(w, h, image::Rgb([200, 196, 190]));
            let s = rng.range(0.5, 0.7);
            let (fw, fh) = (((w as f32) * s) as u32, ((h as f32) * s) as u32);
            paste_shrunk(&mut bg, img, fw, fh, rng);
            bg
        }
    }
}

/// What a loader job turns into an input row.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// As the daemon sees it.
    Plain,
    Augment(Augment),
    /// Hard-validation distortion `variant` (item = sample * variants + variant).
    Hard {
        variants: usize,
    },
}

pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Indices into the item list, in row order.
    pub items: Vec<usize>,
}

/// Loads batches in `workers` threads, in order, holding at most `ahead`
/// batches beyond the one being consumed (bounded memory).
pub struct Loader {
    rx: mpsc::Receiver<(usize, Result<Batch>)>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    total: usize,
    consumed: Arc<AtomicUsize>,
    counter: Arc<AtomicUsize>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Loader {
    /// `order` lists item indices (see [`Mode`]); `stream` seeds the per-item RNG
    /// (e.g. the epoch), so a given (seed, stream, item) always gives the same pixels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        samples: Arc<Vec<Sample>>,
        order: Vec<usize>,
        batch: usize,
        spec: PreprocessSpec,
        mode: Mode,
        seed: u64,
        stream: u64,
        workers: usize,
    ) -> Loader {
        let order = Arc::new(order);
        let total = order.len().div_ceil(batch.max(1));
        let ahead = 2 * workers.max(1) + 2;
        let (tx, rx) = mpsc::sync_channel(ahead);
        let counter = Arc::new(AtomicUsize::new(0));
        let consumed = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..workers.max(1) {
            let (tx, counter, consumed, order, samples, spec) = (
                tx.clone(),
                counter.clone(),
                consumed.clone(),
                order.clone(),
                samples.clone(),
                spec.clone(),
            );
            handles.push(std::thread::spawn(move || {
                loop {
                    let b = counter.fetch_add(1, Ordering::SeqCst);
                    if b >= total {
                        break;
                    }
                    while b > consumed.load(Ordering::SeqCst) + ahead {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    let items = &order[b * batch..((b + 1) * batch).min(order.len())];
                    let res = build_batch(&samples, items, &spec, mode, seed, stream);
                    if tx.send((b, res)).is_err() {
                        break;
                    }
                }
            }));
        }
        Loader {
            rx,
            pending: BTreeMap::new(),
            next: 0,
            total,
            consumed,
            counter,
            handles,
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

fn build_batch(
    samples: &[Sample],
    items: &[usize],
    spec: &PreprocessSpec,
    mode: Mode,
    seed: u64,
    stream: u64,
) -> Result<Batch> {
    let len = spec.tensor_len();
    let mut images = vec![0f32; len * items.len()];
    let mut labels = Vec::with_capacity(items.len());
    for (row, &item) in items.iter().enumerate() {
        let out = &mut images[row * len..(row + 1) * len];
        let mut rng = Rng::derive(seed, stream, item as u64);
        match mode {
            Mode::Plain => {
                let s = &samples[item];
                load_plain(&s.path, spec, out)?;
                labels.push(s.label as i64);
            }
            Mode::Augment(aug) => {
                let s = &samples[item];
                load_augmented(&s.path, spec, &aug, &mut rng, out)?;
                labels.push(s.label as i64);
            }
            Mode::Hard { variants } => {
                let s = &samples[item / variants];
                let img = read_rgb(&s.path, spec.size)?;
                let hard = hard_variant(&img, item % variants, &mut rng);
                tensor_from_rgb(&hard, spec, out);
                labels.push(s.label as i64);
            }
        }
    }
    Ok(Batch {
        images,
        labels,
        items: items.to_vec(),
    })
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                self.consumed.store(self.next, Ordering::SeqCst);
                return Some(b);
            }
            match self.rx.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock workers waiting on a full channel, then let them exit.
        self.counter.store(usize::MAX / 2, Ordering::SeqCst);
        self.consumed.store(usize::MAX / 4, Ordering::SeqCst);
        while self.rx.try_recv().is_ok() {}
        for h in self.handles.drain(..) {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = h.join();
        }
    }
}

/// The preprocessing each architecture's ImageNet weights expect.
pub fn spec_for(arch: crate::nets::Arch, size: u32) -> PreprocessSpec {
    match arch {
        crate::nets::Arch::EfficientNetLite0
        | crate::nets::Arch::EfficientNetLite1
        | crate::nets::Arch::EfficientNetLite2 => PreprocessSpec {
            size,
            mean: [127.0 / 255.0; 3],
            std: [128.0 / 255.0; 3],
            resize: ResizeMode::Stretch,
        },
        crate::nets::Arch::ResNet50 => PreprocessSpec {
            size,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            resize: ResizeMode::Stretch,
        },
    }
}
