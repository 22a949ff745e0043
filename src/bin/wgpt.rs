//! `wgpt`: generate text, chat, dump logits, embed, benchmark and list adapters, from the
//! command line.

#[path = "wgpt/chat.rs"]
mod chat;
#[path = "wgpt/llama_bench.rs"]
mod llama_bench;
#[path = "wgpt/serve/mod.rs"]
mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use npyz::WriterBuilder;
use wgpt::{
    Engine, GenerateOptions, LoadOptions, Model, ModelSource, Session, WeightDtype, WeightLayout,
};

const EXAMPLES: &str = "\
Examples:
  wgpt generate --prompt \"The borrow checker\" -n 40          # the model embedded in wgpt
  wgpt generate --model openai-community/gpt2 --prompt \"Hello\" # a hub id, from the HF cache
  wgpt chat --model ./opt-125m --temperature 0.7
  wgpt bench --shape gpt2 --dtype q8 -p 512 -n 128 -o md      # llama-bench's flags and table
  wgpt embed --model ./all-MiniLM-L6-v2 \"first text\" \"second text\"
  wgpt generate --model ./flan-t5-small --prompt \"translate English to German: Hi\"  # T5
  wgpt serve --model ./SmolLM2-135M-Instruct.Q4_1.gguf         # the OpenAI API on :8080
  wgpt info
  wgpt completions bash > /etc/bash_completion.d/wgpt

A model is a Hugging Face folder or a hub id (ORG/NAME) already in the Hugging Face cache
(HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub); nothing is downloaded.
WGPT_MODEL and WGPT_ADAPTER set the defaults of --model and --adapter.";

#[derive(Parser)]
#[command(
    name = "wgpt",
    version,
    about = "Transformer inference on any GPU through wgpu and hand-written WGSL kernels: \
             Llama-family, GPT-2, OPT and XGLM decoders, BERT sentence encoders, T5 \
             encoder-decoders, an OpenAI-compatible server",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// An interactive session: each line continues the text and the reply streams back, the
    /// conversation kept in the KV cache; /help lists commands (sampling settings, /reset, /next).
    Chat(ChatArgs),
    /// Write the logits of every position of a sequence to a .npy file (f32, [T, V]).
    Logits(LogitsArgs),
    /// List the adapters wgpu sees, with their limits and features.
    Info(InfoArgs),
    /// Prefill and decode figures for an adapter: a model folder or a named shape with random weights.
    /// Given an encoder folder (BERT), embedding throughput at batch sizes 1, 8 and 32 instead.
    Bench(BenchArgs),
    /// Sentence embeddings of texts with an encoder folder (BERT family, e.g. all-MiniLM-L6-v2),
    /// pooled and normalised as its sentence-transformers files say: a .npy file or JSON.
    Embed(EmbedArgs),
    /// The cosine similarity matrix of texts' sentence embeddings.
    Similarity(SimilarityArgs),
    /// An OpenAI-compatible HTTP server (chat, completions, embeddings) on 127.0.0.1:8080:
    /// concurrent requests are decoded together (continuous batching).
    Serve(serve::ServeArgs),
    /// Print a shell completion script: `wgpt completions bash > ~/.local/share/bash-completion/completions/wgpt`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct EncoderArgs {
    /// A Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json, and
    /// sentence-transformers' modules.json, 1_Pooling/config.json, sentence_bert_config.json),
    /// or a hub id ORG/NAME already in the Hugging Face cache.
    #[arg(long, short)]
    model: PathBuf,
    /// Texts to embed (or --input).
    texts: Vec<String>,
    /// A file of texts, one per line (added after any TEXT arguments).
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = wgpt::encoder::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Adapter index or part of its name (see `wgpt info`).
    #[arg(long, env = "WGPT_ADAPTER")]
    adapter: Option<String>,
    /// How weight matrices are stored on the GPU: f32, f16, q8, q6, q5, q4, q5h or q4h (q4 and
    /// q5 with f16 scales, as llama.cpp's Q4_1 and Q5_1).
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// Where the linear layers' operands live: auto, buffer or texture.
    #[arg(long, default_value = "auto")]
    layout: WeightLayout,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    enc: EncoderArgs,
    /// Write the embeddings as f32 .npy [N, D] here instead of printing JSON.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct SimilarityArgs {
    #[command(flatten)]
    enc: EncoderArgs,
    /// Print the matrix as JSON ({"texts": [...], "similarity": [[...]]}).
    #[arg(long)]
    json: bool,
}

/// `wgpt bench -o`: llama-bench's output formats.
#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchOutput {
    /// A markdown table, one row per test (pp512, tg128) with t/s ± sd.
    Md,
    /// CSV, a header then one line per test.
    Csv,
    /// A JSON array, one object per test.
    Json,
    /// One JSON object per line per test.
    Jsonl,
}

