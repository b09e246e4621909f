//! Measuring one served level: the requests sent on their schedule (or a conversation set's
//! turns in order), the server watched beside them, every finished request journaled at once,
//! and the level's report made from the outcomes. The `run --backend openai` command decides
//! what each level sends and when; this is the loop that sends it and times it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;

use super::conversations::{run_conversations, Turn};
use super::request_detail::detail;
use super::request_record::record;
use super::server_watch::ServerWatch;
use super::serving::{arrival_offsets, run_scheduled, LoadLevel};
use crate::client::http::ClientConfig;
use crate::dataset::{cache_sets, Sample};
use crate::report::journal::{JournalWriter, RequestLine};
use crate::report::serving::extras::{LevelExtras, Slos};
use crate::report::serving::{LevelReport, RequestRecord};

/// What stays the same over a run's levels.
pub struct Session<'a> {
    pub runtime: &'a tokio::runtime::Runtime,
    pub http: reqwest::Client,
    pub cfg: Arc<ClientConfig>,
    pub cancel: Arc<AtomicBool>,
    pub watch: &'a ServerWatch,
    /// Where finished requests go at once; `None` once a write failed.
    pub journal: Arc<Mutex<Option<JournalWriter>>>,
    /// Counts tokens where the server does not.
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// The set is multi-turn conversations (see [`cache_sets`]).
    pub conversations: bool,
    pub slos: Option<Slos>,
    /// The shard (`--shard i/N`) this process is, recorded on every request.
    pub shard: Option<usize>,
}

/// One level to measure: what it sends and when.
pub struct LevelPlan {
    pub level: LoadLevel,
    /// The level's number in the run (journal lines carry it).
    pub index: usize,
    /// `--runs`: which repetition of the level this is.
    pub run: Option<usize>,
    /// Request bodies and the samples they were made from, in sending order.
    pub bodies: Vec<Vec<u8>>,
    pub sent: Vec<Sample>,
    /// In-flight cap for the requests (a shard's share of the level's).
    pub concurrency: Option<usize>,
    /// Open-loop arrival offsets from `start` (`None`: closed loop).
    pub offsets: Option<Vec<Duration>>,
    pub start: Instant,
    /// The seed the offsets were drawn with, recorded in the report (`None`: a closed loop or a
    /// trace).
    pub arrival_seed: Option<u64>,
}

impl Session<'_> {
    /// Sends the level's requests, watches the server meanwhile, and returns its report.
    pub fn measure(&self, plan: LevelPlan) -> LevelReport {
        let LevelPlan {
            level,
            index,
            run,
            bodies,
            sent,
            concurrency,
            offsets,
            start,
            arrival_seed,
        } = plan;
        let sent = Arc::new(sent);
        // A conversation turn's input count covers all it sent: filled as each turn goes out.
        let history_texts = Arc::new(Mutex::new(vec![None::<String>; sent.len()]));
        let counted = {
            let (sent, texts) = (sent.clone(), history_texts.clone());
            move |pos: usize| -> Sample {
                let texts = texts.lock().unwrap_or_else(|p| p.into_inner());
                match texts.get(pos).cloned().flatten() {
                    Some(all) => Sample {
                        prompt: all,
                        ..sent[pos].clone()
                    },
                    None => sent[pos].clone(),
                }
            }
        };
        let watchers = self.runtime.block_on(self.watch.start_level());
        let on_done = {
            let (journal, counted, tokenizer) = (
                self.journal.clone(),
                counted.clone(),
                self.tokenizer.clone(),
            );
            let (level_concurrency, request_rate) = (level.concurrency, level.request_rate);
            Arc::new(move |pos: usize, o: &_, elapsed_s: f64| {
                let line = RequestLine {
                    level: index,
                    concurrency: level_concurrency,
                    request_rate,
                    elapsed_s,
                    request: record(o, &counted(pos), tokenizer.as_deref()),
                };
                let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(Err(e)) = j.as_mut().map(|w| w.append_request(&line)) {
                    eprintln!("warning: {e:#}; the journal is no longer kept");
                    *j = None;
                }
            })
        };
        let run_out = if self.conversations {
            let conversations = conversation_turns(&sent, self.cfg.max_tokens);
            // Conversations, not turns, arrive on a rate's schedule.
            let offsets = level.request_rate.filter(|r| r.is_finite()).map(|_| {
                arrival_offsets(
                    conversations.len(),
                    level.request_rate,
                    level.burstiness,
                    arrival_seed.unwrap_or(0),
                )
            });
            self.runtime.block_on(run_conversations(
                self.http.clone(),
                self.cfg.clone(),
                conversations,
                concurrency,
                offsets,
                start,
                self.cancel.clone(),
                on_done,
                history_texts.clone(),
            ))
        } else {
            self.runtime.block_on(run_scheduled(
                self.http.clone(),
                self.cfg.clone(),
                bodies,
                concurrency,
                offsets,
                start,
                self.cancel.clone(),
                on_done,
            ))
        };
        let (server_metrics, server_gpus) = self.runtime.block_on(watchers.finish());
        let tokenizer = self.tokenizer.as_deref();
        let records: Vec<RequestRecord> = run_out
            .outcomes
            .iter()
            .zip(&run_out.positions)
            .map(|(o, &pos)| {
                let core = record(o, &counted(pos), tokenizer);
                let mut detail = detail(o, run_out.start, core.output_tokens, tokenizer);
                detail.shard = self.shard;
                RequestRecord { detail, ..core }
            })
            .collect();
        let mut lr = LevelReport::from_requests(
            level.concurrency,
            level.request_rate,
            run_out.duration.as_secs_f64(),
            records,
        );
        lr.arrival_seed = arrival_seed;
        lr.extras = LevelExtras::over(&lr.requests, lr.duration, self.slos.as_ref());
        lr.extras.run = run;
        lr.extras.server_metrics = server_metrics;
        lr.extras.server_gpus = server_gpus;
        lr
    }
}

/// A conversation set's turns grouped by conversation, in turn order; each turn's reply is
/// capped at its sample's `output_tokens` and at --max-new-tokens.
pub fn conversation_turns(sent: &[Sample], max_tokens: usize) -> Vec<Vec<Turn>> {
    let mut by_conversation: std::collections::BTreeMap<usize, Vec<(usize, Turn)>> =
        Default::default();
    for (position, sample) in sent.iter().enumerate() {
        if let Some((c, t)) = cache_sets::conversation_turn(sample) {
            by_conversation.entry(c).or_default().push((
                t,
                Turn {
                    position,
                    prompt: sample.prompt.clone(),
                    max_tokens: sample
                        .requested_output_tokens()
                        .map_or(max_tokens, |n| (n as usize).min(max_tokens)),
                },
            ));
        }
    }
    by_conversation
        .into_values()
        .map(|mut turns| {
            turns.sort_by_key(|(t, _)| *t);
            turns.into_iter().map(|(_, turn)| turn).collect()
        })
        .collect()
}
