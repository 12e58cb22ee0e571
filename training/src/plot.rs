//! The run folder's PNGs, drawn straight into an `image` buffer (no font or
//! plotting stack to install). Numbers and class names are in the Markdown
//! report and `metrics.csv` beside them; the pictures show shape and pattern.

use image::{Rgb, RgbImage};
use std::path::Path;

const COLORS: [[u8; 3]; 4] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];

fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), c: [u8; 3]) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1) * 2;
    for i in 0..=steps {
        let t = i as f32 / steps as f32;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for dx in 0..2 {
            for dy in 0..2 {
                let (px, py) = (x as i64 + dx, y as i64 + dy);
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    img.put_pixel(px as u32, py as u32, Rgb(c));
                }
            }
        }
    }
}

/// One panel: series of (values) over epochs, y from `lo` to `hi`, light grid
/// lines at every tenth of the range.
#[allow(clippy::too_many_arguments)]
fn panel(
    img: &mut RgbImage,
    x0: u32,
    y0: u32,
    w: u32,
    h: u32,
    series: &[Vec<f64>],
    lo: f64,
    hi: f64,
) {
    for x in x0..x0 + w {
        for y in y0..y0 + h {
            img.put_pixel(x, y, Rgb([255, 255, 255]));
        }
    }
    for i in 0..=10 {
        let y = y0 + h - 1 - (i * (h - 1) / 10);
        for x in x0..x0 + w {
            img.put_pixel(
                x,
                y,
                Rgb(if i == 0 || i == 10 {
                    [90, 90, 90]
                } else {
                    [225, 225, 225]
                }),
            );
        }
    }
    for (si, s) in series.iter().enumerate() {
        if s.is_empty() {
            continue;
        }
        let n = s.len().max(2) - 1;
        let pt = |i: usize, v: f64| {
            let fx = x0 as f32 + (i as f32 / n as f32) * (w - 1) as f32;
            let fy =
                y0 as f32 + (1.0 - ((v - lo) / (hi - lo)).clamp(0.0, 1.0) as f32) * (h - 1) as f32;
            (fx, fy)
        };
        if s.len() == 1 {
            let p = pt(0, s[0]);
            line(img, p, (p.0 + 3.0, p.1), COLORS[si % 4]);
        }
        for i in 1..s.len() {
            line(img, pt(i - 1, s[i - 1]), pt(i, s[i]), COLORS[si % 4]);
        }
    }
}

/// Left: train (blue) and valid (orange) loss, y from 0 to the largest loss.
/// Right: train (blue), valid (orange) and hard-valid (green) accuracy, y 0..1,
/// grid every 10 points.
pub fn curves(path: &Path, loss: &[Vec<f64>], acc: &[Vec<f64>]) -> image::ImageResult<()> {
    let mut img = RgbImage::from_pixel(1000, 360, Rgb([245, 245, 245]));
    let max_loss = loss.iter().flatten().copied().fold(0.1, f64::max);
    panel(&mut img, 20, 20, 470, 320, loss, 0.0, max_loss);
    panel(&mut img, 510, 20, 470, 320, acc, 0.0, 1.0);
    img.save(path)
}

/// Row-normalised confusion matrix: rows are true classes, columns predicted,
/// in label order; darker blue is more, the diagonal is correct answers, and
/// errors are drawn in red.
pub fn confusion(path: &Path, m: &[Vec<usize>]) -> image::ImageResult<()> {
    let k = m.len() as u32;
    let cell = 16u32;
    let size = k * cell + 2;
    let mut img = RgbImage::from_pixel(size, size, Rgb([120, 120, 120]));
    for (i, row) in m.iter().enumerate() {
        let total: usize = row.iter().sum::<usize>().max(1);
        for (j, &c) in row.iter().enumerate() {
            let f = c as f32 / total as f32;
            let col = if c == 0 {
                [255, 255, 255]
            } else if i == j {
                [
                    (255.0 * (1.0 - f)) as u8,
                    (255.0 * (1.0 - 0.6 * f)) as u8,
                    255,
                ]
            } else {
                let f = f.max(0.25);
                [255, (255.0 * (1.0 - f)) as u8, (255.0 * (1.0 - f)) as u8]
            };
            for x in 0..cell - 1 {
                for y in 0..cell - 1 {
                    img.put_pixel(1 + j as u32 * cell + x, 1 + i as u32 * cell + y, Rgb(col));
                }
            }
        }
    }
    img.save(path)
}
