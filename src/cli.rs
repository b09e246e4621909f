//! Command-line arguments. Parsing only: values are validated into options structs by the
//! command modules, which never see raw arguments.
//!
//! Used by commands only; borrows value enums (`Workload`) and the preset list from below.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::bench::workload::Workload;

#[derive(Debug, Parser)]
#[command(
    name = "vlmbench",
    version,
    about = "Measure how fast vision-language and text models run: TTFT, TBT, TPS, latency and peak memory",
    long_about = "Measure how fast vision-language and text models run.\n\n\
        `vlmbench prepare` freezes benchmark inputs (COCO, MMBench, prompt sets, synthetic sets, \
        JSONL) into JSON under perf_data/; `vlmbench run` loads a model in-process with candle, \
        decodes greedily and reports time to first token, time between tokens, decode \
        tokens/s, end-to-end latency and peak memory. `vlmbench compare`, `plot` and `html` \
        read reports back: side by side with ratios, as charts, as one HTML page.",
    after_help = "Examples:\n  \
        vlmbench run                                   # random:tiny-llava on the built-in synthetic set\n  \
        vlmbench prepare coco --annotations captions_val2014.json --images val2014/\n  \
        vlmbench run --model-path ./Llama-2-7b-hf --data-file perf_data/prompts_short.json --device cuda\n  \
        vlmbench compare reports/base.json reports/new.json"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Freeze benchmark inputs into a JSON file under perf_data/.
    #[command(subcommand)]
    Prepare(PrepareCommand),
    /// Run a model over a frozen set and report its speed.
    Run(Box<RunArgs>),
    /// Write a model with seeded random weights in the Hugging Face layout.
    #[command(name = "synth-model")]
    SynthModel(SynthModelArgs),
    /// Put reports side by side: medians, p99s and ratios to the first report.
    Compare(CompareArgs),
    /// Draw charts of one or more reports as SVG and PNG.
    Plot(PlotArgs),
    /// Write one self-contained HTML page with the summary, environment and charts.
    Html(HtmlArgs),
    /// Turn the journal of a run that was killed (or crashed) into its report.
    #[command(after_help = "Example:\n  \
        vlmbench recover reports/run.journal.jsonl     # writes reports/run.json and run.csv")]
    Recover(RecoverArgs),
    /// Combine the reports of `run --shard i/N` processes into one report (exact counts and
    /// percentiles from every request).
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The journal `vlmbench run` keeps beside its report (`<report>.journal.jsonl`).
    #[arg(value_name = "JOURNAL")]
    pub journal: PathBuf,
    /// Where the report goes (default: the journal's report path, `<report>.json`).
    #[arg(long, value_name = "FILE")]
    pub report_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PrepareCommand {
    /// A seeded subset of COCO val (captioning), from the annotation JSON + images or VLMEvalKit's COCO_VAL.tsv.
    #[command(after_help = "Examples:\n  \
        vlmbench prepare coco --annotations annotations/captions_val2014.json --images val2014/\n  \
        vlmbench prepare coco --tsv ~/LMUData/COCO_VAL.tsv --num-samples 100 --seed 7")]
    Coco(CocoArgs),
    /// The whole MMBench DEV EN from VLMEvalKit's MMBench_DEV_EN.tsv.
    #[command(
        after_help = "Example:\n  vlmbench prepare mmbench --tsv ~/LMUData/MMBench_DEV_EN.tsv --originals-only"
    )]
    Mmbench(MmbenchArgs),
    /// Text-only prompt sets: the built-in short/medium/long sets, or one prompt per line from a file.
    #[command(after_help = "Examples:\n  \
        vlmbench prepare prompts                         # writes prompts_short/medium/long.json\n  \
        vlmbench prepare prompts --file my_prompts.txt --name support")]
    Prompts(PromptsArgs),
    /// Seeded synthetic image+text sets (image sizes and prompt lengths drawn from normal distributions).
    #[command(after_help = "Example:\n  \
        vlmbench prepare synthetic --num-samples 100 --image-width-mean 640 --image-width-stddev 64 \\\n    \
        --image-height-mean 480 --input-tokens-mean 128 --tokenizer ./model/tokenizer.json")]
    Synthetic(SyntheticArgs),
    /// Your own data: a GenAI-Perf style input JSONL ({\"text_input\"|\"text\": ..., \"image\": ...} per line).
    #[command(after_help = "Example:\n  vlmbench prepare jsonl --file inputs.jsonl --name my_set")]
    Jsonl(JsonlArgs),
    /// Prefix-cache workload (opt-in: it measures the cache on purpose): N prefixes of P
    /// tokens, each followed by S different suffixes.
    #[command(after_help = "Example:\n  \
        vlmbench prepare shared-prefix --prefixes 8 --prefix-tokens 1024 --suffixes 16 \\\n    \
        --suffix-tokens 64 --output-tokens 64 --tokenizer ./model/tokenizer.json")]
    SharedPrefix(SharedPrefixArgs),
    /// Multi-turn workload (opt-in): C conversations of T user turns; a served run sends each
    /// turn with the whole history, the server's own replies included.
    #[command(after_help = "Example:\n  \
        vlmbench prepare conversations --conversations 16 --turns 5 --turn-tokens 128 \\\n    \
        --output-tokens 128 --tokenizer ./model/tokenizer.json")]
    Conversations(ConversationArgs),
}

