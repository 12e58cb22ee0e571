//! Helpers for tests that start the real binary.
#![allow(dead_code)]

pub mod browser;

use instrument_model::testkit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_instrument-detector");

/// A temporary workspace: a watched folder, a database and the colour model.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub db: PathBuf,
    pub model: PathBuf,
}

impl Setup {
    pub fn new() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("watch");
        std::fs::create_dir(&dir).unwrap();
        let model = tmp.path().join("color.onnx");
        std::fs::write(&model, testkit::color_model(32)).unwrap();
        let db = tmp.path().join("results.db");
        Setup { dir: std::fs::canonicalize(&dir).unwrap(), db, model, tmp }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args);
        c
    }

    /// Starts `watch` on the tract backend with a short settle interval.
    pub fn start(&self, extra: &[&str]) -> Daemon {
        self.start_with_env(extra, &[])
    }

    /// Starts `watch DIR --db DB --model <colour model> --backend tract` and
    /// then exactly `args`, optionally under a wrapper command (its argv,
    /// followed by the binary), logging at debug to a file of its own.
    pub fn spawn(&self, wrapper: Option<&[&str]>, dir: &Path, db: &Path, args: &[&str]) -> Daemon {
        self.spawn_with_env(wrapper, dir, db, args, &[])
    }

    /// [`Setup::start`] with extra environment variables for the daemon.
    pub fn start_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let args: Vec<&str> = ["--settle-ms", "300", "--reconcile-secs", "2"].iter().chain(extra).copied().collect();
        self.spawn_with_env(None, &self.dir, &self.db, &args, env)
    }

    /// [`Setup::start`] without `--model`: the daemon runs the library's own
    /// model (`<db>.models/current.onnx`, which the test puts there first).
    pub fn start_on_library_model(&self, extra: &[&str]) -> Daemon {
        let args: Vec<&str> = ["--settle-ms", "300", "--reconcile-secs", "2"].iter().chain(extra).copied().collect();
        self.spawn_inner(None, &self.dir, &self.db, &args, &[], None)
    }

    fn spawn_with_env(
        &self,
        wrapper: Option<&[&str]>,
        dir: &Path,
        db: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        self.spawn_inner(wrapper, dir, db, args, env, Some(&self.model))
    }

    fn spawn_inner(
        &self,
        wrapper: Option<&[&str]>,
        dir: &Path,
        db: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        model: Option<&Path>,
    ) -> Daemon {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = self.tmp.path().join(format!("daemon-{}-{n}.log", std::process::id()));
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("watch").arg(dir).arg("--db").arg(db);
        if let Some(model) = model {
            cmd.arg("--model").arg(model);
        }
        let child = cmd
            .args(["--backend", "tract"])
            .args(args)
            .env("RUST_LOG", "instrument_detector=debug,instrument_model=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("starting the daemon");
        LIVE_DAEMON_LOGS.with(|logs| logs.borrow_mut().push(log.clone()));
        Daemon { child: Some(child), log }
    }

    /// Runs `query --format json` and returns the parsed rows.
    pub fn query(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let out = self.cmd(&["query", "--format", "json", "--db"]).arg(&self.db).args(extra).output().unwrap();
        assert!(out.status.success(), "query failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("query JSON")
    }

    /// The single number `sql` returns, read directly from the database.
    /// Zero while the daemon has not yet created the database or its
    /// `files` table; any other failure is a bug in the test or the schema
    /// and panics, so a misspelt column cannot read as "nothing yet".
    pub fn count(&self, sql: &str) -> i64 {
        if !self.db.exists() {
            return 0;
        }
        let conn = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let has_files: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'files'", [], |r| r.get(0))
            .expect("reading sqlite_master");
        if has_files == 0 {
            return 0;
        }
        conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn write_image(&self, rel: &str, label: &str, format: image::ImageFormat, seed: u32) -> PathBuf {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        testkit::write_color_image(&p, label, format, seed).unwrap();
        p
    }
}

pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGINT, then waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGINT);
        let mut c = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("daemon did not stop within 60 s after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        LIVE_DAEMON_LOGS.with(|logs| logs.borrow_mut().retain(|l| l != &self.log));
    }
}

thread_local! {
    /// Log files of the daemons the current test has running. libtest runs
    /// each test on a thread of its own, so a thread-local is exactly "this
    /// test's daemons", and `wait_for` can show them when it times out
    /// without every caller having to pass its `Daemon` in.
    static LIVE_DAEMON_LOGS: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How much of each daemon log a timeout shows: enough for the last few
/// pipeline events, short enough to read in a CI log.
const LOG_TAIL_LINES: usize = 100;

/// Polls `cond` until it holds or `secs` pass. On timeout, panics with the
/// tail of every daemon log this test started, since "timed out" alone says
/// nothing about what the daemon was doing.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for: {what}{}", daemon_log_tails());
}

fn daemon_log_tails() -> String {
    LIVE_DAEMON_LOGS.with(|logs| {
        logs.borrow()
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                format!("\n--- last {LOG_TAIL_LINES} lines of {} ---\n{tail}", path.display())
            })
            .collect()
    })
}

pub fn is_settled(path: &Path) -> bool {
    path.exists()
}

/// A test that cannot run on this machine (no root, no tmpfs, no browser).
/// Locally it says so loudly and the caller returns; in CI (`CI` set to
/// anything but `false`/`0`) it fails instead, so a skip never passes silently.
pub fn skip_or_fail_in_ci(reason: &str) {
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if in_ci {
        panic!("this test cannot run here, and CI must run it: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
