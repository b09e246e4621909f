//! The serving loop's view of the cancel flag (set by Ctrl-C, SIGTERM or SIGHUP from a signal
//! handler thread): a watch channel that every request task can await, so scheduling stops and
//! in-flight requests are abandoned within one poll interval instead of at their next check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How often the flag is polled: the bound on how late a cancel is noticed.
pub const POLL: Duration = Duration::from_millis(20);

/// Awaitable cancellation; cheap to clone into every request task.
#[derive(Debug, Clone)]
pub struct CancelWatch {
    rx: watch::Receiver<bool>,
}

impl CancelWatch {
    /// Watches `flag` from a task on the current runtime; the task ends when the flag is set or
    /// every watcher is gone.
    pub fn spawn(flag: Arc<AtomicBool>) -> Self {
        let (tx, rx) = watch::channel(flag.load(Ordering::SeqCst));
        tokio::spawn(async move {
            loop {
                if flag.load(Ordering::SeqCst) {
                    let _ = tx.send(true);
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Self { rx }
    }

    /// Never cancelled.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive so `cancelled` pends instead of returning.
        std::mem::forget(tx);
        Self { rx }
    }

    pub fn is_cancelled(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once cancelled (never, for [`CancelWatch::never`]).
    pub async fn cancelled(&mut self) {
        if self.rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