#[derive(Debug, Args)]
pub struct SharedPrefixArgs {
    /// Number of distinct shared prefixes.
    #[arg(long, default_value_t = 8)]
    pub prefixes: usize,
    /// Length of each prefix in tokens (exact, against --tokenizer).
    #[arg(long, default_value_t = 512)]
    pub prefix_tokens: usize,
    /// Suffixes per prefix (requests per prefix).
    #[arg(long, default_value_t = 8)]
    pub suffixes: usize,
    /// Length of each suffix in tokens.
    #[arg(long, default_value_t = 64)]
    pub suffix_tokens: usize,
    /// Requested output length per sample (`fields.output_tokens`).
    #[arg(long)]
    pub output_tokens: Option<u64>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Set name; the output is shared-prefix_<name>.json.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// tokenizer.json that lengths are made exact against (default: the random presets' one).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArg,
}

#[derive(Debug, Args)]
pub struct ConversationArgs {
    /// Number of conversations (each is one chat client).
    #[arg(long, default_value_t = 8)]
    pub conversations: usize,
    /// User turns per conversation.
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// Length of each user turn in tokens (exact, against --tokenizer).
    #[arg(long, default_value_t = 64)]
    pub turn_tokens: usize,
    /// Reply length asked for each turn (`fields.output_tokens`).
    #[arg(long, default_value_t = 64)]
    pub output_tokens: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Set name; the output is conversations_<name>.json.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// tokenizer.json that lengths are made exact against (default: the random presets' one).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArg,
}

/// Where a prepared set goes.
#[derive(Debug, Args, Clone)]
pub struct OutArg {
    /// Output JSON file, or a folder to write the set's default file name into.
    #[arg(long, value_name = "PATH", default_value = "perf_data")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CocoArgs {
    /// COCO captions annotation file (captions_val2014.json or captions_val2017.json).
    #[arg(long, value_name = "FILE", requires = "images", conflicts_with = "tsv")]
    pub annotations: Option<PathBuf>,
    /// Folder holding the COCO images named in the annotation file.
    #[arg(long, value_name = "DIR", requires = "annotations")]
    pub images: Option<PathBuf>,
    /// VLMEvalKit's COCO_VAL.tsv (index, base64 image, answer = list of reference captions).
    #[arg(long, value_name = "FILE", required_unless_present = "annotations")]
    pub tsv: Option<PathBuf>,
    /// How many images to choose.
    #[arg(long, default_value_t = 500)]
    pub num_samples: usize,
    /// Seed of the subset choice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Prompt to use instead of VLMEvalKit's captioning instruction.
    #[arg(long)]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub out: OutArg,
}

#[derive(Debug, Args)]
pub struct MmbenchArgs {
    /// VLMEvalKit's MMBench_DEV_EN.tsv.
    #[arg(long, value_name = "FILE")]
    pub tsv: PathBuf,
    /// Keep only the original questions (index < 1,000,000), not the option-rotated copies.
    #[arg(long)]
    pub originals_only: bool,
    #[command(flatten)]
    pub out: OutArg,
}

