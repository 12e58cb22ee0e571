//! A reader that closes the pipe early (`query | head`, `status | head -1`)
//! ends the command quietly with exit 0, as ripgrep does: no "Broken pipe"
//! error, no panic.

use crate::common::Setup;
use std::process::Stdio;

fn with_closed_stdout(s: &Setup, args: &[&str]) -> std::process::Output {
    // The read end is closed before the command starts, so its first write
    // fails. (Closing it after the spawn raced the command's first write:
    // under load `status` sometimes wrote its line into the pipe and exited 1
    // for "no daemon running".)
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let child =
        s.cmd(args).arg("--db").arg(&s.db).stdout(writer).stderr(Stdio::piped()).spawn().expect("starting the binary");
    child.wait_with_output().expect("waiting for the binary")
}

#[test]
fn a_closed_stdout_ends_query_stats_and_status_quietly() {
    let s = Setup::new();
    // A database to read: one daemon-less run of `stats` creates nothing, so
    // make one with a single classified photo.
    s.write_image("a.png", "red", image::ImageFormat::Png, 1);
    let mut d = s.start(&[]);
    crate::common::wait_for(60, "one row", || s.count("SELECT count(*) FROM results") == 1);
    d.stop();
    for args in [&["query"][..], &["query", "--format", "json"], &["query", "--format", "csv"], &["stats"], &["status"]]
    {
        let out = with_closed_stdout(&s, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