#[derive(Args)]
#[command(after_help = "\
llama-bench's flags work too: -p 512 -n 128 -r 5 -o md|csv|json|jsonl prints its rows
(pp512: the prompt's prefill; tg128: 128 tokens decoded from a one-token start), each as
the mean t/s ± standard deviation over the repetitions.")]
struct BenchArgs {
    /// A model folder, GGUF file (or hub id) to benchmark.
    #[arg(long, short, conflicts_with = "shape")]
    model: Option<PathBuf>,
    /// A model shape with random weights generated on the GPU: gpt2, gpt2-medium, gpt2-large,
    /// gpt2-xl, smollm2-135m, qwen2.5-0.5b, llama-3.2-1b.
    #[arg(long)]
    shape: Option<String>,
    /// How weight matrices are stored on the GPU: f32, f16, q8, q6, q5, q4, q5h or q4h (q4 and
    /// q5 with f16 scales, as llama.cpp's Q4_1 and Q5_1).
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// Where the linear layers' operands live: auto, buffer or texture.
    #[arg(long, default_value = "auto")]
    layout: WeightLayout,
    /// Prompt lengths to measure, comma-separated (llama-bench's -p).
    #[arg(long, short = 'p', value_delimiter = ',', default_value = "128")]
    prompt_len: Vec<usize>,
    /// Tokens generated per run (llama-bench's -n; with -o, 0 measures no tg row).
    #[arg(long = "gen", short = 'n', default_value_t = 128)]
    gen_tokens: usize,
    /// Also measure batched decode of this many sequences at once, comma-separated (e.g. 1,4,8).
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Runs per configuration (medians are reported; llama-bench's -r).
    #[arg(long, short = 'r', default_value_t = 3)]
    repeat: usize,
    /// Print llama-bench's rows (pp<N>, tg<N>, t/s ± sd) in this format instead of wgpt's table.
    #[arg(long, short = 'o', value_enum)]
    output: Option<BenchOutput>,
    /// Print the report as JSON (schema wgpt-bench/1).
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also run microbenchmarks of each kernel on GPT-2 shapes, next to the copy bandwidth.
    #[arg(long)]
    kernels: bool,
    /// Print a side-by-side table of these JSON reports instead of running.
    #[arg(long, num_args = 1.., conflicts_with_all = ["model", "shape"])]
    compare: Vec<PathBuf>,
    #[arg(long, env = "WGPT_ADAPTER")]
    adapter: Option<String>,
}

#[derive(Args)]
struct ModelArgs {
    /// A decoder: a Hugging Face folder (GPT-2, OPT, XGLM, Llama, Mistral, Qwen2, Phi-3:
    /// config.json, model.safetensors, tokenizer.json), a GGUF file (llama, qwen2, gpt2; run
    /// packed) or a hub id ORG/NAME already in the Hugging Face cache (nothing is downloaded).
    /// Default: the small model embedded in wgpt.
    #[arg(long, short, env = "WGPT_MODEL")]
    model: Option<PathBuf>,
    /// Adapter index or part of its name (see `wgpt info`). Default: the high-performance one.
    #[arg(long, env = "WGPT_ADAPTER")]
    adapter: Option<String>,
    /// How weight matrices are stored on the GPU: f32, f16 (half the memory and bandwidth), q8
    /// (int8 with an f32 scale per 32 weights, quantised at load: ~0.28x f32) or q4 (4-bit with
    /// an f32 scale and minimum per 32: ~0.19x f32); q8 and q4 need n_embd and n_inner multiples
    /// of 32. A GGUF file keeps its own formats. Computation stays f32.
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// Where the linear layers' operands live: auto (textures on CPU adapters such as lavapipe,
    /// where they are ~10x faster; buffers elsewhere), buffer or texture.
    #[arg(long, default_value = "auto")]
    layout: WeightLayout,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to continue, tokenized as transformers' `tokenizer(text)` does (with the
    /// special tokens the tokenizer adds, such as OPT's leading </s>). With --chat, the user's
    /// message.
    #[arg(long, short)]
    prompt: String,
    /// Treat --prompt as one user turn: render it with the model's chat template (as
    /// transformers' apply_chat_template with add_generation_prompt) and generate the reply.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system turn before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Tokens to generate.
    #[arg(long, short = 'n', default_value_t = 64)]
    max_tokens: usize,
    /// 0 picks the most likely token (greedy); above 0, samples from softmax(logits / T).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Sample only among the most likely tokens holding this much probability (1 = all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalise tokens seen in the last --repeat-window tokens (1 = off; 1.1-1.3 is typical).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens --repeat-penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_window: usize,
    /// Instead of refusing a prompt plus --max-tokens longer than the context, shift the context
    /// when it fills: keep this many tokens of the prompt's head and the most recent ones (half
    /// the context in all) and recompute them.
    #[arg(long, value_name = "KEEP")]
    context_shift: Option<usize>,
    /// Stop when the text contains this string (repeatable); the JSON `text` ends before it.
    #[arg(long)]
    stop: Vec<String>,
    /// Print the N most likely next tokens with their probabilities at each step (stderr, N <= 64).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    top: u32,
    /// Seed of the sampler (same seed, same adapter: same tokens).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going past the end-of-sequence token (the model's, from generation_config.json or
    /// config.json).
    #[arg(long)]
    ignore_eos: bool,
    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens per reply (/n changes it).
    #[arg(long, short = 'n', default_value_t = 48)]
    max_tokens: usize,
    /// Sampling temperature, 0 for greedy (/temp).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the k likeliest tokens, 0 = all (/topk).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// Nucleus sampling threshold, 1 = off (/topp).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Repetition penalty over the last 64 tokens, 1 = off (/repeat).
    #[arg(long, default_value_t = 1.2)]
    repeat_penalty: f32,
    /// Sampler seed; turn i uses seed + i (/seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The system turn, for a model with a chat template.
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// Continue text even when the model has a chat template (each line continues the text).
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to run (tokenized with the folder's tokenizer.json).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    prompt: Option<String>,
    /// Token ids, comma-separated (no tokenizer needed).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Encoder-decoder models (T5): the decoder's input ids, comma-separated, starting with the
    /// decoder start token; the source is --prompt (or --ids). Writes teacher-forced decoder
    /// logits [T_dec, V].
    #[arg(long, value_delimiter = ',')]
    decoder_ids: Option<Vec<u32>>,
    /// Output .npy file.
    #[arg(long, short)]
    out: PathBuf,
}

#[derive(Args)]
struct InfoArgs {
    /// Only this adapter (index or part of its name).
    #[arg(long, env = "WGPT_ADAPTER")]
    adapter: Option<String>,
    /// Also describe this model folder (or hub id): family and variant choices (reads
    /// config.json only).
    #[arg(short, long)]
    model: Option<PathBuf>,
}

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off,wgpu_core=error"),
    )
    .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat_command(a),
        Command::Logits(a) => logits(a),
        Command::Info(a) => info(a),
        Command::Bench(a) => bench(a),
        Command::Embed(a) => embed(a),
        Command::Similarity(a) => similarity(a),
        Command::Serve(a) => serve::serve(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "wgpt", &mut std::io::stdout());
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        if let Some(hint) = e.downcast_ref::<wgpt::Error>().and_then(flag_hint) {
            eprintln!("hint: {hint}");
        }
        std::process::exit(1);
    }
}