#[derive(Debug, Args)]
pub struct PromptsArgs {
    /// Text file with one prompt per line (blank lines are skipped).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set name (default: the file's stem); the output is prompts_<name>.json.
    #[arg(long, requires = "file")]
    pub name: Option<String>,
    /// Which built-in set(s) to write when no --file is given.
    #[arg(long, value_enum, default_value_t = BuiltinPrompts::All, conflicts_with = "file")]
    pub builtin: BuiltinPrompts,
    #[command(flatten)]
    pub out: OutArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuiltinPrompts {
    Short,
    Medium,
    Long,
    All,
}

#[derive(Debug, Args)]
pub struct SyntheticArgs {
    /// Number of samples.
    #[arg(long, default_value_t = 100)]
    pub num_samples: usize,
    /// Seed for image sizes, image contents and prompt words.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Set name; the output is synthetic_<name>.json.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Text-only set: no images.
    #[arg(long)]
    pub no_images: bool,
    #[arg(long, default_value_t = 512.0)]
    pub image_width_mean: f64,
    #[arg(long, default_value_t = 0.0)]
    pub image_width_stddev: f64,
    #[arg(long, default_value_t = 512.0)]
    pub image_height_mean: f64,
    #[arg(long, default_value_t = 0.0)]
    pub image_height_stddev: f64,
    #[arg(long, value_enum, default_value_t = ImageFormatArg::Png)]
    pub image_format: ImageFormatArg,
    /// Target prompt length in tokens (exact, against --tokenizer).
    #[arg(long, default_value_t = 128.0)]
    pub input_tokens_mean: f64,
    #[arg(long, default_value_t = 0.0)]
    pub input_tokens_stddev: f64,
    /// Requested output length per sample, stored as `fields.output_tokens`; `run` caps that
    /// sample's decode at it (and at --max-new-tokens).
    #[arg(long)]
    pub output_tokens_mean: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    pub output_tokens_stddev: f64,
    /// tokenizer.json that prompt lengths are made exact against (default: the tokenizer of
    /// vlmbench's random-weight presets).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormatArg {
    Png,
    Jpeg,
}

#[derive(Debug, Args)]
pub struct JsonlArgs {
    /// Input JSONL: one object per line with `text_input` (or `text`) and optionally `image`
    /// (a path relative to the JSONL file, or a base64 data URL).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Set name (default: the file's stem); the output is jsonl_<name>.json.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub out: OutArg,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    vlmbench run                                                   # random:tiny-llava, built-in synthetic image set\n  \
    vlmbench run --model random:tiny-llama --data-file perf_data/prompts_short.json\n  \
    vlmbench run --model-path ./llava-1.5-7b-hf --data-file perf_data/coco_val_500.json --device cuda\n  \
    vlmbench run --model-path ./Llama-2-7b-hf --data-file perf_data/prompts_long.json --device cuda --dtype f16\n  \
    vlmbench run --model-path ./model-q8_0.gguf --data-file perf_data/prompts_short.json --max-new-tokens 64 --ignore-eos\n  \
    vlmbench run --backend openai --base-url http://127.0.0.1:8000 --data-file perf_data/prompts_short.json --concurrency 1,8,32\n  \
    vlmbench run --backend openai --base-url http://127.0.0.1:8000 --data-file perf_data/shared-prefix_default.json \\\n      \
    --concurrency 8 --server-args \"vllm serve MODEL --enable-prefix-caching\" --server-pid 4242")]
