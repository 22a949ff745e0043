//! `wgpt-demo`: a desktop window (egui / eframe) on the same wgpu device as the model. Type a
//! prompt and watch the text stream in token by token, the likeliest next tokens at each step, and
//! what each token attends to, layer by layer and head by head. With a model that has a chat
//! template the box holds your turn: the conversation is rendered by the template, the reply
//! ends at the end-of-turn token and joins the conversation ("New chat" forgets it).
//!
//! Generation runs on a worker thread that owns the [`Session`]; the window drains its events
//! each frame and never waits on the GPU, so rendering does not stall generation (nor the other
//! way round). Attention weights come from the session's debug path
//! ([`Session::set_attention_capture`]), on only while the attention panel is shown.
//!
//! `cargo run --release --features demo --bin wgpt-demo [-- --model DIR]`; for a scripted run:
//! `--prompt TEXT --screenshot out.png --after-tokens N` starts at once, saves a PNG of the window
//! once N tokens have arrived, and quits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Parser;
use eframe::egui::{self, Color32, RichText, Sense, Stroke, Vec2};
use wgpt::{
    ChatTemplate, Engine, GenerateOptions, Generator, LoadOptions, Message, Model, ModelSource,
    Sampling, Session, Tokenizer,
};

#[derive(Parser)]
#[command(name = "wgpt-demo", version, about = "wgpt's desktop demo window")]
struct Cli {
    /// A Hugging Face decoder folder (GPT-2, OPT, XGLM, Llama, Mistral, Qwen2, Phi-3) or a GGUF
    /// file. Default: the small model embedded in the binary.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Start with this prompt (and run it at once when --screenshot is given).
    #[arg(long, short)]
    prompt: Option<String>,
    /// Save a PNG of the window here once --after-tokens tokens have arrived, then quit.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Tokens to wait for before the screenshot.
    #[arg(long, default_value_t = 24)]
    after_tokens: usize,
    /// Tokens per run.
    #[arg(long, short = 'n', default_value_t = 64)]
    max_tokens: usize,
    /// Sampler seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Window size in logical pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800")]
    size: String,
    /// The system turn of a chat (models with a chat template).
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// Continue text even when the model has a chat template.
    #[arg(long)]
    raw: bool,
}

/// A request to the worker.
struct Job {
    /// Text to continue, or a conversation rendered by the chat template.
    prompt: String,
    /// `prompt` is a rendered conversation: the template wrote its special tokens.
    rendered: bool,
    opts: GenerateOptions,
    top: usize,
    attention: bool,
}

/// The demo's chat mode: a conversation rendered anew by the model's template each turn.
struct Chat {
    template: ChatTemplate,
    /// The system turn, then the user and assistant turns so far.
    messages: Vec<Message>,
    /// The user turn of the run in progress, added with the reply when it ends.
    asked: Option<String>,
    /// The ids that end a reply.
    eos: Vec<u32>,
    /// Chat (on) or plain text continuation (off).
    on: bool,
}