/// The library names its own API in errors (`Sampling::temperature`, `LoadOptions::dtype`);
/// here, what to change on the command line.
fn flag_hint(e: &wgpt::Error) -> Option<String> {
    use wgpt::Error as E;
    const FLAGS: &[(&str, &str)] = &[
        ("Sampling::temperature", "--temperature"),
        ("Sampling::top_p", "--top-p"),
        ("Sampling::min_p", "--min-p"),
        ("Sampling::repeat_penalty", "--repeat-penalty"),
        ("LoadOptions::dtype", "--dtype"),
        ("LoadOptions::layout", "--layout"),
        ("bench::Options::gen_tokens", "--gen (-n)"),
        ("bench::Options::repeat", "--repeat (-r)"),
        ("bench::Options::prompt_lens", "--prompt-len (-p)"),
    ];
    Some(match e {
        E::InvalidOption { option, .. } => {
            let flag = FLAGS.iter().find(|(o, _)| o == option)?.1;
            format!("set {flag} accordingly")
        }
        E::PromptTooLong {
            prompt_tokens,
            n_ctx,
            ..
        } => format!(
            "use at most --max-tokens {} (-n), a shorter --prompt, or --context-shift KEEP",
            (n_ctx + 1).saturating_sub(*prompt_tokens)
        ),
        E::DtypeUnsupported { .. } => "use --dtype f16 or --dtype f32".into(),
        E::OutOfMemory(_) => {
            "try --dtype f16 or q8, a smaller model, or another --adapter (wgpt info)".into()
        }
        E::AdapterNotFound { .. } => "run `wgpt info` to list adapters for --adapter".into(),
        E::Io { .. } | E::NotInHubCache { .. } | E::UnsupportedModel { .. } => {
            "--model (or WGPT_MODEL) takes a Hugging Face model folder or a cached hub id ORG/NAME"
                .into()
        }
        _ => return None,
    })
}

/// The decoder to run: --model DIR (or a cached hub id), or the default model (embedded in the
/// binary with the `default-model` feature, so an installed binary finds it).
fn decoder_source(arg: &Option<PathBuf>) -> Result<ModelSource> {
    Ok(ModelSource::from_arg(arg.as_deref())?)
}

fn load(args: &ModelArgs) -> Result<(Model, ModelSource)> {
    let source = decoder_source(&args.model)?;
    let model = load_source(&source, args, Some(progress_bar()))?;
    Ok((model, source))
}

/// Uploads `source`'s weights to the adapter and in the layout `args` asks for.
fn load_source(
    source: &ModelSource,
    args: &ModelArgs,
    progress: Option<wgpt::Progress>,
) -> Result<Model> {
    let gpu = Engine::new(args.adapter.as_deref())?;
    let opts = LoadOptions {
        dtype: args.dtype,
        layout: args.layout,
        progress,
        ..Default::default()
    };
    Ok(source.load(gpu, &opts)?)
}

