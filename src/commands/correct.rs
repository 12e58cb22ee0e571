//! `instrument-detector correct`: a person's label for a photo, which wins
//! over the model's everywhere and is what retraining learns from.

use anyhow::{Context, Result};
use instrument_detector::output::terminal_safe;
use instrument_detector::store::{Store, corrections};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["label", "withdraw", "list", "export"]))]
pub struct CorrectArgs {
    /// The photo, as a path to the file (the daemon's database must hold it).
    #[arg(value_name = "PATH", required_unless_present_any = ["list", "export"])]
    path: Option<PathBuf>,
    /// The label it really has, one of the model's labels, or `none` for a
    /// photo with no instrument.
    #[arg(value_name = "LABEL")]
    label: Option<String>,
    /// Withdraw the photo's correction: it shows the model's answer again.
    #[arg(long, conflicts_with = "label")]
    withdraw: bool,
    /// List every correction.
    #[arg(long, conflicts_with_all = ["path", "label", "withdraw"])]
    list: bool,
    /// Write every corrected photo into DIR/<label>/ (hard links where the
    /// file system allows, else copies), for `training train --corrections DIR`.
    /// Photos already there are kept; the originals are never touched.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["path", "label", "withdraw", "list"])]
    export: Option<PathBuf>,
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
}

/// The path as the daemon stored it: absolute, with links resolved (the
/// daemon resolves its folder), or as given if it no longer exists.
fn as_stored(path: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(_) if path.is_absolute() => Ok(path.to_path_buf()),
        Err(_) => Ok(std::env::current_dir().context("cannot read the current folder")?.join(path)),
    }
}

pub fn run(a: CorrectArgs) -> Result<ExitCode> {
    if !a.db.exists() {
        // Opening read-write would create an empty database and then say the
        // photo is not in it; say what is really wrong.
        return Err(instrument_detector::store::StoreError::Missing(a.db.clone()).into());
    }
    let store = Store::open_rw(&a.db).with_context(|| format!("cannot open {}", a.db.display()))?;
    if a.list {
        for c in corrections::all(&store)? {
            let was = c.model_label.as_deref().unwrap_or("?");
            println!("{:<12} (model: {was:<12}) {}  {}", c.label, c.corrected_at, terminal_safe(&c.path));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = &a.export {
        let done = export(&store, dir)?;
        println!(
            "{} corrected photos in {} ({} new); {} have no copy on disk any more",
            done.present,
            dir.display(),
            done.written,
            done.missing
        );
        return Ok(ExitCode::SUCCESS);
    }
    let path = as_stored(a.path.as_deref().context("a PATH is needed")?)?;
    if a.withdraw {
        let c = corrections::withdraw(&store, &path)?;
        println!("withdrew the correction '{}' of {}", c.label, terminal_safe(&c.path));
        return Ok(ExitCode::SUCCESS);
    }
    let label = a.label.as_deref().context("a LABEL is needed")?;
    let c = corrections::correct(&store, &path, label)?;
    let was = c.model_label.as_deref().unwrap_or("?");
    println!("{}: {was} -> {} (every copy of this photo)", terminal_safe(&c.path), c.label);
    Ok(ExitCode::SUCCESS)
}

/// What [`export`] did.
struct Exported {
    /// Corrections whose photo is in the folder now.
    present: usize,
    /// Of those, written by this run.
    written: usize,
    /// Corrections with no live copy of their photo to export.
    missing: usize,
}

/// Writes each corrected photo as `dir/<label>/<hash16>.<ext>`: named by
/// content, so exporting again adds only what is new.
fn export(store: &Store, dir: &Path) -> Result<Exported> {
    let mut done = Exported { present: 0, written: 0, missing: 0 };
    for c in corrections::all(store)? {
        // A label is one folder name: never a path out of `dir`.
        if c.label.is_empty() || c.label.starts_with('.') || c.label.contains('/') {
            anyhow::bail!("the label '{}' cannot be a folder name", terminal_safe(&c.label));
        }
        let live = store.live_copy(&c.content_hash)?.unwrap_or_else(|| c.path.clone());
        let src = instrument_detector::store::path_from_text(&live);
        if !src.is_file() {
            done.missing += 1;
            continue;
        }
        let ext = src.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_else(|| "jpg".into());
        let folder = dir.join(&c.label);
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        let dst = folder.join(format!("{}.{ext}", &c.content_hash[..16.min(c.content_hash.len())]));
        done.present += 1;
        if dst.exists() {
            continue;
        }
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        }
        done.written += 1;
    }
    Ok(done)
}