/// What the worker reports, in order.
enum Event {
    /// The prompt, tokenized: (id, text) per token.
    Prompt(Vec<(u32, String)>),
    /// A generated token with its text, log-probability and the candidates it was drawn from.
    Token {
        id: Option<u32>,
        piece: String,
        logprob: Option<f32>,
        top: Vec<(String, f32)>,
    },
    /// Attention of query positions `from..` over keys: rows[q][layer][head] -> weights.
    Attention {
        from: usize,
        rows: Vec<Vec<Vec<Vec<f32>>>>,
    },
    /// The run ended: decode tokens/s, why, and the generated text.
    Done {
        decode_tok_s: f64,
        why: String,
        text: String,
    },
    /// The run failed.
    Failed(String),
}

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off,wgpu_core=error"),
    )
    .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if cli.max_tokens == 0 {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    if cli.screenshot.is_some() && cli.prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
        anyhow::bail!("--screenshot needs a --prompt to run");
    }
    let (w, h) = cli
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<f32>().ok()?, h.parse::<f32>().ok()?)))
        .context("--size must look like 1280x800")?;
    // Everything that can be wrong with the model folder is found before a window opens.
    let source = match &cli.model {
        Some(d) => ModelSource::dir(d)?,
        None => ModelSource::from_arg(None)?,
    };
    let config = source.config()?;
    if config.t5.is_some() {
        anyhow::bail!(
            "{} is an encoder-decoder (T5); the demo continues text with decoder-only models: \
             use wgpt generate --model {} --prompt SOURCE",
            source.describe(),
            source.describe()
        );
    }
    let tokenizer = source.tokenizer()?;
    let weights = source.open()?;
    let template = match cli.raw {
        true => None,
        false => source.chat_template()?,
    };
    let chat = template.map(|t| {
        let eos = wgpt::chat::end_of_turn_ids(&t, &tokenizer, &config.eos_token_ids);
        let system = cli.system.as_deref().map(Message::system);
        Chat {
            template: t,
            messages: system.into_iter().collect(),
            asked: None,
            eos,
            on: true,
        }
    });
    if chat.is_none() && cli.system.is_some() {
        anyhow::bail!(
            "{} has no chat template: leave out --system",
            source.describe()
        );
    }
    log::info!("{}: {}", source.describe(), config.describe());

    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([w, h])
            .with_title("wgpt demo"),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: wgpu_options(),
        ..Default::default()
    };
    let error: Arc<Mutex<Option<String>>> = Arc::default();
    let error2 = error.clone();
    let result = eframe::run_native(
        "wgpt demo",
        options,
        Box::new(move |cc| {
            let rs = cc
                .wgpu_render_state
                .as_ref()
                .ok_or("eframe started without its wgpu renderer")?;
            // One device for the window and the model.
            let gpu = Engine::from_device(rs.device.clone(), rs.queue.clone())?;
            let model = weights.upload(gpu, config, &LoadOptions::default())?;
            drop(weights);
            Ok(Box::new(DemoApp::new(
                cc, model, tokenizer, cli, chat, error2,
            )?))
        }),
    );
    if let Some(e) = error.lock().ok().and_then(|e| e.clone()) {
        anyhow::bail!(e);
    }
    result.map_err(|e| anyhow::anyhow!("{e}"))
}

/// eframe's device, asked for the limits wgpt's kernels need (the adapter's own, which include
/// them on any adapter wgpt runs on).
fn wgpu_options() -> eframe::egui_wgpu::WgpuConfiguration {
    use eframe::egui_wgpu::{WgpuSetup, WgpuSetupCreateNew};
    let mut setup = WgpuSetupCreateNew::without_display_handle();
    setup.device_descriptor = Arc::new(|adapter: &wgpu::Adapter| wgpu::DeviceDescriptor {
        label: Some("wgpt-demo"),
        required_limits: adapter.limits(),
        ..Default::default()
    });
    eframe::egui_wgpu::WgpuConfiguration {
        wgpu_setup: WgpuSetup::CreateNew(setup),
        ..Default::default()
    }
}

/// One token of the text shown.
struct Tok {
    text: String,
    id: u32,
    generated: bool,
    logprob: Option<f32>,
}

struct DemoApp {
    jobs: Sender<Job>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    prompt: String,
    sampling: Sampling,
    max_tokens: usize,
    seed: u64,
    top_n: usize,
    show_attention: bool,
    layer: usize,
    /// `None`: the average over heads.
    head: Option<usize>,
    /// The query whose attention is shown; `None` follows the latest token.
    pinned: Option<usize>,
    n_layer: usize,
    n_head: usize,
    n_ctx: usize,
    model_name: String,
    adapter: String,
    // The run shown.
    tokens: Vec<Tok>,
    top: Vec<(String, f32)>,
    /// attention[q][layer][head] -> weights over keys 0..=q.
    attention: Vec<Vec<Vec<Vec<f32>>>>,
    running: bool,
    started: Option<Instant>,
    first_token: Option<Instant>,
    generated: usize,
    status: String,
    // Frame rate while generating.
    frames: Vec<Instant>,
    // Scripted screenshot.
    screenshot: Option<PathBuf>,
    shot_requested: bool,
    after_tokens: usize,
    shot_done: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    /// With a chat template.
    chat: Option<Chat>,
}