fn generate(a: GenerateArgs) -> Result<()> {
    if a.prompt.is_empty() {
        bail!("the prompt is empty: pass some text with --prompt");
    }
    let sampling = wgpt::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_window: a.repeat_window,
    };
    sampling.validate()?;
    let source = decoder_source(&a.model.model)?;
    // Read the config, tokenize and check the context before paying for the GPU upload.
    let config = source.config()?;
    let tok = source.tokenizer()?;
    let (prompt_ids, eos) = match a.chat {
        true => chat_prompt(&source, &tok, &config, &a)?,
        false => (tok.encode(&a.prompt)?, None),
    };
    // An encoder-decoder reads the prompt as its source and writes from its start token.
    let (source_ids, prompt_ids) = match &config.t5 {
        Some(t5) => (Some(prompt_ids), vec![t5.decoder_start_token_id]),
        None => (None, prompt_ids),
    };
    let needed = if a.context_shift.is_some() {
        1
    } else {
        a.max_tokens
    };
    wgpt::runtime::generate::check_context(prompt_ids.len(), needed, config.n_positions)?;
    let (model, _) = load(&a.model)?;
    let mut session = Session::new(&model)?;
    session.set_top_candidates(a.top as usize);
    if let Some(src) = &source_ids {
        session.encode(src)?;
    }
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling,
        seed: a.seed,
        stop_at_eos: !a.ignore_eos,
        context_shift: a.context_shift,
        stop: a.stop.clone(),
        eos_token_ids: eos,
        ..Default::default()
    };
    let stdout = std::io::stdout();
    if !a.chat && source_ids.is_none() {
        print!("{}", a.prompt);
    }
    stdout.lock().flush().ok();
    let out = wgpt::generate_ids(&mut session, Some(&tok), &prompt_ids, &opts, |t| {
        let mut s = stdout.lock();
        let _ = s.write_all(t.piece.as_bytes());
        let _ = s.flush();
        if !t.top.is_empty() {
            // Candidates go to stderr so stdout stays the generated text.
            let shown: Vec<String> = t
                .top
                .iter()
                .map(|&(id, p)| format!("{:?} {:.3}", tok.decode(&[id]).unwrap_or_default(), p))
                .collect();
            eprintln!("\n  [top {}] {}", t.top.len(), shown.join(" | "));
        }
    })?;
    println!();
    let source_note = source_ids
        .as_ref()
        .map_or(String::new(), |s| format!("source {} tokens, ", s.len()));
    eprintln!(
        "{source_note}prompt {} tokens, generated {} tokens | prefill {:.1} tok/s, decode {:.1} tok/s | {sampling} seed={} on {} ({:?})",
        out.prompt_ids.len(),
        out.ids.len(),
        out.prefill_tok_s(),
        out.decode_tok_s(),
        a.seed,
        model.gpu.info.name,
        model.gpu.info.backend,
    );
    if a.json {
        let summary = serde_json::json!({
            "prompt": a.prompt,
            "source_ids": source_ids,
            "prompt_ids": out.prompt_ids,
            "ids": out.ids,
            "text": out.text,
            "prompt_tokens": out.prompt_ids.len(),
            "generated_tokens": out.ids.len(),
            "prefill_tok_s": out.prefill_tok_s(),
            "decode_tok_s": out.decode_tok_s(),
            "time_to_first_token_s": out.prefill_s,
            "temperature": a.temperature,
            "top_k": a.top_k,
            "top_p": a.top_p,
            "min_p": a.min_p,
            "repeat_penalty": a.repeat_penalty,
            "repeat_window": a.repeat_window,
            "seed": a.seed,
            "adapter": model.gpu.info.name,
            "backend": format!("{:?}", model.gpu.info.backend),
        });
        println!("{summary}");
    }
    Ok(())
}

/// `--chat`: the user's turn (after `--system`'s) rendered with the model's chat template, its
/// ids (the template writes the special tokens), and the ids that end a reply.
fn chat_prompt(
    source: &ModelSource,
    tok: &wgpt::Tokenizer,
    config: &wgpt::Config,
    a: &GenerateArgs,
) -> Result<(Vec<u32>, Option<Vec<u32>>)> {
    let Some(template) = source.chat_template()? else {
        bail!(
            "{} has no chat template (tokenizer_config.json's chat_template or chat_template.jinja); \
             leave out --chat to continue the text as it is",
            source.describe()
        );
    };
    let mut messages: Vec<wgpt::Message> =
        a.system.iter().map(|s| wgpt::Message::system(s)).collect();
    messages.push(wgpt::Message::user(&a.prompt));
    let text = template.render(&messages, true)?;
    let eos = wgpt::chat::end_of_turn_ids(&template, tok, &config.eos_token_ids);
    Ok((tok.encode_plain(&text)?, Some(eos)))
}

fn chat_command(a: ChatArgs) -> Result<()> {
    let sampling = wgpt::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repeat_penalty: a.repeat_penalty,
        ..Default::default()
    };
    sampling.validate()?;
    let source = decoder_source(&a.model.model)?;
    let config = source.config()?;
    if config.t5.is_some() {
        bail!(
            "{} is an encoder-decoder (T5): it answers one source at a time; use wgpt generate \
             --model {} --prompt SOURCE",
            source.describe(),
            source.describe()
        );
    }
    if a.max_tokens == 0 || a.max_tokens >= config.n_positions {
        bail!(
            "--max-tokens must be between 1 and {} (the context is {} tokens)",
            config.n_positions - 1,
            config.n_positions
        );
    }
    let tok = source.tokenizer()?;
    let template = match a.raw {
        true => None,
        false => source.chat_template()?,
    };
    if template.is_none() && a.system.is_some() {
        bail!(
            "{} has no chat template, so there is no system turn: leave out --system",
            source.describe()
        );
    }
    let dialog = template.map(|t| {
        let eos = wgpt::chat::end_of_turn_ids(&t, &tok, &config.eos_token_ids);
        chat::Dialog::new(t, a.system.as_deref(), eos)
    });
    let model = load_source(&source, &a.model, Some(progress_bar()))?;
    chat::run(&model, &tok, dialog, sampling, a.max_tokens, a.seed)
}

