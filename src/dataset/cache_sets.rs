//! Sets that measure a server's caches on purpose (opt-in; every other set avoids them):
//! - `shared-prefix`: N prefixes of P tokens, each followed by S different suffixes, so a
//!   prefix cache can serve all but the first request of each prefix (SGLang's
//!   "generated shared prefix" workload);
//! - `conversations`: C multi-turn conversations of T user turns; the serving run sends each
//!   conversation's turns in order, each carrying the whole history (earlier user turns and the
//!   server's own replies), as a chat client does.
//!
//! Prompt lengths are exact against the tokenizer, as in the synthetic sets; the draws use one
//! seeded generator in a fixed order, so one seed gives one file on every machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::output::SetWriter;
use super::synthetic::{count, load_tokenizer, vocabulary, PromptFitter};
use super::{schema_version_for, DatasetFile, Sample, OUTPUT_TOKENS_FIELD};
use crate::rng::SeededRng;

/// The field naming a sample's shared prefix (0-based).
pub const PREFIX_GROUP_FIELD: &str = "prefix_group";
/// The field giving the shared prefix's length in characters (the prompt starts with it).
pub const PREFIX_CHARS_FIELD: &str = "prefix_chars";
/// The fields placing a sample in a conversation (both 0-based).
pub const CONVERSATION_FIELD: &str = "conversation";
pub const TURN_FIELD: &str = "turn";

/// Between a shared prefix and its suffix.
const SEPARATOR: &str = "\n\n";

