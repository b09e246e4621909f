//! Multi-turn conversations against a server: each conversation is one chat client that sends
//! its user turns in order, each with the whole history (every earlier user turn and the
//! server's own reply to it), the next turn as soon as the previous reply has ended. At most
//! `concurrency` conversations are in flight; a conversation keeps its slot for all its turns.
//! With a request rate, conversations (not turns) arrive on the schedule.
//!
//! A turn's time origin is its own send (the previous reply had to end first); a conversation
//! whose turn fails stops there, and its later turns are not sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::cancel::CancelWatch;
use super::serving::{LevelRun, OnDone};
use crate::client::http::{build_chat_body, send_until, ClientConfig};

/// One turn: its position in the level's request list, the user's text and its reply limit.
#[derive(Debug, Clone)]
pub struct Turn {
    pub position: usize,
    pub prompt: String,
    pub max_tokens: usize,
}

/// Runs every conversation; `offsets` (one per conversation) make arrivals open-loop.
/// `history_texts[position]` is filled, before `on_done` sees the turn, with everything the
/// turn sent (history and new turn, joined by newlines), for counting its input tokens.
#[allow(clippy::too_many_arguments)]
pub async fn run_conversations(
    http: reqwest::Client,
    cfg: Arc<ClientConfig>,
    conversations: Vec<Vec<Turn>>,
    concurrency: Option<usize>,
    offsets: Option<Vec<Duration>>,
    start: Instant,
    cancel: Arc<std::sync::atomic::AtomicBool>,
    on_done: OnDone,
    history_texts: Arc<Mutex<Vec<Option<String>>>>,
) -> LevelRun {
    let slots = Arc::new(Semaphore::new(
        concurrency.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let watch = CancelWatch::spawn(cancel);
    let mut handles = Vec::with_capacity(conversations.len());
    for (c, turns) in conversations.into_iter().enumerate() {
        let (http, cfg, slots, mut cancel, on_done, texts) = (
            http.clone(),
            cfg.clone(),
            slots.clone(),
            watch.clone(),
            on_done.clone(),
            history_texts.clone(),
        );
        let due = start + offsets.as_ref().map_or(Duration::ZERO, |o| o[c]);
        handles.push(tokio::spawn(async move {
            let mut done = Vec::new();
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = cancel.cancelled() => return done,
            }
            let _permit = tokio::select! {
                p = slots.acquire_owned() => p.expect("semaphore never closed"),
                _ = cancel.cancelled() => return done,
            };
            let mut history: Vec<(String, String)> = Vec::new();
            for turn in turns {
                if cancel.is_cancelled() {
                    break;
                }
                let body = build_chat_body(&cfg, &history, &turn.prompt, turn.max_tokens);
                let mut sent_text = String::new();
                for (user, reply) in &history {
                    sent_text.push_str(user);
                    sent_text.push('\n');
                    sent_text.push_str(reply);
                    sent_text.push('\n');
                }
                sent_text.push_str(&turn.prompt);
                if let Some(slot) = texts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(turn.position)
                {
                    *slot = Some(sent_text);
                }
                let mut on_cancel = cancel.clone();
                let outcome = send_until(&http, &cfg, body, Instant::now(), async move {
                    on_cancel.cancelled().await
                })
                .await;
                on_done(turn.position, &outcome, start.elapsed().as_secs_f64());
                let failed = outcome.error.is_some();
                history.push((turn.prompt, outcome.text.clone()));
                done.push((turn.position, outcome));
                if failed {
                    break;
                }
            }
            done
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("conversation task panicked"));
    }
    all.sort_by_key(|(p, _)| *p);
    let (positions, outcomes) = all.into_iter().unzip();
    LevelRun {
        outcomes,
        positions,
        duration: start.elapsed(),
        start,
    }
}
