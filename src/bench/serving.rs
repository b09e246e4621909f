//! Load patterns: a fixed number of requests in flight (closed loop), or arrivals at a request
//! rate (open loop, Poisson or gamma-bursty), optionally capped by a concurrency limit.
//!
//! Time origin per request:
//! - rate mode: the request's arrival time on the schedule. When the concurrency cap or the
//!   client holds it back, that wait counts in its latency (no coordinated omission); the
//!   latency from the actual send is reported beside it.
//! - concurrency-only mode: there is no schedule; a request is due when a slot frees, so its
//!   scheduled and sent times coincide.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::cancel::CancelWatch;
use crate::client::http::{send_until, ClientConfig, RequestOutcome};
use crate::rng::SeededRng;

/// One level of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadLevel {
    /// Requests in flight at most (`None` = unlimited).
    pub concurrency: Option<usize>,
    /// Arrivals per second (`None` or infinite = all at once).
    pub request_rate: Option<f64>,
    /// Gamma shape of inter-arrival times: 1 = Poisson, < 1 burstier, > 1 more regular.
    pub burstiness: f64,
}

/// Arrival offsets from the start for `n` requests.
pub fn arrival_offsets(n: usize, rate: Option<f64>, burstiness: f64, seed: u64) -> Vec<Duration> {
    let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
    let Some(rate) = rate else {
        return vec![Duration::ZERO; n];
    };
    let mut rng = SeededRng::new(seed);
    let scale = 1.0 / (rate * burstiness);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                t += rng.gamma(burstiness, scale);
            }
            Duration::from_secs_f64(t)
        })
        .collect()
}

/// Waits until `due` to well under a millisecond: the timer (1 ms granularity, and it
/// rounds up) sleeps to just before it, the last stretch yields until it has passed.
async fn arrive_at(due: Instant) {
    if let Some(early) = due.checked_sub(Duration::from_micros(1500)) {
        tokio::time::sleep_until(early.into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// Results of one level.
#[derive(Debug)]
pub struct LevelRun {
    /// The requests that were sent, in the order of the bodies given.
    pub outcomes: Vec<RequestOutcome>,
    /// For each outcome, the position of its body in the input.
    pub positions: Vec<usize>,
    /// From the first scheduled request to the last response.
    pub duration: Duration,
    /// The level's time zero: its first scheduled arrival.
    pub start: Instant,
}

/// Called as each request finishes (cancelled ones included), with its position in the input
/// and the seconds since the level started (the journal writes it out).
pub type OnDone = Arc<dyn Fn(usize, &RequestOutcome, f64) + Send + Sync>;

/// Sends every body under the level's load pattern and waits for all of them. Once `cancel` is
/// set (checked every [`super::cancel::POLL`]), nothing more is sent: requests not yet sent are
/// dropped (not counted) and those in flight are abandoned at once, recorded as cancelled.
pub async fn run_level(
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    bodies: Vec<Vec<u8>>,
    level: &LoadLevel,
    seed: u64,
    cancel: Arc<AtomicBool>,
) -> LevelRun {
    run_level_reporting(
        http,
        cfg,
        bodies,
        level,
        seed,
        cancel,
        Arc::new(|_, _, _| {}),
    )
    .await
}

/// [`run_level`], handing each request to `on_done` as soon as it finishes.
pub async fn run_level_reporting(
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    bodies: Vec<Vec<u8>>,
    level: &LoadLevel,
    seed: u64,
    cancel: Arc<AtomicBool>,
    on_done: OnDone,
) -> LevelRun {
    let open_loop = level.request_rate.is_some_and(|r| r.is_finite());
    let offsets = open_loop
        .then(|| arrival_offsets(bodies.len(), level.request_rate, level.burstiness, seed));
    run_scheduled(
        http,
        cfg,
        bodies,
        level.concurrency,
        offsets,
        Instant::now(),
        cancel,
        on_done,
    )
    .await
}

/// Sends body `i` at `start + offsets[i]` (open loop: the scheduled time is the request's time
/// origin), or, with no offsets, as soon as a slot frees (closed loop); at most `concurrency`
/// in flight. Ramp-ups, trace replay and shards give their own offsets and start. `on_done`
/// gets each request as soon as it finishes.
#[allow(clippy::too_many_arguments)]
pub async fn run_scheduled(
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    bodies: Vec<Vec<u8>>,
    concurrency: Option<usize>,
    offsets: Option<Vec<Duration>>,
    start: Instant,
    cancel: Arc<AtomicBool>,
    on_done: OnDone,
) -> LevelRun {
    let n = bodies.len();
    let open_loop = offsets.is_some();
    let offsets = offsets.unwrap_or_else(|| vec![Duration::ZERO; n]);
    let slots = Arc::new(Semaphore::new(
        concurrency.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let watch = CancelWatch::spawn(cancel);
    let mut handles = Vec::with_capacity(n);
    for (i, (body, offset)) in bodies.into_iter().zip(offsets).enumerate() {
        let (http, cfg, slots, mut cancel) =
            (http.clone(), cfg.clone(), slots.clone(), watch.clone());
        let on_done = on_done.clone();
        let due = start + offset;
        handles.push(tokio::spawn(async move {
            tokio::select! {
                _ = async {
                    if open_loop {
                        arrive_at(due).await
                    } else {
                        tokio::time::sleep_until(due.into()).await
                    }
                } => {}
                _ = cancel.cancelled() => return None,
            }
            let _permit = tokio::select! {
                p = slots.acquire_owned() => p.expect("semaphore never closed"),
                _ = cancel.cancelled() => return None,
            };
            if cancel.is_cancelled() {
                return None;
            }
            let scheduled = if open_loop { due } else { Instant::now() };
            let mut on_cancel = cancel.clone();
            let outcome = send_until(&http, &cfg, body, scheduled, async move {
                on_cancel.cancelled().await
            })
            .await;
            on_done(i, &outcome, start.elapsed().as_secs_f64());
            Some(outcome)
        }));
    }
    let mut outcomes = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    for (i, h) in handles.into_iter().enumerate() {
        if let Some(o) = h.await.expect("request task panicked") {
            outcomes.push(o);
            positions.push(i);
        }
    }
    LevelRun {
        outcomes,
        positions,
        duration: start.elapsed(),
        start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals() {
        assert_eq!(arrival_offsets(3, None, 1.0, 0), vec![Duration::ZERO; 3]);
        assert_eq!(
            arrival_offsets(2, Some(f64::INFINITY), 1.0, 0),
            vec![Duration::ZERO; 2]
        );
        let a = arrival_offsets(4001, Some(50.0), 1.0, 7);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let mean_gap = a[4000].as_secs_f64() / 4000.0;
        assert!((mean_gap - 0.02).abs() < 0.002, "{mean_gap}");
        assert_eq!(a, arrival_offsets(4001, Some(50.0), 1.0, 7), "seeded");
    }
}