#[derive(Debug, Clone)]
pub struct SharedPrefixOptions {
    pub name: String,
    pub prefixes: usize,
    pub prefix_tokens: usize,
    pub suffixes: usize,
    pub suffix_tokens: usize,
    pub output_tokens: Option<u64>,
    pub seed: u64,
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ConversationOptions {
    pub name: String,
    pub conversations: usize,
    pub turns: usize,
    pub turn_tokens: usize,
    pub output_tokens: u64,
    pub seed: u64,
    pub tokenizer: Option<PathBuf>,
}

/// `shared-prefix_<name>.json` / `conversations_<name>.json`.
pub fn default_file_name(set: &str, name: &str) -> String {
    format!("{set}_{}.json", crate::fsutil::sanitize_file_stem(name))
}

/// Writes the shared-prefix set: sample `k` is suffix `k / N` of prefix `k % N`, so
/// consecutive requests move between prefixes (each prefix must stay cached across the others).
pub fn prepare_shared_prefix(opts: &SharedPrefixOptions, out: &Path) -> Result<DatasetFile> {
    if opts.prefixes == 0
        || opts.suffixes == 0
        || opts.prefix_tokens == 0
        || opts.suffix_tokens == 0
    {
        bail!(
            "--prefixes, --suffixes, --prefix-tokens and --suffix-tokens must each be at least 1"
        );
    }
    let (tokenizer, source) = load_tokenizer(opts.tokenizer.as_deref())?;
    let words = vocabulary();
    let mut fitter = PromptFitter::new(&tokenizer, &words)?;
    let mut rng = SeededRng::new(opts.seed);
    let prefixes: Vec<String> = (0..opts.prefixes)
        .map(|i| {
            fitter.fit(&mut rng, opts.prefix_tokens).with_context(|| {
                format!(
                    "prefix {i}: no text of exactly {} tokens",
                    opts.prefix_tokens
                )
            })
        })
        .collect::<Result<_>>()?;
    let mut samples = Vec::with_capacity(opts.prefixes * opts.suffixes);
    for j in 0..opts.suffixes {
        for (i, prefix) in prefixes.iter().enumerate() {
            let suffix = fitter.fit(&mut rng, opts.suffix_tokens).with_context(|| {
                format!(
                    "suffix {j} of prefix {i}: no text of exactly {} tokens",
                    opts.suffix_tokens
                )
            })?;
            let prompt = format!("{prefix}{SEPARATOR}{suffix}");
            let mut fields = BTreeMap::new();
            fields.insert(PREFIX_GROUP_FIELD.into(), i.into());
            fields.insert(PREFIX_CHARS_FIELD.into(), prefix.len().into());
            fields.insert("prefix_tokens".into(), opts.prefix_tokens.into());
            fields.insert("input_tokens".into(), count(&tokenizer, &prompt)?.into());
            if let Some(n) = opts.output_tokens {
                fields.insert(OUTPUT_TOKENS_FIELD.into(), n.into());
            }
            samples.push(Sample {
                index: samples.len() as i64,
                prompt,
                images: Vec::new(),
                fields,
            });
        }
    }
    let mut params = BTreeMap::new();
    params.insert("prefixes".into(), opts.prefixes.into());
    params.insert("prefix_tokens".into(), opts.prefix_tokens.into());
    params.insert("suffixes".into(), opts.suffixes.into());
    params.insert("suffix_tokens".into(), opts.suffix_tokens.into());
    params.insert(
        "order".into(),
        "sample k is suffix k / prefixes of prefix k % prefixes".into(),
    );
    write(
        out,
        "shared-prefix",
        "shared_prefix",
        opts.seed,
        &opts.name,
        source,
        params,
        samples,
    )
}

/// Writes the conversation set: sample `k` is turn `k % T` of conversation `k / T`.
pub fn prepare_conversations(opts: &ConversationOptions, out: &Path) -> Result<DatasetFile> {
    if opts.conversations == 0
        || opts.turns == 0
        || opts.turn_tokens == 0
        || opts.output_tokens == 0
    {
        bail!(
            "--conversations, --turns, --turn-tokens and --output-tokens must each be at least 1"
        );
    }
    let (tokenizer, source) = load_tokenizer(opts.tokenizer.as_deref())?;
    let words = vocabulary();
    let mut fitter = PromptFitter::new(&tokenizer, &words)?;
    let mut rng = SeededRng::new(opts.seed);
    let mut samples = Vec::with_capacity(opts.conversations * opts.turns);
    for c in 0..opts.conversations {
        for t in 0..opts.turns {
            let prompt = fitter.fit(&mut rng, opts.turn_tokens).with_context(|| {
                format!(
                    "conversation {c}, turn {t}: no text of exactly {} tokens",
                    opts.turn_tokens
                )
            })?;
            let mut fields = BTreeMap::new();
            fields.insert(CONVERSATION_FIELD.into(), c.into());
            fields.insert(TURN_FIELD.into(), t.into());
            fields.insert("input_tokens".into(), opts.turn_tokens.into());
            fields.insert(OUTPUT_TOKENS_FIELD.into(), opts.output_tokens.into());
            samples.push(Sample {
                index: samples.len() as i64,
                prompt,
                images: Vec::new(),
                fields,
            });
        }
    }
    let mut params = BTreeMap::new();
    params.insert("conversations".into(), opts.conversations.into());
    params.insert("turns".into(), opts.turns.into());
    params.insert("turn_tokens".into(), opts.turn_tokens.into());
    params.insert("output_tokens".into(), opts.output_tokens.into());
    params.insert(
        "history".into(),
        "each turn is sent with every earlier user turn and the server's replies to them".into(),
    );
    write(
        out,
        "conversations",
        "conversations",
        opts.seed,
        &opts.name,
        source,
        params,
        samples,
    )
}

#[allow(clippy::too_many_arguments)]
fn write(
    out: &Path,
    set: &str,
    stem: &str,
    seed: u64,
    name: &str,
    source: super::SourceFile,
    mut params: BTreeMap<String, serde_json::Value>,
    samples: Vec<Sample>,
) -> Result<DatasetFile> {
    params.insert(
        "token_count".into(),
        "prompt text without special tokens".into(),
    );
    let writer = SetWriter::new(out)?;
    let file = DatasetFile {
        schema_version: schema_version_for(&samples),
        set: set.into(),
        name: format!("{stem}_{name}"),
        vlmbench_version: env!("CARGO_PKG_VERSION").into(),
        seed: Some(seed),
        num_samples: samples.len(),
        sources: vec![source],
        params,
        samples,
    };
    writer.finish(&file)?;
    Ok(file)
}

/// The report's words for a cache workload set (`None` for any other set).
pub fn describe(file: &DatasetFile) -> Option<String> {
    let p = |k: &str| {
        file.params
            .get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into())
    };
    match file.set.as_str() {
        "shared-prefix" => Some(format!(
            "shared-prefix: {} prefixes of {} tokens, {} suffixes of {} tokens each; a prefix cache may serve each prefix after its first request (repeats on a later pass get a new prefix per pass)",
            p("prefixes"),
            p("prefix_tokens"),
            p("suffixes"),
            p("suffix_tokens")
        )),
        "conversations" => Some(format!(
            "conversations: {} conversations of {} turns; each turn resends the history, which a prefix cache may serve",
            p("conversations"),
            p("turns")
        )),
        _ => None,
    }
}