impl DemoApp {
    fn new(
        cc: &eframe::CreationContext,
        model: Model,
        tokenizer: Tokenizer,
        cli: Cli,
        chat: Option<Chat>,
        error: Arc<Mutex<Option<String>>>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let (event_tx, events) = std::sync::mpsc::channel::<Event>();
        let cfg = model.config.clone();
        let adapter = format!("{} ({:?})", model.gpu.info.name, model.gpu.info.backend);
        let session = Session::new(&model)?;
        let ctx = cc.egui_ctx.clone();
        std::thread::Builder::new()
            .name("wgpt-generate".into())
            .spawn(move || worker(model, session, tokenizer, job_rx, event_tx, ctx))?;
        cc.egui_ctx.set_visuals(egui::Visuals::dark());
        let mut app = DemoApp {
            jobs,
            events,
            cancel: Arc::new(AtomicBool::new(false)),
            prompt: cli.prompt.clone().unwrap_or_else(|| match chat {
                Some(_) => "Why is the sky blue?".into(),
                None => "The borrow checker".into(),
            }),
            sampling: Sampling {
                temperature: 0.7,
                top_k: 40,
                repeat_penalty: 1.2,
                ..Default::default()
            },
            max_tokens: cli.max_tokens.min(cfg.n_positions - 1),
            seed: cli.seed,
            top_n: 10,
            show_attention: true,
            layer: cfg.n_layer - 1,
            head: None,
            pinned: None,
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_ctx: cfg.n_positions,
            model_name: cfg.describe(),
            adapter,
            tokens: Vec::new(),
            top: Vec::new(),
            attention: Vec::new(),
            running: false,
            started: None,
            first_token: None,
            generated: 0,
            status: "type a prompt and press Generate (or Ctrl+Enter)".into(),
            frames: Vec::new(),
            screenshot: cli.screenshot.clone(),
            shot_requested: false,
            after_tokens: cli.after_tokens.max(1),
            shot_done: Arc::new(AtomicBool::new(false)),
            error,
            chat,
        };
        if app.screenshot.is_some() {
            app.start();
        }
        Ok(app)
    }

