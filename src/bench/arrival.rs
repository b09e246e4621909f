//! Arrival control beyond a fixed rate: a ramp-up of the request rate (linear or exponential,
//! as vLLM's `--ramp-up-strategy`), trace replay (Mooncake JSONL or a plain
//! `{timestamp, prompt | input_length, output_length}` form), and the split of one schedule
//! over `--shard i/N` processes.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::rng::SeededRng;

/// How the rate moves from its start to its end value over the requests of a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RampStrategy {
    /// rate(p) = start + (end − start) · p
    Linear,
    /// rate(p) = start · (end / start)^p
    Exponential,
}

/// Arrival offsets of `n` requests whose rate ramps from `start` to `end` req/s. Request `i`
/// has progress p = i / (n − 1); the gap before it is drawn from Gamma(burstiness,
/// 1 / (rate(p) · burstiness)), as at a fixed rate.
pub fn ramp_offsets(
    n: usize,
    strategy: RampStrategy,
    start: f64,
    end: f64,
    burstiness: f64,
    seed: u64,
) -> Vec<Duration> {
    let mut rng = SeededRng::new(seed);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                let p = i as f64 / (n - 1).max(1) as f64;
                let rate = match strategy {
                    RampStrategy::Linear => start + (end - start) * p,
                    RampStrategy::Exponential => start * (end / start).powf(p),
                };
                t += rng.gamma(burstiness, 1.0 / (rate * burstiness));
            }
            Duration::from_secs_f64(t)
        })
        .collect()
}

/// One request of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    /// Milliseconds from the trace's first request.
    pub at_ms: f64,
    /// The prompt, built from `hash_ids` / `input_length` where the trace has no text.
    pub prompt: String,
    /// Prompt length in words, as the trace asked (≈ tokens for common English words).
    pub input_length: Option<usize>,
    pub output_length: Option<usize>,
}

/// Words of the replayed prompts: short, common, mostly one token each in BPE vocabularies.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "as", "with",
    "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but",
    "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an",
    "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out",
    "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him", "into",
    "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could",
    "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now", "find",
    "long", "down", "day", "did", "get", "come", "made", "may", "part",
];

/// `n` words drawn from a generator seeded by `seed`: the same seed gives the same text, so
/// requests that share a hash id share that block's text exactly.
fn block_text(seed: u64, n: usize) -> String {
    let mut rng = SeededRng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s
}

/// Reads a trace: one JSON object per line with `timestamp` (ms) and either `prompt` or
/// `input_length`, optionally `output_length` and `hash_ids` (Mooncake: one id per
/// `block_size` prompt tokens; equal ids mean an equal prefix block). Lines are sorted by
/// timestamp; times start at 0.
pub fn read_trace(path: &Path, block_size: usize) -> Result<Vec<TraceRequest>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read trace {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let row = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = |field: &str| format!("{} line {row}: {field}", path.display());
        let v: Value = serde_json::from_str(line)
            .with_context(|| at("not a JSON object (expected one request per line)"))?;
        let at_ms = v
            .get("timestamp")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t >= 0.0)
            .with_context(|| at("`timestamp` must be a number of milliseconds, not negative"))?;
        let length = |field: &str| -> Result<Option<usize>> {
            match v.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(|n| Some(n as usize))
                    .with_context(|| at(&format!("`{field}` must be a positive integer"))),
            }
        };
        let input_length = length("input_length")?;
        let output_length = length("output_length")?;
        let hash_ids: Vec<u64> = match v.get("hash_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|h| h.as_u64())
                .collect::<Option<_>>()
                .with_context(|| at("`hash_ids` must be a list of non-negative integers"))?,
            Some(_) => bail!(at("`hash_ids` must be a list")),
        };
        let prompt = match (v.get("prompt").and_then(Value::as_str), input_length) {
            (Some(p), _) => p.to_string(),
            (None, Some(len)) if !hash_ids.is_empty() => {
                // Each hash id is one block; the last block is cut to what remains.
                let mut parts = Vec::new();
                let mut left = len;
                for h in &hash_ids {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(block_size);
                    parts.push(block_text(*h, take));
                    left -= take;
                }
                if left > 0 {
                    parts.push(block_text(row as u64 | 1 << 63, left));
                }
                parts.join(" ")
            }
            // No shared blocks: a text of its own, seeded by the line number.
            (None, Some(len)) => block_text(row as u64 | 1 << 63, len),
            (None, None) => bail!(at("needs `prompt` or `input_length`")),
        };
        out.push(TraceRequest {
            at_ms,
            prompt,
            input_length,
            output_length,
        });
    }
    if out.is_empty() {
        bail!("{} holds no requests", path.display());
    }
    out.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let t0 = out[0].at_ms;
    for r in &mut out {
        r.at_ms -= t0;
    }
    Ok(out)
}