pub struct RunArgs {
    /// Where the model runs: in this process (candle) or behind an OpenAI-compatible server.
    #[arg(long, value_enum, default_value_t = Backend::Candle)]
    pub backend: Backend,
    #[arg(
        long,
        help = format!("Model: a local folder (config.json + safetensors + tokenizer.json), a .gguf file, a Hugging Face hub id, or random:<preset> ({}); default random:tiny-llava. With --backend openai: the model name to request (default: the first model the server lists)", crate::synth::presets::list()),
        visible_alias = "model",
        env = "VLMBENCH_MODEL_PATH",
        value_name = "PATH|ID|NAME"
    )]
    pub model_path: Option<String>,
    /// Frozen data set from `vlmbench prepare` (default: the built-in synthetic set).
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// Weight dtype for safetensors models (GGUF keeps its own): auto = f16 on CUDA, f32 on CPU.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,
    /// KV cache dtype of in-process runs: auto = the activation dtype (f32 on the CPU, as
    /// transformers' f32 reference); f16 on the CPU halves a long context's cache reads, as
    /// llama.cpp's default cache does (attention still computes in f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub kv_cache_dtype: DtypeArg,
    /// cpu, cuda or cuda:N (auto = cuda:0 when built with CUDA and a GPU is present, else cpu).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Upper bound on generated tokens per sample.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Keep decoding past end-of-sequence (fixed-length decode).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Untimed warm-up samples before measuring.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Use only the first N samples of the set.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run the set N times.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// JSON report path (the per-sample CSV goes beside it with the same basename).
    /// Default: reports/<model>_<set>_<UTC time>.json
    #[arg(long, value_name = "FILE")]
    pub report_file: Option<PathBuf>,
    /// tokenizer.json to use instead of the one beside the model.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Seed for random:<preset> weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt format for vision models: `{prompt}` is the sample's prompt, `<image>` where the
    /// image goes, `\n` a newline. Default: the model's own (LLaVA 1.5: "USER: <image>\n{prompt}
    /// ASSISTANT:"; see README). Text models get the raw prompt unless this is given.
    #[arg(long, value_name = "TEMPLATE")]
    pub prompt_template: Option<String>,
    /// Record a timeline of the measured samples: <report>.trace.json (Chrome trace: opens in
    /// chrome://tracing or ui.perfetto.dev; spans for preprocessing, vision tower, projector,
    /// prefill, each decode step, each layer's norms / attention / MLP and the LM head) and
    /// <report>.profiler_stats.txt (top operations, KV-cache size). On CUDA every span waits for
    /// the GPU, so a profiled run is slower: profile and measure in separate runs.
    #[arg(long)]
    pub profile: bool,
    /// CPU threads for the model (default: all cores). More than the logical CPU count warns;
    /// more than 8 per logical CPU is refused.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Do not print the summary table.
    #[arg(long)]
    pub quiet: bool,
    /// Also write the charts (SVG and PNG) beside the report, as `vlmbench plot` does.
    #[arg(long)]
    pub plots: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// In-process candle engine.
    Candle,
    /// An OpenAI-compatible HTTP server (llama.cpp, vLLM, SGLang, TGI), streaming.
    Openai,
}