    /// Starts a run of the prompt (cancelling any in progress).
    fn start(&mut self) {
        if self.prompt.trim().is_empty() {
            self.status = "the prompt is empty: type some text first".into();
            return;
        }
        self.cancel.store(true, Ordering::SeqCst);
        self.cancel = Arc::new(AtomicBool::new(false));
        let mut opts = GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: self.sampling,
            seed: self.seed,
            cancel: Some(self.cancel.clone()),
            ..Default::default()
        };
        let (prompt, rendered) = match self.chat.as_mut().filter(|c| c.on) {
            Some(chat) => {
                let mut messages = chat.messages.clone();
                messages.push(Message::user(&self.prompt));
                let text = match chat.template.render(&messages, true) {
                    Ok(t) => t,
                    Err(e) => {
                        self.status = format!("error: {e}");
                        return;
                    }
                };
                chat.asked = Some(self.prompt.clone());
                opts.eos_token_ids = Some(chat.eos.clone());
                (text, true)
            }
            None => (self.prompt.clone(), false),
        };
        let job = Job {
            prompt,
            rendered,
            opts,
            top: self.top_n,
            attention: self.show_attention,
        };
        self.tokens.clear();
        self.top.clear();
        self.attention.clear();
        self.pinned = None;
        self.generated = 0;
        self.running = true;
        self.started = Some(Instant::now());
        self.first_token = None;
        self.frames.clear();
        self.status = "prefill...".into();
        if self.jobs.send(job).is_err() {
            self.status = "the generation thread has stopped".into();
            self.running = false;
        }
    }

    /// Takes in what the worker reported since the last frame.
    fn drain(&mut self) {
        loop {
            let ev = match self.events.try_recv() {
                Ok(ev) => ev,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    if self.running {
                        self.status = "the generation thread has stopped".into();
                        self.running = false;
                    }
                    return;
                }
            };
            match ev {
                Event::Prompt(toks) => {
                    self.tokens = toks
                        .into_iter()
                        .map(|(id, text)| Tok {
                            text,
                            id,
                            generated: false,
                            logprob: None,
                        })
                        .collect();
                }
                Event::Token {
                    id,
                    piece,
                    logprob,
                    top,
                } => {
                    let Some(id) = id else {
                        // The text held back at the end (an incomplete character).
                        if let Some(last) = self.tokens.last_mut() {
                            last.text.push_str(&piece);
                        }
                        continue;
                    };
                    self.first_token.get_or_insert_with(Instant::now);
                    self.generated += 1;
                    self.tokens.push(Tok {
                        text: piece,
                        id,
                        generated: true,
                        logprob,
                    });
                    self.top = top;
                    self.status = format!("{} tokens", self.generated);
                }
                Event::Attention { from, rows } => {
                    self.attention.truncate(from);
                    self.attention.extend(rows);
                }
                Event::Done {
                    decode_tok_s,
                    why,
                    text,
                } => {
                    self.running = false;
                    // A chat turn ends: the exchange joins the conversation, the box empties.
                    let asked = self.chat.as_mut().and_then(|c| c.asked.take());
                    if let (Some(chat), Some(asked)) = (&mut self.chat, asked) {
                        chat.messages.push(Message::user(&asked));
                        chat.messages.push(Message::assistant(&text));
                        self.prompt.clear();
                    }
                    self.status = format!(
                        "{} tokens, {decode_tok_s:.1} tok/s decode ({why})",
                        self.generated
                    );
                }
                Event::Failed(e) => {
                    self.running = false;
                    self.status = format!("error: {e}");
                }
            }
        }
    }

    /// Live tokens/s since the first generated token.
    fn tok_s(&self) -> f64 {
        match self.first_token {
            Some(t) if self.generated > 1 => {
                (self.generated - 1) as f64 / t.elapsed().as_secs_f64().max(1e-9)
            }
            _ => 0.0,
        }
    }

    fn fps(&self) -> f64 {
        match (self.frames.first(), self.frames.last()) {
            (Some(a), Some(b)) if self.frames.len() > 2 => {
                (self.frames.len() - 1) as f64 / (*b - *a).as_secs_f64().max(1e-9)
            }
            _ => 0.0,
        }
    }

    /// The attention row shown: query position, weights over keys.
    fn attention_row(&self) -> Option<(usize, Vec<f32>)> {
        let q = self
            .pinned
            .filter(|&q| q < self.attention.len())
            .or(self.attention.len().checked_sub(1))?;
        Some((q, self.weights(q)?))
    }

    /// The weights of query `q` in the selected layer and head (or the heads' average).
    fn weights(&self, q: usize) -> Option<Vec<f32>> {
        let heads = self.attention.get(q)?.get(self.layer)?;
        match self.head {
            Some(h) => heads.get(h).cloned(),
            None => {
                let mut avg = vec![0.0; q + 1];
                for row in heads {
                    avg.iter_mut().zip(row).for_each(|(a, w)| *a += w);
                }
                let n = heads.len().max(1) as f32;
                avg.iter_mut().for_each(|a| *a /= n);
                Some(avg)
            }
        }
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        if let Some(chat) = &mut self.chat {
            ui.heading("Chat");
            ui.checkbox(&mut chat.on, "chat with the model's template")
                .on_hover_text("off: the box's text is continued as it is");
            let turns = chat.messages.iter().filter(|m| m.role == "user").count();
            ui.horizontal(|ui| {
                ui.label(format!("{turns} turns so far"));
                if ui.button("New chat").clicked() {
                    chat.messages.retain(|m| m.role == "system");
                }
            });
            ui.separator();
        }
        ui.heading("Sampling");
        let s = &mut self.sampling;
        ui.add(egui::Slider::new(&mut s.temperature, 0.0..=2.0).text("temperature"));
        ui.add(egui::Slider::new(&mut s.top_k, 0..=200).text("top-k (0 = all)"));
        ui.add(egui::Slider::new(&mut s.top_p, 0.05..=1.0).text("top-p"));
        ui.add(egui::Slider::new(&mut s.min_p, 0.0..=0.5).text("min-p"));
        ui.add(egui::Slider::new(&mut s.repeat_penalty, 1.0..=2.0).text("repeat penalty"));
        ui.add(egui::Slider::new(&mut self.max_tokens, 1..=self.n_ctx - 1).text("max tokens"));
        ui.add(egui::Slider::new(&mut self.top_n, 1..=20).text("candidates shown"));
        ui.horizontal(|ui| {
            ui.label("seed");
            ui.add(egui::DragValue::new(&mut self.seed));
        });
        ui.label(
            RichText::new("(settings apply to the next run)")
                .small()
                .weak(),
        );
        ui.separator();
        ui.heading("Attention");
        ui.checkbox(&mut self.show_attention, "record and show attention")
            .on_hover_text(
                "a debug readback of every layer's queries and keys; off, it costs nothing",
            );
        ui.add_enabled_ui(self.show_attention, |ui| {
            ui.add(egui::Slider::new(&mut self.layer, 0..=self.n_layer - 1).text("layer"));
            ui.horizontal_wrapped(|ui| {
                ui.label("head");
                if ui.selectable_label(self.head.is_none(), "avg").clicked() {
                    self.head = None;
                }
                for h in 0..self.n_head {
                    if ui
                        .selectable_label(self.head == Some(h), h.to_string())
                        .clicked()
                    {
                        self.head = Some(h);
                    }
                }
            });
            ui.label(
                RichText::new(
                    "Click a token in the text to see what it attended to; click again to follow \
                     the newest token.",
                )
                .small()
                .weak(),
            );
        });
        ui.separator();
        ui.label(RichText::new(&self.model_name).small().weak());
        ui.label(RichText::new(&self.adapter).small().weak());
    }

    /// The text, one chip per token (alternating shades make the boundaries visible); with a
    /// query selected, each earlier token is tinted by the attention it gets.
    fn text(&mut self, ui: &mut egui::Ui) {
        let row = self.attention_row();
        let max_w = row
            .as_ref()
            .map(|(_, w)| w.iter().cloned().fold(0.0, f32::max))
            .unwrap_or(1.0)
            .max(1e-6);
        let mut clicked = None;
        ui.spacing_mut().item_spacing = Vec2::new(1.0, 3.0);
        ui.horizontal_wrapped(|ui| {
            for (i, t) in self.tokens.iter().enumerate() {
                let base = match (t.generated, i % 2) {
                    (false, 0) => Color32::from_rgb(48, 52, 64),
                    (false, _) => Color32::from_rgb(60, 66, 80),
                    (true, 0) => Color32::from_rgb(34, 58, 48),
                    (true, _) => Color32::from_rgb(44, 74, 60),
                };
                let (bg, fg) = match &row {
                    Some((q, w)) if i <= *q => {
                        let a = (w[i] / max_w).sqrt();
                        let bg = lerp(base, Color32::from_rgb(255, 140, 0), a);
                        (
                            bg,
                            if a > 0.6 {
                                Color32::BLACK
                            } else {
                                Color32::WHITE
                            },
                        )
                    }
                    _ => (base, Color32::from_gray(220)),
                };
                let shown = t.text.replace('\n', "\\n").replace('\t', "\\t");
                let mut text = RichText::new(if shown.is_empty() { "·" } else { &shown })
                    .monospace()
                    .size(15.0)
                    .background_color(bg)
                    .color(fg);
                if row.as_ref().is_some_and(|(q, _)| *q == i) {
                    text = text.underline().strong();
                }
                let resp = ui
                    .add(egui::Label::new(text).sense(Sense::click()))
                    .on_hover_ui(|ui| {
                        ui.label(format!("position {i}, id {}: {:?}", t.id, t.text));
                        if let Some(lp) = t.logprob {
                            ui.label(format!("p = {:.3} when sampled", lp.exp()));
                        }
                        match &row {
                            Some((q, w)) if i <= *q => {
                                ui.label(format!("attention from position {q}: {:.3}", w[i]));
                            }
                            _ => {}
                        }
                    });
                if resp.clicked() {
                    clicked = Some(i);
                }
                if t.text.contains('\n') {
                    ui.end_row();
                }
            }
        });
        if let Some(i) = clicked {
            self.pinned = if self.pinned == Some(i) {
                None
            } else {
                Some(i)
            };
        }
    }

    /// Bars of the likeliest next tokens at the newest step.
    fn candidates(&self, ui: &mut egui::Ui) {
        ui.heading("Next-token probabilities");
        if self.top.is_empty() {
            ui.label(RichText::new("(none yet)").weak());
            return;
        }
        let width = ui.available_width();
        let label_w = 110.0;
        for (piece, p) in &self.top {
            ui.horizontal(|ui| {
                ui.add_sized(
                    [label_w, 18.0],
                    egui::Label::new(RichText::new(format!("{piece:?}")).monospace()).truncate(),
                );
                let bar_w = (width - label_w - 60.0).max(20.0);
                let (rect, _) = ui.allocate_exact_size(Vec2::new(bar_w, 16.0), Sense::hover());
                let painter = ui.painter();
                painter.rect_filled(rect, 2.0, Color32::from_gray(40));
                let mut fill = rect;
                fill.set_width(rect.width() * p.clamp(0.0, 1.0));
                painter.rect_filled(fill, 2.0, Color32::from_rgb(80, 160, 255));
                ui.label(RichText::new(format!("{:.1}%", 100.0 * p)).monospace());
            });
        }
    }

    /// The attention heatmap: rows are query tokens, columns the tokens they attend to (only
    /// earlier ones: causal), for the selected layer and head; the shown row is outlined.
    fn heatmap(&mut self, ui: &mut egui::Ui) {
        let head = self
            .head
            .map_or("average of heads".into(), |h| format!("head {h}"));
        ui.heading(format!("Attention: layer {}, {head}", self.layer));
        let n = self.attention.len();
        if !self.show_attention {
            ui.label(RichText::new("(off: tick \"record and show attention\", then run)").weak());
            return;
        }
        if n == 0 {
            ui.label(RichText::new("(run a prompt)").weak());
            return;
        }
        let side = ui
            .available_width()
            .min(ui.available_height() - 8.0)
            .max(60.0);
        let (resp, painter) = ui.allocate_painter(Vec2::splat(side), Sense::click());
        let rect = resp.rect;
        painter.rect_filled(rect, 0.0, Color32::from_gray(16));
        let cell = side / n as f32;
        let shown = self.attention_row().map(|(q, _)| q);
        for q in 0..n {
            let Some(w) = self.weights(q) else { continue };
            let m = w.iter().cloned().fold(0.0, f32::max).max(1e-6);
            for (k, &x) in w.iter().enumerate() {
                let r = egui::Rect::from_min_size(
                    rect.min + Vec2::new(k as f32 * cell, q as f32 * cell),
                    Vec2::splat(cell.max(1.0)),
                );
                let a = (x / m).sqrt();
                painter.rect_filled(
                    r,
                    0.0,
                    lerp(Color32::from_gray(24), Color32::from_rgb(255, 140, 0), a),
                );
            }
        }
        if let Some(q) = shown {
            let r = egui::Rect::from_min_size(
                rect.min + Vec2::new(0.0, q as f32 * cell),
                Vec2::new((q + 1) as f32 * cell, cell.max(1.0)),
            );
            painter.rect_stroke(
                r,
                0.0,
                Stroke::new(1.5, Color32::WHITE),
                egui::StrokeKind::Outside,
            );
        }
        if let Some(pos) = resp.hover_pos() {
            let q = ((pos.y - rect.min.y) / cell) as usize;
            let k = ((pos.x - rect.min.x) / cell) as usize;
            if q < n && k <= q {
                let w = self.weights(q).map_or(0.0, |w| w[k]);
                let name = |i: usize| {
                    self.tokens
                        .get(i)
                        .map_or(String::new(), |t| format!("{:?}", t.text))
                };
                resp.clone().on_hover_text(format!(
                    "{} (position {q}) -> {} (position {k}): {w:.3}",
                    name(q),
                    name(k)
                ));
                if resp.clicked() {
                    self.pinned = Some(q);
                }
            }
        }
    }
}