fn logits(a: LogitsArgs) -> Result<()> {
    let source = decoder_source(&a.model.model)?;
    let ids = match (&a.ids, &a.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(p)) => source.tokenizer()?.encode(p)?,
        (None, None) => bail!("give --prompt TEXT or --ids 1,2,3"),
    };
    if ids.is_empty() {
        bail!("the input is empty: give at least one token");
    }
    let seq2seq = source.config()?.t5.is_some();
    match (&a.decoder_ids, seq2seq) {
        (Some(_), false) => bail!(
            "--decoder-ids is for encoder-decoder models (T5); {} is a decoder-only model: \
             give its whole input with --prompt or --ids",
            source.describe()
        ),
        (None, true) => bail!(
            "{} is an encoder-decoder model: --prompt (or --ids) is the source; give the \
             decoder's input with --decoder-ids START,a,b,...",
            source.describe()
        ),
        (Some(d), true) if d.is_empty() => bail!("--decoder-ids is empty"),
        _ => {}
    }
    let (model, _) = load(&a.model)?;
    let mut session = Session::new(&model)?;
    let ids = match &a.decoder_ids {
        Some(dec) => {
            session.encode(&ids)?;
            dec.clone()
        }
        None => ids,
    };
    let logits = session.logits(&ids)?;
    let v = model.config.vocab_size;
    let file = std::fs::File::create(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[ids.len() as u64, v as u64])
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    w.extend(logits.iter().copied())
        .and_then(|_| w.finish())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    eprintln!("wrote {} ([{}, {v}] f32)", a.out.display(), ids.len());
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    match &a.model {
        Some(file)
            if file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf")) =>
        {
            gguf_info(file)?
        }
        Some(dir) => model_info(dir)?,
        None => {}
    }
    adapters_info(a.adapter.as_deref())
}

/// `wgpt info --model FILE.gguf`: the family's choices as for a folder (from the `<arch>.*`
/// metadata), the histogram of tensor types, and whether a chat template is present.
fn gguf_info(file: &std::path::Path) -> Result<()> {
    use wgpt::gguf::{Gguf, Value};
    let g = Gguf::open(file)?;
    let name = g.get("general.name").and_then(Value::as_str).unwrap_or("-");
    println!("model {} (GGUF v{}, {name})", file.display(), g.version);
    match g.config() {
        Ok(cfg) => {
            for (aspect, choice) in cfg.choices() {
                println!("    {aspect:<12} {choice}");
            }
        }
        Err(e) => println!("    {:<12} {e}", "config"),
    }
    let types: Vec<String> = (g.type_histogram().iter())
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    println!(
        "    {:<12} {} tensors: {}",
        "tensors",
        g.tensors.len(),
        types.join(", ")
    );
    // How each type runs: packed in a GPU format, or dequantised to f32.
    let on_gpu: Vec<String> = (g.type_histogram().keys())
        .map(|t| match wgpt::gguf::packed_as(t) {
            Some(d) if *t == "F32" || *t == "F16" || *t == "BF16" => format!("{t} as {}", d.name()),
            Some(d) => format!("{t} packed as {}", d.name()),
            None if wgpt::gguf::DEQUANTIZED.contains(t) => format!("{t} dequantised to f32"),
            None => format!("{t} not supported"),
        })
        .collect();
    println!("    {:<12} {}", "on the GPU", on_gpu.join(", "));
    let template = g.get("tokenizer.chat_template").is_some();
    println!(
        "    {:<12} {}",
        "chat",
        if template { "yes" } else { "none" }
    );
    Ok(())
}

/// `wgpt info --model DIR`: the family's choices, from config.json.
fn model_info(dir: &std::path::Path) -> Result<()> {
    let source = ModelSource::dir(dir)?;
    let cfg = source.config()?;
    println!("model {}", dir.display());
    for (aspect, choice) in cfg.choices() {
        println!("    {aspect:<12} {choice}");
    }
    let template = match (source.chat_template()?, &cfg.t5) {
        (Some(_), _) => "yes (wgpt chat and generate --chat render it)",
        (None, Some(_)) => "none (sequence to sequence: the prompt is the source text)",
        (None, None) => "none (text continuation)",
    };
    println!("    {:<12} {template}", "chat");
    Ok(())
}