/// Options of `--backend openai`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Server (--backend openai)")]
pub struct ServerArgs {
    /// Server address, e.g. http://127.0.0.1:8000 (with or without /v1).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Bearer token; never written to reports or logs.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// `chat` (/v1/chat/completions, images as data URLs) or `completions` (/v1/completions, text only).
    #[arg(long, value_enum, default_value_t = EndpointArg::Chat)]
    pub endpoint: EndpointArg,
    /// Requests in flight; a list runs a sweep, one report section per level (e.g. 1,4,8).
    #[arg(long, value_delimiter = ',', value_name = "N[,N...]")]
    pub concurrency: Vec<usize>,
    /// Arrivals per second (Poisson; see --burstiness); `inf` sends all at once.
    #[arg(long, value_name = "R|inf")]
    pub request_rate: Option<f64>,
    /// Gamma shape of inter-arrival times: 1 = Poisson, below 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Requests per level (default: every sample of the set once; cycles through the set).
    #[arg(long)]
    pub num_prompts: Option<usize>,
    /// Seconds before a request is abandoned and counted as failed.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Do not send `stream_options` (for servers that reject it); token counts then come from
    /// --tokenizer or the number of streamed chunks.
    #[arg(long)]
    pub no_stream_usage: bool,
    /// A ready-made load profile: writes a synthetic set (prompt lengths exact against
    /// --tokenizer, default the built-in one) and sets output length (with ignore_eos) and the
    /// concurrency sweep: high (context-2k in, 2k out; 1,5,10), mid (200/250; 32,64,128), low
    /// (100/150; 1,4,8,16,32), vision-a (50/300 + a unique 512x512 image; 8..128),
    /// vision-b (100/100 + image; 1,8,16,32).
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// The server's context length, for --workload high when the server does not report it.
    #[arg(long)]
    pub context_length: Option<usize>,
    /// Send repeated prompts and images exactly as given (to measure what the server's prefix
    /// and encoder caches buy). By default a repeat gets a unique prompt prefix and altered
    /// image pixels, so no request is served from an earlier one's cache.
    #[arg(long)]
    pub repeat_inputs: bool,
    /// Empty the server's prefix cache before each level (vLLM POST /reset_prefix_cache,
    /// SGLang POST /flush_cache; whichever answers).
    #[arg(long)]
    pub reset_cache: bool,
    /// How the server was launched (its command line, or your words), kept in the report
    /// beside what the server says about itself; the API key is scrubbed from it.
    #[arg(long, value_name = "TEXT")]
    pub server_args: Option<String>,
    /// The server's Prometheus metrics page, read before, during and after each level
    /// (default: BASE/metrics, where vLLM, SGLang, TGI and `llama-server --metrics` serve it).
    #[arg(long, value_name = "URL")]
    pub server_metrics_url: Option<String>,
    /// Do not read the server's metrics page.
    #[arg(long, conflicts_with = "server_metrics_url")]
    pub no_server_metrics: bool,
    /// Milliseconds between reads of the metrics page, and between NVML samples of the
    /// server's GPUs, during a level.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub server_sample_interval: u64,
    /// A server process on this machine whose GPU memory to sample (repeatable).
    #[arg(long, value_name = "PID")]
    pub server_pid: Vec<u32>,
    /// Do not sample this machine's GPUs (NVML) during each level.
    #[arg(long, conflicts_with = "server_pid")]
    pub no_server_gpus: bool,
    #[command(flatten)]
    pub load: LoadControlArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointArg {
    Chat,
    Completions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  vlmbench synth-model --preset tiny-llava --out models/tiny-llava"
)]
pub struct SynthModelArgs {
    #[arg(long, help = format!("Architecture preset: {}", crate::synth::presets::list()))]
    pub preset: String,
    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Weight dtype written to the safetensors.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write everything but the weights (config.json, generation_config.json, the tokenizer, a
    /// vision preset's processor files): for a data set exact against the preset's tokenizer
    /// (`prepare synthetic --tokenizer DIR/tokenizer.json`) or the same architecture built in
    /// another framework, without gigabytes on disk.
    #[arg(long)]
    pub no_weights: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    vlmbench compare reports/base.json reports/new.json\n  \
    vlmbench compare reports/llamacpp.json reports/vllm.json --format md > compare.md\n  \
    vlmbench compare a.json b.json c.json --format csv --out compare.csv")]
pub struct CompareArgs {
    /// Reports from `vlmbench run` (in-process or --backend openai); the first is the baseline
    /// every ratio is taken against. Serving reports give one column per load level.
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CompareFormat::Table)]
    pub format: CompareFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareFormat {
    /// Aligned plain text for the terminal.
    Table,
    /// A Markdown table (GitHub issues, pull requests).
    Md,
    /// One line per run, metric and statistic.
    Csv,
    /// Columns, rows with values and ratios, and warnings.
    Json,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    vlmbench plot reports/run.json                       # charts beside the report\n  \
    vlmbench plot reports/base.json reports/new.json --out plots/ --name base_vs_new\n  \
    vlmbench plot reports/server.json --format svg")]
pub struct PlotArgs {
    /// Reports from `vlmbench run`; several are drawn in one chart, one colour per run.
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Folder for the charts (default: the first report's folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// File name prefix (default: the report's file stem, or `compare` for several reports).
    #[arg(long)]
    pub name: Option<String>,
    /// Which files to write.
    #[arg(long, value_enum, default_value_t = PlotFormat::Both)]
    pub format: PlotFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlotFormat {
    Svg,
    Png,
    Both,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    vlmbench html reports/run.json                       # writes reports/run.html\n  \
    vlmbench html reports/base.json reports/new.json -o compare.html")]
pub struct HtmlArgs {
    /// Reports from `vlmbench run`; with several, the page starts with the comparison table.
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Output HTML file (default: the first report with the extension .html).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

/// SLOs, the goodput search, repeated runs, arrival control, shards and exports of
/// `--backend openai` (see README "Serving: SLOs, arrivals, shards").
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Serving: SLOs, arrivals, shards (--backend openai)")]
pub struct LoadControlArgs {
    /// SLOs in ms, any subset: `--goodput ttft:500 tpot:50 e2el:3000`. Each level then reports
    /// the share and rate of requests meeting all of them (vLLM's goodput).
    #[arg(long, num_args = 1.., value_name = "METRIC:MS")]
    pub goodput: Vec<String>,
    /// Search for the highest request rate or concurrency whose goodput share reaches
    /// --goodput-target, by bisection over --search-range (needs --goodput).
    #[arg(long, value_enum, value_name = "OVER")]
    pub goodput_search: Option<SearchOverArg>,
    /// Share of requests (0-1] that must meet every SLO for a level to pass the search.
    #[arg(long, default_value_t = 0.9)]
    pub goodput_target: f64,
    /// Lowest and highest value the search tries, e.g. 1:64.
    #[arg(long, value_name = "LO:HI")]
    pub search_range: Option<String>,
    /// The rate search stops when (high - low) / high is at most this.
    #[arg(long, default_value_t = 0.1)]
    pub search_tolerance: f64,
    /// No new search level starts after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub search_time_limit: f64,
    /// Run every level this many times and report mean, stddev, CV and a 95 % CI per figure.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Ramp the request rate up over the requests of a level (as vLLM's --ramp-up-strategy);
    /// needs --ramp-up-start-rate and --ramp-up-end-rate instead of --request-rate.
    #[arg(long, value_enum)]
    pub ramp_up_strategy: Option<RampArg>,
    #[arg(long, value_name = "R")]
    pub ramp_up_start_rate: Option<f64>,
    #[arg(long, value_name = "R")]
    pub ramp_up_end_rate: Option<f64>,
    /// Replay a trace: JSONL with `timestamp` (ms) and `input_length` + `hash_ids` (Mooncake)
    /// or `prompt`, and `output_length` (sent as max_tokens). Replaces --data-file.
    #[arg(long, value_name = "TRACE.jsonl")]
    pub replay: Option<PathBuf>,
    /// Replay speed: trace times are divided by this (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub replay_speed: f64,
    /// Prompt words per Mooncake hash id (Mooncake's traces use 512-token blocks).
    #[arg(long, default_value_t = 512)]
    pub replay_block_size: usize,
    /// Run part i of N of one schedule (N processes, on one or many machines); combine their
    /// reports with `vlmbench merge`. Needs one load level.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<String>,
    /// The shards' common time zero: RFC 3339 UTC (2026-01-01T12:00:00Z) or Unix seconds.
    #[arg(long, value_name = "TIME")]
    pub start_at: Option<String>,
    /// Also write each level in the JSON layout of vLLM's `bench serve --save-result`
    /// (several levels: PATH with `-1`, `-2`... before the extension).
    #[arg(long, value_name = "PATH")]
    pub save_vllm_result: Option<PathBuf>,
    /// Write a Chrome/Perfetto trace of every request (scheduled, sent, first token, chunks,
    /// done), one track per connection; open it in ui.perfetto.dev or chrome://tracing.
    #[arg(long, value_name = "TRACE.json")]
    pub trace: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SearchOverArg {
    /// Bisect over --request-rate (req/s).
    Rate,
    /// Bisect over --concurrency.
    Concurrency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RampArg {
    Linear,
    Exponential,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    vlmbench merge shard0.json shard1.json --out merged.json")]
pub struct MergeArgs {
    /// The shard reports of one schedule (same --shard N and --start-at).
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Where to write the merged report (a CSV goes beside it).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}
