//! `wgpt serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of one decoder,
//! whose requests are decoded together by the loop in engine.rs, and optionally one encoder
//! for /v1/embeddings.

mod api;
mod engine;
mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use wgpt::{Batch, EncoderModel, Engine, LoadOptions, ModelSource, Tokenizer};

use crate::{ModelArgs, progress_bar};

#[derive(clap::Args)]
#[command(after_help = "\
Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
POST /v1/embeddings. --model may also be an encoder folder (BERT family): embeddings only.
Example:
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'")]
pub struct ServeArgs {
    /// The model (--model): a decoder for chat and completions, or an encoder folder (BERT
    /// family) to serve /v1/embeddings alone.
    #[command(flatten)]
    model: ModelArgs,
    /// An encoder folder (e.g. all-MiniLM-L6-v2) or cached hub id for /v1/embeddings, next to
    /// the decoder.
    #[arg(long)]
    embedding_model: Option<PathBuf>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the /v1 endpoints.
    #[arg(long, env = "WGPT_API_KEY")]
    api_key: Option<String>,
    /// The model's id in the API (default: the folder or file name).
    #[arg(long)]
    alias: Option<String>,
    /// Requests decoded together, each holding a KV-cache slot (continuous batching).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Positions of context per request (default: the model's, at most 4096, as many as the
    /// adapter's KV-cache binding holds for --parallel slots).
    #[arg(long)]
    ctx: Option<usize>,
    /// Requests that may wait for a slot; past that, new ones get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
}

/// What the handlers share.
pub struct AppState {
    decoder: Option<Decoder>,
    encoder: Option<(String, EncoderModel)>,
    api_key: Option<String>,
    /// Unix time the server started (the models' `created`).
    created: u64,
}