/// The trace's times, divided by `speed` (2 = twice as fast).
pub fn trace_offsets(trace: &[TraceRequest], speed: f64) -> Vec<Duration> {
    trace
        .iter()
        .map(|r| Duration::from_secs_f64(r.at_ms / 1e3 / speed))
        .collect()
}

/// A shard of a schedule: `--shard i/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parses `i/N` with 0 ≤ i < N.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard {s:?}: expected i/N with 0 <= i < N, e.g. 0/2");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether request `i` of the whole schedule is this shard's: every N-th, so the
    /// shards' union is the whole schedule and each sees the same spread of arrivals.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// This shard's part of a concurrency cap `c` (the parts add up to `c`).
    pub fn concurrency_share(&self, c: usize) -> usize {
        c / self.count + usize::from(self.index < c % self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_speed_up_as_asked() {
        let lin = ramp_offsets(20001, RampStrategy::Linear, 10.0, 100.0, 1.0, 3);
        let gaps = |a: &[Duration], r: std::ops::Range<usize>| {
            (a[r.end].as_secs_f64() - a[r.start].as_secs_f64()) / r.len() as f64
        };
        // First tenth near 10-19 req/s, last tenth near 91-100 req/s.
        assert!(
            (0.05..0.1).contains(&gaps(&lin, 0..2000)),
            "{}",
            gaps(&lin, 0..2000)
        );
        let late = gaps(&lin, 18000..20000);
        assert!((0.009..0.012).contains(&late), "{late}");
        let exp = ramp_offsets(20001, RampStrategy::Exponential, 10.0, 100.0, 1.0, 3);
        // Exponential stays slow longer: by the middle the rate is √(10·100) ≈ 31.6.
        assert!((0.025..0.04).contains(&gaps(&exp, 9000..11000)));
        assert!(exp[10000] > lin[10000]);
    }

    #[test]
    fn traces_share_blocks_and_report_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(
            &p,
            "{\"timestamp\": 500, \"input_length\": 5, \"output_length\": 3, \"hash_ids\": [1, 2]}\n\
             {\"timestamp\": 100, \"input_length\": 7, \"output_length\": 2, \"hash_ids\": [1, 3]}\n\
             {\"timestamp\": 900, \"prompt\": \"hello\", \"output_length\": 4}\n",
        )
        .unwrap();
        let t = read_trace(&p, 4).unwrap();
        assert_eq!(
            t.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
            [0.0, 400.0, 800.0]
        );
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let (a, b) = (words(&t[0].prompt), words(&t[1].prompt));
        assert_eq!((a.len(), b.len()), (7, 5));
        assert_eq!(a[..4], b[..4], "hash id 1 is the same block in both");
        assert_ne!(block_text(2, 8), block_text(3, 8), "other ids, other text");
        assert_eq!(t[2].prompt, "hello");
        assert_eq!(
            trace_offsets(&t, 2.0),
            [0, 200, 400].map(Duration::from_millis)
        );
        std::fs::write(&p, "{\"timestamp\": 1}\n").unwrap();
        let e = read_trace(&p, 4).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("input_length"), "{e}");
        std::fs::write(&p, "{\"timestamp\": \"x\", \"input_length\": 1}\n").unwrap();
        assert!(format!("{:#}", read_trace(&p, 4).unwrap_err()).contains("timestamp"));
    }

    #[test]
    fn shards_split_requests_and_concurrency() {
        let s = Shard::parse("1/3").unwrap();
        assert_eq!((0..7).filter(|&i| s.owns(i)).collect::<Vec<_>>(), [1, 4]);
        let caps: Vec<usize> = (0..3)
            .map(|i| Shard { index: i, count: 3 }.concurrency_share(8))
            .collect();
        assert_eq!(caps, [3, 3, 2]);
        assert!(Shard::parse("2/2").is_err() && Shard::parse("x").is_err());
    }
}
