//! `vlmbench prepare <SET>`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::common::usage_bail;
use crate::cli::{BuiltinPrompts, ImageFormatArg, PrepareCommand};
use crate::dataset::{cache_sets, coco, jsonl, mmbench, prompts, synthetic, DatasetFile};

pub fn execute(cmd: PrepareCommand) -> Result<ExitCode> {
    match cmd {
        PrepareCommand::Coco(a) => {
            if a.num_samples == 0 {
                usage_bail!("--num-samples must be at least 1");
            }
            let input = match (a.annotations, a.images, a.tsv) {
                (Some(annotations), Some(images), None) => coco::CocoInput::Annotations {
                    annotations,
                    images,
                },
                (None, None, Some(tsv)) => coco::CocoInput::Tsv(tsv),
                _ => usage_bail!(
                    "give either --annotations FILE --images DIR, or --tsv FILE (not both)"
                ),
            };
            let out = resolve_out(&a.out.out, &coco::default_file_name(a.num_samples));
            let file = coco::prepare(&coco::CocoOptions {
                input,
                num_samples: a.num_samples,
                seed: a.seed,
                prompt: a.prompt,
                out: out.clone(),
            })?;
            announce(&out, &file);
        }
        PrepareCommand::Mmbench(a) => {
            let out = resolve_out(&a.out.out, mmbench::DEFAULT_FILE_NAME);
            let file = mmbench::prepare(&mmbench::MmbenchOptions {
                tsv: a.tsv,
                originals_only: a.originals_only,
                out: out.clone(),
            })?;
            announce(&out, &file);
        }
        PrepareCommand::Prompts(a) => {
            let jobs: Vec<(prompts::PromptSource, String)> = match a.file {
                Some(path) => {
                    let name = match a.name {
                        Some(n) => n,
                        None => prompts::name_from_path(&path)?,
                    };
                    vec![(prompts::PromptSource::File(path), name)]
                }
                None => {
                    let sets = match a.builtin {
                        BuiltinPrompts::Short => vec![prompts::Builtin::Short],
                        BuiltinPrompts::Medium => vec![prompts::Builtin::Medium],
                        BuiltinPrompts::Long => vec![prompts::Builtin::Long],
                        BuiltinPrompts::All => prompts::Builtin::ALL.to_vec(),
                    };
                    sets.into_iter()
                        .map(|b| (prompts::PromptSource::Builtin(b), b.name().to_string()))
                        .collect()
                }
            };
            for (source, name) in jobs {
                let out = resolve_out(&a.out.out, &prompts::default_file_name(&name));
                let file = prompts::prepare(&source, &name, &out)?;
                announce(&out, &file);
            }
        }
        PrepareCommand::Synthetic(a) => {
            if a.num_samples == 0 {
                usage_bail!("--num-samples must be at least 1");
            }
            let out = resolve_out(&a.out.out, &synthetic::default_file_name(&a.name));
            let opts = synthetic::SyntheticOptions {
                name: a.name,
                num_samples: a.num_samples,
                seed: a.seed,
                images: (!a.no_images).then_some(synthetic::ImageSpec {
                    width_mean: a.image_width_mean,
                    width_stddev: a.image_width_stddev,
                    height_mean: a.image_height_mean,
                    height_stddev: a.image_height_stddev,
                    format: match a.image_format {
                        ImageFormatArg::Png => synthetic::SynthImageFormat::Png,
                        ImageFormatArg::Jpeg => synthetic::SynthImageFormat::Jpeg,
                    },
                }),
                input_tokens_mean: a.input_tokens_mean,
                input_tokens_stddev: a.input_tokens_stddev,
                output_tokens: a.output_tokens_mean.map(|m| (m, a.output_tokens_stddev)),
                tokenizer: a.tokenizer,
            };
            let file = synthetic::prepare(&opts, &out)?;
            announce(&out, &file);
        }
        PrepareCommand::Jsonl(a) => {
            let name = match a.name {
                Some(n) => n,
                None => prompts::name_from_path(&a.file)?,
            };
            let out = resolve_out(&a.out.out, &jsonl::default_file_name(&name));
            let file = jsonl::prepare(&a.file, &name, &out)?;
            announce(&out, &file);
        }
        PrepareCommand::SharedPrefix(a) => {
            if a.prefixes == 0 || a.suffixes == 0 || a.prefix_tokens == 0 || a.suffix_tokens == 0 {
                usage_bail!("--prefixes, --suffixes, --prefix-tokens and --suffix-tokens must each be at least 1");
            }
            let out = resolve_out(
                &a.out.out,
                &cache_sets::default_file_name("shared-prefix", &a.name),
            );
            let file = cache_sets::prepare_shared_prefix(
                &cache_sets::SharedPrefixOptions {
                    name: a.name,
                    prefixes: a.prefixes,
                    prefix_tokens: a.prefix_tokens,
                    suffixes: a.suffixes,
                    suffix_tokens: a.suffix_tokens,
                    output_tokens: a.output_tokens,
                    seed: a.seed,
                    tokenizer: a.tokenizer,
                },
                &out,
            )?;
            announce(&out, &file);
        }
        PrepareCommand::Conversations(a) => {
            if a.conversations == 0 || a.turns == 0 || a.turn_tokens == 0 || a.output_tokens == 0 {
                usage_bail!("--conversations, --turns, --turn-tokens and --output-tokens must each be at least 1");
            }
            let out = resolve_out(
                &a.out.out,
                &cache_sets::default_file_name("conversations", &a.name),
            );
            let file = cache_sets::prepare_conversations(
                &cache_sets::ConversationOptions {
                    name: a.name,
                    conversations: a.conversations,
                    turns: a.turns,
                    turn_tokens: a.turn_tokens,
                    output_tokens: a.output_tokens,
                    seed: a.seed,
                    tokenizer: a.tokenizer,
                },
                &out,
            )?;
            announce(&out, &file);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--out` is either the JSON file itself (ends in `.json`) or the folder to put it in.
pub fn resolve_out(out: &Path, default_file_name: &str) -> PathBuf {
    let is_file = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        && !out.is_dir();
    if is_file {
        out.to_path_buf()
    } else {
        out.join(default_file_name)
    }
}

fn announce(out: &Path, file: &DatasetFile) {
    let images = file.samples.iter().filter(|s| !s.images.is_empty()).count();
    println!(
        "wrote {} ({} samples, {} with images, set {})",
        out.display(),
        file.num_samples,
        images,
        file.set
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_is_a_file_or_a_folder() {
        assert_eq!(
            resolve_out(Path::new("perf_data"), "a.json"),
            PathBuf::from("perf_data/a.json")
        );
        assert_eq!(
            resolve_out(Path::new("x/b.json"), "a.json"),
            PathBuf::from("x/b.json")
        );
        assert_eq!(
            resolve_out(Path::new("x/B.JSON"), "a.json"),
            PathBuf::from("x/B.JSON")
        );
    }
}
