//! The TOML config file: the same keys as the flags, and flags win.
//!
//! ```toml
//! # instrument-detector.toml
//! dir = "/srv/photos"          # top-level keys configure `watch`
//! db = "/var/lib/instrument-detector/results.db"
//! backend = "ort-cpu"
//! settle_ms = 2000
//! follow_symlinks = false
//!
//! [query]                      # a table per other subcommand
//! db = "/var/lib/instrument-detector/results.db"
//! min_confidence = 0.6
//! ```
//!
//! Each key becomes `--key value` placed *before* the command-line arguments;
//! clap keeps the last occurrence of a flag, so what is typed wins.

use anyhow::{Context, Result, bail};
use std::ffi::OsString;

const SUBCOMMANDS: &[&str] =
    &["watch", "query", "stats", "classify", "evaluate", "reclassify", "report", "status", "quantize"];

/// Rewrites argv, inserting the config file's settings for the subcommand.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(pos) = args.iter().position(|a| SUBCOMMANDS.iter().any(|s| a == *s)) else { return Ok(args) };
    let sub = args[pos].to_string_lossy().into_owned();
    let mut rest: Vec<OsString> = Vec::new();
    let mut config = None;
    let mut it = args[pos + 1..].iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            config = Some(it.next().context("--config needs a file name")?.clone());
        } else if let Some(v) = s.strip_prefix("--config=") {
            config = Some(OsString::from(v));
        } else {
            rest.push(a.clone());
        }
    }
    let Some(config) = config else { return Ok(args) };
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("cannot read config file {}", config.to_string_lossy()))?;
    let table: toml::Table =
        text.parse().with_context(|| format!("config file {} is not valid TOML", config.to_string_lossy()))?;
    let section = if sub == "watch" {
        table.iter().filter(|(_, v)| !v.is_table()).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    } else {
        match table.get(&sub) {
            Some(toml::Value::Table(t)) => t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(_) => bail!("config: [{sub}] must be a table"),
            None => Vec::new(),
        }
    };
    let mut injected: Vec<OsString> = Vec::new();
    for (key, value) in section {
        // `watch`'s folder is positional on the command line; from the file
        // it arrives as `--dir`, which a typed folder overrides.
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => injected.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    injected.push(flag.clone().into());
                    injected.push(value_str(&key, &item)?.into());
                }
            }
            other => {
                injected.push(flag.into());
                injected.push(value_str(&key, &other)?.into());
            }
        }
    }
    let mut out: Vec<OsString> = args[..=pos].to_vec();
    out.extend(injected);
    out.extend(rest);
    Ok(out)
}

fn value_str(key: &str, v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("config key '{key}': unsupported value {other}"),
    })
}