/// The decoder's side: requests go to the decode loop through `jobs`.
struct Decoder {
    id: String,
    slots: usize,
    stats: Arc<engine::Stats>,
    jobs: mpsc::Sender<engine::Job>,
    tokenizer: Tokenizer,
    template: Option<wgpt::ChatTemplate>,
    /// Ids that end a chat reply (the template's end of turn) and a completion (the model's EOS).
    chat_eos: Vec<u32>,
    eos: Vec<u32>,
    n_ctx: usize,
    vocab_size: usize,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let gpu = Engine::new(a.model.adapter.as_deref())?;
    let opts = LoadOptions {
        dtype: a.model.dtype,
        layout: a.model.layout,
        progress: Some(progress_bar()),
        ..Default::default()
    };
    let encoder_first = (a.model.model.as_deref()).and_then(|m| wgpt::hub::model_dir(m).ok());
    let encoder_first = encoder_first.filter(|d| wgpt::encoder::is_encoder_dir(d));
    let cancel = Arc::new(AtomicBool::new(false));
    let (decoder, engine) = match encoder_first {
        Some(_) => (None, None),
        None => {
            let (d, e) = start_decoder(&a, gpu.clone(), &opts, cancel.clone())?;
            (Some(d), Some(e))
        }
    };
    let embedding = encoder_first.or(a.embedding_model.clone());
    let encoder = match &embedding {
        Some(dir) => {
            let model = EncoderModel::load(gpu.clone(), dir, &opts)
                .with_context(|| format!("cannot load the embedding model {}", dir.display()))?;
            let id = match (&decoder, &a.alias) {
                (None, Some(alias)) => alias.clone(),
                _ => model_id(dir),
            };
            Some((id, model))
        }
        None => None,
    };
    let state = Arc::new(AppState {
        decoder,
        encoder,
        api_key: a.api_key.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(listen(&a, state, cancel, gpu))?;
    if let Some(engine) = engine {
        let _ = engine.join();
    }
    Ok(())
}

/// Loads the decoder, starts its decode loop on a thread of its own.
fn start_decoder(
    a: &ServeArgs,
    gpu: Arc<Engine>,
    opts: &LoadOptions,
    cancel: Arc<AtomicBool>,
) -> Result<(Decoder, std::thread::JoinHandle<()>)> {
    let source = ModelSource::from_arg(a.model.model.as_deref())?;
    let config = source.config()?;
    if config.t5.is_some() {
        bail!(
            "{} is an encoder-decoder (T5): wgpt serve batches decoder-only models; run it \
             with wgpt generate --model {} --prompt SOURCE",
            source.describe(),
            source.describe()
        );
    }
    let tokenizer = source.tokenizer()?;
    let template = source.chat_template()?;
    let model = source.load(gpu, opts)?;
    let slots = a.parallel as usize;
    let fits = model.max_kv_rows() / slots;
    let n_ctx = match a.ctx {
        Some(n) => n,
        None => config.n_positions.min(4096).min(fits),
    };
    if n_ctx == 0 {
        bail!("{slots} KV-cache slots do not fit this adapter's largest binding: lower --parallel");
    }
    let mut batch = Batch::with_context(&model, slots, n_ctx).map_err(|e| {
        anyhow::anyhow!("{e}\nhint: lower --ctx (at most {fits} here) or --parallel")
    })?;
    engine::warm_up(&mut batch)?;
    let chat_eos = match &template {
        Some(t) => wgpt::chat::end_of_turn_ids(t, &tokenizer, &config.eos_token_ids),
        None => config.eos_token_ids.clone(),
    };
    let (jobs, rx) = mpsc::channel(a.queue.max(1));
    let engine_tok = tokenizer.clone();
    let stats = Arc::new(engine::Stats::default());
    let engine_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("wgpt-decode".into())
        .spawn(move || engine::run(batch, engine_tok, rx, cancel, engine_stats))
        .context("cannot start the decode thread")?;
    eprintln!(
        "serving {} ({}) with {slots} slots of {n_ctx} positions on {} ({:?})",
        source.describe(),
        model.weight_formats(),
        model.gpu.info.name,
        model.gpu.info.backend
    );
    let decoder = Decoder {
        id: a.alias.clone().unwrap_or_else(|| match &a.model.model {
            Some(m) => model_id(m),
            None => "wgpt-default".into(),
        }),
        slots,
        stats,
        jobs,
        tokenizer,
        template,
        chat_eos,
        eos: config.eos_token_ids.clone(),
        n_ctx,
        vocab_size: config.vocab_size,
    };
    Ok((decoder, thread))
}

/// A model's id in the API: its folder's or file's name (a hub id as given).
fn model_id(arg: &Path) -> String {
    let s = arg.to_string_lossy();
    if wgpt::hub::is_hub_id(&s) {
        return s.into_owned();
    }
    let name = arg.file_stem().or(arg.file_name());
    name.map_or(s.to_string(), |n| n.to_string_lossy().into_owned())
}

/// Binds, serves until Ctrl-C, then lets in-flight requests finish (a second Ctrl-C cancels
/// them).
async fn listen(
    a: &ServeArgs,
    state: Arc<AppState>,
    cancel: Arc<AtomicBool>,
    gpu: Arc<Engine>,
) -> Result<()> {
    let addr = format!("{}:{}", a.host, a.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is the port taken? try --port)"))?;
    let local = listener.local_addr()?;
    let ids: Vec<&str> = (state.decoder.iter().map(|d| d.id.as_str()))
        .chain(state.encoder.iter().map(|e| e.0.as_str()))
        .collect();
    eprintln!(
        "listening on http://{local} (models: {}; {})",
        ids.join(", "),
        gpu.info.name
    );
    let app = routes::router(state);
    let mut signals = StopSignals::new()?;
    let shutdown = async move {
        signals.next().await;
        eprintln!("shutting down: finishing in-flight requests (Ctrl-C again cancels them)");
        tokio::spawn(async move {
            signals.next().await;
            eprintln!("cancelling in-flight requests");
            cancel.store(true, Ordering::Relaxed);
        });
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the server failed")?;
    eprintln!("stopped");
    Ok(())
}

/// Ctrl-C, or (on Unix) SIGTERM, as service managers and containers stop a server. One
/// listener for the server's life, so that one signal is seen once.
struct StopSignals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind| signal(kind).context("cannot listen for Ctrl-C");
            Ok(StopSignals {
                int: listen(SignalKind::interrupt())?,
                term: listen(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
