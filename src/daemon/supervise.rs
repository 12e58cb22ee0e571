//! Stage threads and tasks that cannot fail silently.
//!
//! A stage that panics would otherwise leave its queue unserved while the rest
//! of the daemon (and `/healthz`) looks fine. Every stage is started through
//! [`spawn_thread`] or [`spawn_task`]: a panic is logged, recorded in
//! [`Health`] (so `/healthz` answers 503 and `daemon::run` returns an error,
//! exiting non-zero), and stops the daemon the ordinary way. Nothing is lost:
//! a file whose row was not committed is found again by the next start-up scan.

use std::any::Any;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Whether every stage is still running, and how to stop them all.
pub(crate) struct Health {
    failure: Mutex<Option<String>>,
    stop: CancellationToken,
}

impl Health {
    /// `stop` is the daemon's own cancellation: a failed stage triggers it.
    pub(crate) fn new(stop: CancellationToken) -> Self {
        Health { failure: Mutex::new(None), stop }
    }

    /// The first stage failure, if any ("worker-1 panicked: …").
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The daemon is stopping (a signal, or a stage failed).
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub(crate) fn fail(&self, stage: &str, why: &str) {
        let message = format!("the {stage} stage panicked: {why}");
        tracing::error!("{message}; stopping the daemon (uncommitted files are redone at the next start)");
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(message);
        self.stop.cancel();
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `stage` here, supervised: a panic is recorded as the failure of
/// `name` (see [`Health::fail`]) and gives `None`.
pub(crate) fn run_supervised<R>(name: &str, health: &Health, stage: impl FnOnce() -> R) -> Option<R> {
    // The stage's own state dies with the panic; the shared state (the
    // ledger, the stats) is only ever updated by single inserts and removes,
    // so it stays consistent across it.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(stage)) {
        Ok(r) => Some(r),
        Err(payload) => {
            health.fail(name, &panic_text(payload.as_ref()));
            None
        }
    }
}

/// Starts a stage on its own named thread, supervised.
pub(crate) fn spawn_thread(
    name: String,
    health: std::sync::Arc<Health>,
    stage: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        run_supervised(&name, &health, stage);
    })
}

/// Starts a stage as a tokio task, supervised. Aborting the returned handle
/// (at shutdown) stops the stage and is not a failure.
pub(crate) fn spawn_task(
    name: &'static str,
    health: std::sync::Arc<Health>,
    stage: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let inner = tokio::spawn(stage);
        // Dropped when this supervisor is aborted: the stage stops with it.
        let _stage = AbortOnDrop(inner.abort_handle());
        if let Err(e) = inner.await
            && e.is_panic()
        {
            health.fail(name, &panic_text(e.into_panic().as_ref()));
        }
    })
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_panicking_thread_is_recorded_and_stops_the_daemon() {
        let stop = CancellationToken::new();
        let health = Arc::new(Health::new(stop.clone()));
        let ok = spawn_thread("fine".into(), health.clone(), || {}).unwrap();
        ok.join().unwrap();
        assert_eq!(health.failure(), None);
        assert!(!stop.is_cancelled());
        let bad = spawn_thread("writer".into(), health.clone(), || panic!("disk on fire")).unwrap();
        bad.join().unwrap();
        assert_eq!(health.failure().as_deref(), Some("the writer stage panicked: disk on fire"));
        assert!(stop.is_cancelled());
        // The first failure is the one reported.
        spawn_thread("worker-0".into(), health.clone(), || panic!("{}", 42)).unwrap().join().unwrap();
        assert_eq!(health.failure().as_deref(), Some("the writer stage panicked: disk on fire"));
    }

    #[test]
    fn a_supervised_call_returns_its_value_or_records_its_panic() {
        let stop = CancellationToken::new();
        let health = Health::new(stop.clone());
        assert_eq!(run_supervised("scan", &health, || 7), Some(7));
        assert!(!stop.is_cancelled());
        assert_eq!(run_supervised("scan", &health, || -> i32 { panic!("walk fell over") }), None);
        assert_eq!(health.failure().as_deref(), Some("the scan stage panicked: walk fell over"));
        assert!(stop.is_cancelled());
    }

    #[tokio::test]
    async fn a_panicking_task_is_recorded_but_an_aborted_one_is_not() {
        let stop = CancellationToken::new();
        let health = Arc::new(Health::new(stop.clone()));
        let quiet = spawn_task("model swap", health.clone(), std::future::pending());
        quiet.abort();
        let _ = quiet.await;
        tokio::task::yield_now().await;
        assert_eq!(health.failure(), None);
        let loud = spawn_task("metrics", health.clone(), async { panic!("bad socket") });
        let _ = loud.await;
        assert_eq!(health.failure().as_deref(), Some("the metrics stage panicked: bad socket"));
        assert!(stop.is_cancelled());
    }
}
