//! Watching the server while a level runs: its Prometheus `/metrics` scraped before the level,
//! every interval during it and after it, and its GPUs sampled through NVML when they are on
//! this machine. The scrapes happen outside the timed requests (before the level's clock
//! starts, after its last response) and between them on their own connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::client::server_metrics::{scrape, Snapshot};
use crate::memory::server_gpus::{GpuLevelUse, LevelWatch, ServerGpus};
use crate::report::serving::server_side::ServerMetrics;

/// Where and how often to read the server's metrics.
#[derive(Clone)]
pub struct MetricsSource {
    pub http: reqwest::Client,
    pub url: String,
    pub api_key: Option<String>,
    pub interval: Duration,
}

impl MetricsSource {
    /// Reads the page once: `Err` says why this server has none to read.
    pub async fn check(&self) -> Result<(), String> {
        scrape(&self.http, &self.url, self.api_key.as_deref())
            .await
            .map(|_| ())
    }

    async fn scrape(&self) -> Option<Snapshot> {
        scrape(&self.http, &self.url, self.api_key.as_deref())
            .await
            .ok()
    }
}

/// What is watched during every level (either may be absent).
pub struct ServerWatch {
    pub metrics: Option<MetricsSource>,
    pub gpus: Option<ServerGpus>,
}

/// The metrics side of one level: its source, the scrape before the level, and the sampler
/// task with its stop signal.
struct MetricsLevel {
    source: MetricsSource,
    first: Option<Snapshot>,
    stop: Arc<Notify>,
    task: JoinHandle<Vec<Snapshot>>,
}

/// Watching one level.
pub struct LevelWatchers {
    metrics: Option<MetricsLevel>,
    gpus: Option<LevelWatch>,
}

impl ServerWatch {
    /// Takes the "before" scrape and starts the samplers; call right before the level's clock.
    pub async fn start_level(&self) -> LevelWatchers {
        let metrics = match &self.metrics {
            Some(source) => {
                let first = source.scrape().await;
                let stop = Arc::new(Notify::new());
                let task = {
                    let (source, stop) = (source.clone(), stop.clone());
                    tokio::spawn(async move {
                        let mut taken = Vec::new();
                        loop {
                            tokio::select! {
                                _ = stop.notified() => break,
                                _ = tokio::time::sleep(source.interval) => {
                                    if let Some(s) = source.scrape().await {
                                        taken.push(s);
                                    }
                                }
                            }
                        }
                        taken
                    })
                };
                Some(MetricsLevel {
                    source: source.clone(),
                    first,
                    stop,
                    task,
                })
            }
            None => None,
        };
        LevelWatchers {
            metrics,
            gpus: self.gpus.as_ref().map(ServerGpus::watch),
        }
    }
}

impl LevelWatchers {
    /// Stops the samplers and takes the "after" scrape; call right after the level's last
    /// response.
    pub async fn finish(self) -> (Option<ServerMetrics>, Option<GpuLevelUse>) {
        let gpus = self.gpus.map(LevelWatch::finish);
        let metrics = match self.metrics {
            Some(MetricsLevel {
                source,
                first,
                stop,
                task,
            }) => {
                stop.notify_one();
                let during = task.await.unwrap_or_default();
                let last = source.scrape().await;
                // Without the scrapes on both sides a change would miss part of the level.
                match (first, last) {
                    (Some(first), Some(last)) => {
                        let scrapes: Vec<Snapshot> = std::iter::once(first)
                            .chain(during)
                            .chain(std::iter::once(last))
                            .collect();
                        ServerMetrics::over(
                            &source.url,
                            source.interval.as_millis() as u64,
                            &scrapes,
                        )
                    }
                    _ => None,
                }
            }
            None => None,
        };
        (metrics, gpus)
    }
}
