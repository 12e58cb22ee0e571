//! `instrument-detector report`: a static HTML page of the results.
//!
//! Thumbnails are made once (named by content hash, so a second run only adds
//! what is new), with the same decoder as everything else, so a broken file
//! cannot break the report either. The page works from disk with no server:
//! images load lazily and each group is rendered only when scrolled near
//! (`content-visibility: auto`), which keeps 10,000 photos fast.

use crate::store::query::{self, Filter, ResultRow};
use crate::store::{FailureKind, FileStatus, Store, path_from_text};
use crate::thumbnail::{self, THUMB};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub struct ReportSummary {
    pub photos: usize,
    pub errors: usize,
    pub thumbnails_made: usize,
    pub index: PathBuf,
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `file://` URL of a path, percent-encoded byte by byte.
fn file_url(path: &str) -> String {
    let mut out = String::from("file://");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Writes `out/index.html` and `out/thumbs/`.
pub fn write(store: &Store, out: &Path, min_confidence: Option<f64>) -> anyhow::Result<ReportSummary> {
    let rows = query::results(store, &Filter { min_confidence, ..Filter::default() })?;
    let thumbs = out.join("thumbs");
    std::fs::create_dir_all(&thumbs)?;
    let (ok, errors): (Vec<&ResultRow>, Vec<&ResultRow>) = rows.iter().partition(|r| r.status == FileStatus::Ok);

    // Thumbnails, in parallel, once per content.
    let mut todo: BTreeMap<String, String> = BTreeMap::new();
    for r in &ok {
        if let Some(h) = &r.content_hash {
            let name = thumbnail::file_name(h);
            if !thumbs.join(&name).exists() {
                todo.entry(name).or_insert_with(|| r.path.clone());
            }
        }
    }
    let todo: Vec<(String, String)> = todo.into_iter().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let made = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((name, src)) = todo.get(i) else { break };
                    match thumbnail::make(&path_from_text(src), &thumbs.join(name)) {
                        Ok(()) => {
                            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!("thumbnail of {src}: {e}"),
                    }
                }
            });
        }
    });

    let mut groups: BTreeMap<String, Vec<&ResultRow>> = BTreeMap::new();
    for r in &ok {
        groups.entry(r.label.clone().unwrap_or_default()).or_default().push(r);
    }
    let mut order: Vec<(&String, &Vec<&ResultRow>)> = groups.iter().collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));

    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Instruments: {n} photos</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }}
header {{ position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .6em 1em; z-index: 1; }}
nav a {{ margin-right: .8em; white-space: nowrap; }}
section {{ padding: 0 1em; content-visibility: auto; contain-intrinsic-size: 1px 600px; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax({t}px, 1fr)); gap: 10px; }}
figure {{ margin: 0; background: #fff; border: 1px solid #e4e4e4; border-radius: 6px; overflow: hidden; }}
figure img {{ width: 100%; height: {t}px; object-fit: cover; display: block; background: #eee; }}
figcaption {{ padding: .3em .5em; font-size: 13px; overflow-wrap: anywhere; }}
.conf {{ float: right; color: #666; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: .2em .6em; text-align: left; }}
</style></head><body>
<header><strong>{n} photos</strong>, {g} instruments, {e} errors. <nav>"#,
        n = ok.len(),
        g = groups.len(),
        e = errors.len(),
        t = THUMB,
    );
    for (label, items) in &order {
        let _ = write!(html, r##"<a href="#g-{id}">{l} ({c})</a>"##, id = esc(label), l = esc(label), c = items.len());
    }
    if !errors.is_empty() {
        html.push_str(r##"<a href="#errors">errors</a>"##);
    }
    html.push_str("</nav></header>\n");
    for (label, items) in &order {
        let _ = write!(
            html,
            r#"<section class="group" id="g-{id}" data-label="{id}"><h2>{l} <small>({c})</small></h2><div class="grid">"#,
            id = esc(label),
            l = esc(label),
            c = items.len()
        );
        for r in items.iter() {
            let h = r.content_hash.as_deref().unwrap_or("");
            let name = Path::new(&r.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let _ = write!(
                html,
                r#"<figure><a href="{url}"><img loading="lazy" src="thumbs/{th}.jpg" alt="{alt}"></a><figcaption>{name}<span class="conf">{p}</span></figcaption></figure>"#,
                url = esc(&file_url(&r.path)),
                th = esc(&h[..16.min(h.len())]),
                alt = esc(label),
                name = esc(&name),
                p = if r.corrected {
                    "fixed".to_string()
                } else {
                    format!("{:.0}%", r.confidence.unwrap_or(0.0) * 100.0)
                },
            );
        }
        html.push_str("</div></section>\n");
    }
    if !errors.is_empty() {
        html.push_str(
            r#"<section id="errors"><h2>Errors</h2><table><tr><th>file</th><th>kind</th><th>reason</th></tr>"#,
        );
        for r in &errors {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.path),
                esc(r.error_kind.map_or("", FailureKind::as_str)),
                esc(r.error.as_deref().unwrap_or(""))
            );
        }
        html.push_str("</table></section>\n");
    }
    html.push_str(
        "<script>document.body.dataset.groups = document.querySelectorAll('section.group').length;</script>\n</body></html>\n",
    );
    let index = out.join("index.html");
    std::fs::write(&index, html)?;
    Ok(ReportSummary { photos: ok.len(), errors: errors.len(), thumbnails_made: made.into_inner(), index })
}