fn lerp(a: Color32, b: Color32, t: f32) -> Color32 {
    let t = t.clamp(0.0, 1.0);
    let m = |x: u8, y: u8| (x as f32 + (y as f32 - x as f32) * t) as u8;
    Color32::from_rgb(m(a.r(), b.r()), m(a.g(), b.g()), m(a.b(), b.b()))
}

impl eframe::App for DemoApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.drain();
        let ctx = ui.ctx().clone();
        if self.running {
            self.frames.push(Instant::now());
            if self.frames.len() > 120 {
                self.frames.remove(0);
            }
            // The worker wakes the window per token; this keeps tokens/s ticking between them.
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
        egui::Panel::left("controls")
            .default_size(270.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.controls(ui));
            });
        egui::Panel::bottom("status").show(ui, |ui| {
            ui.horizontal(|ui| {
                let rate = if self.running || self.generated > 1 {
                    format!("{:.1} tok/s", self.tok_s())
                } else {
                    String::new()
                };
                ui.label(RichText::new(rate).strong().monospace());
                ui.separator();
                ui.label(&self.status);
                if self.running {
                    ui.separator();
                    ui.label(RichText::new(format!("UI {:.0} fps", self.fps())).weak());
                }
            });
        });
        egui::Panel::right("insight")
            .default_size(420.0)
            .show(ui, |ui| {
                self.candidates(ui);
                ui.separator();
                self.heatmap(ui);
            });
        egui::CentralPanel::default().show(ui, |ui| {
            ui.horizontal(|ui| {
                let edit = ui.add(
                    egui::TextEdit::multiline(&mut self.prompt)
                        .desired_rows(2)
                        .desired_width(ui.available_width() - 110.0)
                        .hint_text(match self.chat.as_ref().is_some_and(|c| c.on) {
                            true => "your message",
                            false => "a prompt",
                        }),
                );
                let go = ctx.input(|i| i.modifiers.command && i.key_pressed(egui::Key::Enter));
                ui.vertical(|ui| {
                    if self.running {
                        if ui.button("Stop").clicked() {
                            self.cancel.store(true, Ordering::SeqCst);
                        }
                    } else if ui.button("Generate").clicked() || (go && edit.has_focus()) {
                        self.start();
                    }
                });
            });
            ui.separator();
            egui::ScrollArea::vertical()
                .stick_to_bottom(true)
                .show(ui, |ui| self.text(ui));
        });
        // A scripted screenshot: once enough tokens are in, grab the next frame and quit.
        if let Some(path) = self.screenshot.clone() {
            let ready =
                self.generated >= self.after_tokens || (!self.running && self.generated > 0);
            if ready && !self.shot_requested {
                self.shot_requested = true;
                let done = self.shot_done.clone();
                let error = self.error.clone();
                let ctx2 = ctx.clone();
                ctx.request_screenshot(move |image| {
                    if let Err(e) = save_png(&path, &image) {
                        if let Ok(mut slot) = error.lock() {
                            *slot = Some(format!("cannot save {}: {e:#}", path.display()));
                        }
                    } else {
                        eprintln!("wrote {}", path.display());
                    }
                    done.store(true, Ordering::SeqCst);
                    ctx2.request_repaint();
                });
                ctx.request_repaint();
            }
            if self.shot_done.load(Ordering::SeqCst) {
                self.cancel.store(true, Ordering::SeqCst);
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
        }
    }

    fn on_exit(&mut self) {
        // Closed mid-generation: stop the worker between tokens; it exits when the job channel
        // closes with the app.
        self.cancel.store(true, Ordering::SeqCst);
    }
}