/// Where a sample sits in a conversation set: (conversation, turn).
pub fn conversation_turn(sample: &Sample) -> Option<(usize, usize)> {
    let c = sample.fields.get(CONVERSATION_FIELD)?.as_u64()? as usize;
    let t = sample.fields.get(TURN_FIELD)?.as_u64()? as usize;
    Some((c, t))
}

/// A shared-prefix sample's group and prefix length in bytes.
pub fn prefix_group(sample: &Sample) -> Option<(usize, usize)> {
    let g = sample.fields.get(PREFIX_GROUP_FIELD)?.as_u64()? as usize;
    let chars = sample.fields.get(PREFIX_CHARS_FIELD)?.as_u64()? as usize;
    (sample.prompt.is_char_boundary(chars) && chars <= sample.prompt.len()).then_some((g, chars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_are_shared_exact_and_interleaved() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sp.json");
        let opts = SharedPrefixOptions {
            name: "t".into(),
            prefixes: 3,
            prefix_tokens: 40,
            suffixes: 4,
            suffix_tokens: 12,
            output_tokens: Some(8),
            seed: 42,
            tokenizer: None,
        };
        let file = prepare_shared_prefix(&opts, &out).unwrap();
        assert_eq!(file.samples.len(), 12);
        let (tok, _) = load_tokenizer(None).unwrap();
        for (k, s) in file.samples.iter().enumerate() {
            let (g, chars) = prefix_group(s).unwrap();
            assert_eq!(g, k % 3, "round-robin over prefixes");
            let prefix = &s.prompt[..chars];
            assert_eq!(count(&tok, prefix).unwrap(), 40);
            let suffix = &s.prompt[chars + SEPARATOR.len()..];
            assert_eq!(count(&tok, suffix).unwrap(), 12);
            assert_eq!(s.requested_output_tokens(), Some(8));
            // Same group: same prefix; other group: another prefix.
            let first_of_group = &file.samples[g];
            assert_eq!(&first_of_group.prompt[..chars], prefix);
        }
        let prompts: std::collections::HashSet<_> =
            file.samples.iter().map(|s| &s.prompt).collect();
        assert_eq!(prompts.len(), 12, "every suffix differs");
        assert_ne!(
            &file.samples[0].prompt[..prefix_group(&file.samples[0]).unwrap().1],
            &file.samples[1].prompt[..prefix_group(&file.samples[1]).unwrap().1]
        );
        // Same seed, same bytes.
        let again = dir.path().join("sp2.json");
        prepare_shared_prefix(&opts, &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn conversations_number_their_turns() {
        let dir = tempfile::tempdir().unwrap();
        let file = prepare_conversations(
            &ConversationOptions {
                name: "t".into(),
                conversations: 2,
                turns: 3,
                turn_tokens: 10,
                output_tokens: 5,
                seed: 1,
                tokenizer: None,
            },
            &dir.path().join("c.json"),
        )
        .unwrap();
        let places: Vec<_> = file
            .samples
            .iter()
            .map(|s| conversation_turn(s).unwrap())
            .collect();
        assert_eq!(places, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        assert!(file
            .samples
            .iter()
            .all(|s| s.requested_output_tokens() == Some(5)));
    }

    #[test]
    fn zero_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare_conversations(
            &ConversationOptions {
                name: "t".into(),
                conversations: 0,
                turns: 3,
                turn_tokens: 10,
                output_tokens: 5,
                seed: 1,
                tokenizer: None,
            },
            &dir.path().join("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--conversations"));
    }
}