/// The adapters wgpu finds (or the one `adapter` names), with their limits and features.
fn adapters_info(adapter: Option<&str>) -> Result<()> {
    let all = wgpt::gpu::adapters();
    if all.is_empty() {
        return Err(wgpt::Error::NoAdapter {
            detail: String::new(),
        }
        .into());
    }
    let wanted = adapter.map(str::to_lowercase);
    let mut shown = 0;
    for ad in &all {
        if let Some(w) = &wanted {
            let by_index = w.parse::<usize>().ok() == Some(ad.index);
            if !by_index && !ad.info.name.to_lowercase().contains(w.as_str()) {
                continue;
            }
        }
        shown += 1;
        let i = &ad.info;
        let l = &ad.limits;
        println!("[{}] {}", ad.index, i.name);
        println!(
            "    vendor      0x{:04x} ({})",
            i.vendor,
            vendor_name(i.vendor)
        );
        println!("    backend     {:?}", i.backend);
        println!("    device type {:?}", i.device_type);
        println!("    driver      {} {}", i.driver, i.driver_info);
        println!(
            "    limits      max_buffer_size {} MiB, max_storage_buffer_binding_size {} MiB,",
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20
        );
        println!(
            "                max_compute_workgroup_storage_size {} KiB, max_compute_invocations_per_workgroup {},",
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup
        );
        println!(
            "                max_compute_workgroups_per_dimension {}, max_storage_buffers_per_shader_stage {}",
            l.max_compute_workgroups_per_dimension, l.max_storage_buffers_per_shader_stage
        );
        let f = ad.features;
        let has = |x: wgpu::Features| if f.contains(x) { "yes" } else { "no" };
        println!(
            "    features    shader-f16 {}, subgroup {}, timestamp-query {}",
            has(wgpu::Features::SHADER_F16),
            has(wgpu::Features::SUBGROUP),
            has(wgpu::Features::TIMESTAMP_QUERY)
        );
    }
    if shown == 0 {
        let names: Vec<String> = all
            .iter()
            .map(|a| format!("{}: {}", a.index, a.info.name))
            .collect();
        return Err(wgpt::Error::AdapterNotFound {
            wanted: adapter.unwrap_or_default().to_string(),
            available: names.join("; "),
        }
        .into());
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if !a.compare.is_empty() {
        let mut reports = Vec::new();
        for f in &a.compare {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let r: wgpt::bench::Report = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a wgpt bench report", f.display()))?;
            if r.schema != wgpt::bench::SCHEMA {
                bail!(
                    "{}: schema {:?}, this wgpt reads {:?}",
                    f.display(),
                    r.schema,
                    wgpt::bench::SCHEMA
                );
            }
            reports.push((f.display().to_string(), r));
        }
        print!("{}", wgpt::bench::compare(&reports));
        return Ok(());
    }
    let model_dir = a.model.as_deref().map(wgpt::hub::model_dir).transpose()?;
    if let Some(dir) = model_dir.filter(|d| wgpt::encoder::is_encoder_dir(d)) {
        return bench_embed(&a, &dir);
    }
    let gpu = Engine::new(a.adapter.as_deref())?;
    let t0 = std::time::Instant::now();
    let load = LoadOptions {
        dtype: a.dtype,
        layout: a.layout,
        progress: Some(progress_bar()),
        ..Default::default()
    };
    let (model, source, file_bytes) = match (&a.model, &a.shape) {
        (_, Some(name)) => {
            let cfg = wgpt::bench::shape(name).with_context(|| {
                format!(
                    "unknown --shape {name:?}; use one of {}",
                    wgpt::bench::SHAPES.join(", ")
                )
            })?;
            (
                Model::random(gpu, cfg, &load, 1)?,
                format!("random:{name}"),
                None,
            )
        }
        (m, None) => {
            let source = decoder_source(m)?;
            let model = source.load(gpu, &load)?;
            (model, source.describe(), Some(source.checkpoint_bytes()))
        }
    };
    let opts = wgpt::bench::Options {
        prompt_lens: a.prompt_len.clone(),
        gen_tokens: a.gen_tokens,
        repeat: a.repeat,
        source,
        load_s: t0.elapsed().as_secs_f64(),
        load_peak_rss_bytes: wgpt::bench::peak_rss_bytes(),
        checkpoint_bytes: file_bytes,
        batch_sizes: a.batch.clone(),
    };
    if let Some(fmt) = a.output {
        let (r, tests) = llama_bench::measure(&model, &opts, &a.prompt_len, a.gen_tokens)?;
        print!(
            "{}",
            llama_bench::render(fmt, &r, model.weight_bytes(), &tests)
        );
        return Ok(());
    }
    let mut r = wgpt::bench::run(&model, &opts)?;
    // The kernel rows' share of the copy bandwidth is against the copy measured with them.
    let mut kernels_copy = None;
    if a.kernels {
        let (copy, rows) = wgpt::bench::kernels(&model.gpu, a.dtype, model.uses_textures(), 768)?;
        r.kernel_bench = rows;
        kernels_copy = Some(copy);
    }
    let json = serde_json::to_string_pretty(&r)?;
    if let Some(out) = &a.out {
        std::fs::write(out, &json).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    print_bench(&r, kernels_copy, model.uses_textures(), a.dtype);
    Ok(())
}

/// wgpt bench's own table: the adapter, the model, each run, batched decode and kernel times.
fn print_bench(
    r: &wgpt::bench::Report,
    kernels_copy: Option<f64>,
    textures: bool,
    dtype: WeightDtype,
) {
    let m = &r.model;
    println!(
        "adapter  {} ({}, {}, {} {})",
        r.adapter.name,
        r.adapter.backend,
        r.adapter.device_type,
        r.adapter.driver,
        r.adapter.driver_info
    );
    println!(
        "model    {}: L={} C={} NH={} V={} n_ctx={}, {:.1} M params, {}",
        m.source,
        m.n_layer,
        m.n_embd,
        m.n_head,
        m.vocab_size,
        m.n_positions,
        m.params as f64 / 1e6,
        m.dtype
    );
    println!(
        "load     {:.2} s, VRAM {:.1} MB",
        r.load_s,
        r.vram_bytes as f64 / 1e6
    );
    if let Some(copy) = r.copy_gb_s {
        println!("copy     {copy:.2} GB/s buffer to buffer (decode's weight-bandwidth bound)");
    }
    if let (Some(rss), Some(file)) = (r.load_peak_rss_bytes, r.checkpoint_bytes) {
        println!(
            "         peak host memory {:.1} MB = {:.2} x the checkpoint ({:.1} MB)",
            rss as f64 / 1e6,
            rss as f64 / file as f64,
            file as f64 / 1e6
        );
        // A CPU adapter's "VRAM" is host memory too: what the load itself holds is the rest.
        // The peak is taken after the load, before any session: only the weights are in it.
        if r.adapter.device_type == "Cpu" {
            let held = if r.weight_bytes > 0 {
                r.weight_bytes
            } else {
                r.vram_bytes
            };
            let rest = rss.saturating_sub(held);
            println!(
                "         of which the adapter's buffers {:.1} MB (a CPU adapter: the weights), the rest {:.1} MB = {:.2} x the checkpoint",
                held as f64 / 1e6,
                rest as f64 / 1e6,
                rest as f64 / file as f64
            );
        }
    }
    if m.encoder_decoder {
        println!(
            "         an encoder-decoder: the prompt is the source; \"encode t/s\" and TTFT are its \
             encoder pass alone"
        );
    }
    println!(
        "{:>6} {:>5} {:>12} {:>9} {:>11} {:>8} {:>8} {:>10} {:>8} {:>8} {:>9}",
        "prompt",
        "gen",
        if m.encoder_decoder {
            "encode t/s"
        } else {
            "prefill t/s"
        },
        "TTFT ms",
        "decode t/s",
        "p50 ms",
        "p90 ms",
        "dispatch/t",
        "GB/s",
        "of copy",
        "GFLOP/s"
    );
    for run in &r.runs {
        println!(
            "{:>6} {:>5} {:>12.1} {:>9.1} {:>11.2} {:>8.2} {:>8.2} {:>10} {:>8.2} {:>7.0}% {:>9.2}",
            run.prompt_len,
            run.gen_tokens,
            run.prefill_tok_s,
            run.ttft_ms,
            run.decode_tok_s,
            run.ms_per_token_p50,
            run.ms_per_token_p90,
            run.dispatches_per_token,
            run.decode_weight_gb_s,
            100.0 * run.decode_of_copy_bound,
            run.prefill_gflop_s
        );
    }
    for b in &r.batch_runs {
        println!(
            "batched decode: {:>2} sequences x prompt {}: {:>8.2} ms/step, {:>8.1} tok/s in all",
            b.sequences, b.prompt_len, b.ms_per_step, b.decode_tok_s
        );
    }
    println!("GPU time per kernel ({}):", r.kernel_timing);
    for (label, list) in [
        ("prefill", &r.kernels_prefill_ms),
        ("decode", &r.kernels_decode_ms),
    ] {
        let total: f64 = list.iter().map(|k| k.ms).sum();
        let parts: Vec<String> = list
            .iter()
            .map(|k| format!("{} {:.2}", k.kernel, k.ms))
            .collect();
        println!("  {label:<8} {total:.2} ms: {}", parts.join(", "));
    }
    if let Some(copy) = kernels_copy {
        println!(
            "kernels on GPT-2 shapes ({} weights, {} layout), buffer copy {copy:.2} GB/s:",
            dtype.name(),
            if textures { "texture" } else { "buffer" }
        );
        println!(
            "  {:<10} {:<22} {:>9} {:>8} {:>9} {:>8}",
            "kernel", "shape", "ms", "GB/s", "GFLOP/s", "of copy"
        );
        for k in &r.kernel_bench {
            println!(
                "  {:<10} {:<22} {:>9.3} {:>8.2} {:>9.2} {:>7.0}%",
                k.kernel,
                k.shape,
                k.ms,
                k.gb_s,
                k.gflop_s,
                100.0 * k.of_copy_bandwidth
            );
        }
    }
}

/// A load progress bar on stderr, shown only once a load has taken more than a second.
fn progress_bar() -> wgpt::Progress {
    let start = std::time::Instant::now();
    let bar = std::sync::OnceLock::<indicatif::ProgressBar>::new();
    wgpt::Progress(std::sync::Arc::new(move |done, total| {
        if start.elapsed().as_secs_f64() < 1.0 && bar.get().is_none() {
            return;
        }
        let bar = bar.get_or_init(|| {
            let style =
                indicatif::ProgressStyle::with_template("loading {bar:40} {percent:>3}% {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(total).with_style(style)
        });
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
        }
    }))
}

fn vendor_name(id: u32) -> &'static str {
    match id {
        0x1002 => "AMD",
        0x10de => "NVIDIA",
        0x8086 => "Intel",
        0x106b => "Apple",
        0x13b5 => "ARM",
        0x5143 => "Qualcomm",
        0x1010 => "Imagination",
        0x10005 => "Mesa",
        _ => "unknown",
    }
}

/// The texts of `embed` / `similarity`, the encoder, and the embeddings (notes on stderr for
/// texts cut to max_seq_length).
fn run_encoder(a: &EncoderArgs) -> Result<(Vec<String>, wgpt::Embeddings)> {
    let mut texts = a.texts.clone();
    if let Some(path) = &a.input {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --input {}", path.display()))?;
        texts.extend(text.lines().map(|l| l.trim_end_matches('\r').to_string()));
    }
    if texts.is_empty() {
        bail!("no texts: give them as arguments or with --input FILE (one per line)");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let gpu = Engine::new(a.adapter.as_deref())?;
    let opts = LoadOptions {
        dtype: a.dtype,
        layout: a.layout,
        progress: Some(progress_bar()),
        ..Default::default()
    };
    let model = wgpt::EncoderModel::load(gpu, &a.model, &opts)?;
    let mut ids = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let tok = model.tokenize(t)?;
        if let Some(n) = tok.truncated_from {
            eprintln!(
                "note: text {i} has {n} tokens; truncated to the first {} (max_seq_length), as sentence-transformers does",
                tok.ids.len()
            );
        }
        ids.push(tok.ids);
    }
    let t0 = std::time::Instant::now();
    let e = model.embed_tokens(&ids, a.batch_size)?;
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} texts ({tokens} tokens, D = {}) in {:.3} s: {:.1} texts/s on {} ({:?})",
        e.len(),
        e.dim,
        s,
        e.len() as f64 / s,
        model.gpu.info.name,
        model.gpu.info.backend,
    );
    Ok((texts, e))
}