fn save_png(path: &std::path::Path, image: &egui::ColorImage) -> Result<()> {
    let [w, h] = image.size;
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::High);
    let mut writer = enc.write_header()?;
    let rgb: Vec<u8> = image
        .pixels
        .iter()
        .flat_map(|p| [p.r(), p.g(), p.b()])
        .collect();
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(())
}

/// The generation thread: runs jobs one at a time on its session, reporting events.
fn worker(
    model: Model,
    mut session: Session,
    tok: Tokenizer,
    jobs: Receiver<Job>,
    events: Sender<Event>,
    ctx: egui::Context,
) {
    let send = |ev: Event| {
        let ok = events.send(ev).is_ok();
        ctx.request_repaint();
        ok
    };
    while let Ok(job) = jobs.recv() {
        // A newer job queued behind this one replaces it.
        let mut job = job;
        while let Ok(newer) = jobs.try_recv() {
            job = newer;
        }
        let result = run_job(&model, &mut session, &tok, &job, &send);
        let ok = match result {
            Ok(()) => true,
            Err(e) => send(Event::Failed(format!("{e:#}"))),
        };
        if !ok {
            return; // the window is gone
        }
    }
}

fn run_job(
    model: &Model,
    session: &mut Session,
    tok: &Tokenizer,
    job: &Job,
    send: &dyn Fn(Event) -> bool,
) -> Result<()> {
    let ids = match job.rendered {
        true => tok.encode_plain(&job.prompt)?,
        false => tok.encode(&job.prompt)?,
    };
    if ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let n_ctx = session.n_ctx();
    if ids.len() >= n_ctx {
        anyhow::bail!(
            "the prompt is {} tokens; the context holds {n_ctx}",
            ids.len()
        );
    }
    let mut opts = job.opts.clone();
    opts.max_tokens = opts.max_tokens.min(n_ctx + 1 - ids.len());
    session.reset();
    session.set_attention_capture(job.attention);
    session.set_top_candidates(job.top);
    let pieces = ids
        .iter()
        .map(|&id| (id, tok.decode(&[id]).unwrap_or_default()))
        .collect();
    if !send(Event::Prompt(pieces)) {
        return Ok(());
    }
    let cfg = &model.config;
    let mut sent = 0;
    let mut generator = Generator::new(session, Some(tok), &ids, &opts)?;
    while let Some(ev) = generator.next() {
        let ev = ev?;
        // Attention rows of every position the model has run so far and not yet reported.
        let s = generator.session();
        let n = s.attention_positions();
        if n > sent {
            let mut rows = Vec::with_capacity(n - sent);
            for q in sent..n {
                let mut layers = Vec::with_capacity(cfg.n_layer);
                for l in 0..cfg.n_layer {
                    let heads = (0..cfg.n_head)
                        .map(|h| s.attention_weights(l, h, q))
                        .collect::<wgpt::Result<Vec<_>>>()?;
                    layers.push(heads);
                }
                rows.push(layers);
            }
            if !send(Event::Attention { from: sent, rows }) {
                return Ok(());
            }
            sent = n;
        }
        let id = ev.id;
        let top = ev
            .top
            .iter()
            .map(|&(id, p)| (tok.decode(&[id]).unwrap_or_default(), p))
            .collect();
        if !send(Event::Token {
            id,
            piece: ev.piece,
            logprob: ev.logprob,
            top,
        }) {
            return Ok(());
        }
    }
    let g = generator.into_generation();
    send(Event::Done {
        decode_tok_s: g.decode_tok_s(),
        why: format!("{:?}", g.stopped_by).to_lowercase(),
        text: g.text.clone(),
    });
    Ok(())
}