fn embed(a: EmbedArgs) -> Result<()> {
    let (texts, e) = run_encoder(&a.enc)?;
    match &a.out {
        Some(out) => {
            let file = std::fs::File::create(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[e.len() as u64, e.dim as u64])
                .writer(std::io::BufWriter::new(file))
                .begin_nd()
                .with_context(|| format!("cannot write {}", out.display()))?;
            w.extend(e.data.iter().copied())
                .and_then(|_| w.finish())
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {} ([{}, {}] f32)", out.display(), e.len(), e.dim);
        }
        None => {
            let json = serde_json::json!({
                "texts": texts,
                "dim": e.dim,
                "embeddings": e.to_vecs(),
            });
            println!("{json}");
        }
    }
    Ok(())
}

fn similarity(a: SimilarityArgs) -> Result<()> {
    let (texts, e) = run_encoder(&a.enc)?;
    let m = e.cosine_matrix();
    if a.json {
        println!("{}", serde_json::json!({"texts": texts, "similarity": m}));
        return Ok(());
    }
    for (i, t) in texts.iter().enumerate() {
        let short: String = t.chars().take(60).collect();
        println!("[{i}] {short:?}");
    }
    print!("{:>5}", "");
    for j in 0..texts.len() {
        print!(" {:>7}", format!("[{j}]"));
    }
    println!();
    for (i, row) in m.iter().enumerate() {
        print!("{:>5}", format!("[{i}]"));
        for v in row {
            print!(" {v:>7.4}");
        }
        println!();
    }
    Ok(())
}

/// `wgpt bench --model ENCODER_DIR`: sentences/s and tokens/s at batch sizes (--batch, default
/// 1, 8, 32) over 32 texts of everyday lengths (or the largest batch size, if above 32).
fn bench_embed(a: &BenchArgs, dir: &Path) -> Result<()> {
    let gpu = Engine::new(a.adapter.as_deref())?;
    let opts = LoadOptions {
        dtype: a.dtype,
        layout: a.layout,
        progress: Some(progress_bar()),
        ..Default::default()
    };
    let model = wgpt::EncoderModel::load(gpu, dir, &opts)?;
    let batches = if a.batch.is_empty() {
        vec![1, 8, 32]
    } else {
        a.batch.clone()
    };
    let n_texts = batches.iter().copied().max().unwrap_or(1).max(32);
    let r = wgpt::encoder::bench::run(
        &model,
        &dir.display().to_string(),
        &batches,
        n_texts,
        a.repeat,
    )?;
    let json = serde_json::to_string_pretty(&r)?;
    if let Some(out) = &a.out {
        std::fs::write(out, &json).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "adapter  {} ({}, {}, {} {})",
        r.adapter.name,
        r.adapter.backend,
        r.adapter.device_type,
        r.adapter.driver,
        r.adapter.driver_info
    );
    println!(
        "model    {} (encoder, {} layout), {} texts, {} tokens per run, median of {}",
        r.source, r.layout, r.texts, r.tokens, a.repeat
    );
    println!(
        "{:>6} {:>10} {:>12} {:>11} {:>9}",
        "batch", "seconds", "sentences/s", "tokens/s", "GFLOP/s"
    );
    for run in &r.runs {
        println!(
            "{:>6} {:>10.3} {:>12.1} {:>11.1} {:>9.2}",
            run.batch, run.seconds, run.sentences_per_s, run.tokens_per_s, run.gflop_s
        );
    }
    Ok(())
}
