//! Batched decode: B sequences advanced by one forward pass per step, one matmul over B rows
//! instead of B passes over the weights. Each sequence has its own slot of a shared KV cache and
//! its own position; step.wgsl tells the kernels which row belongs where. Sequences join and
//! leave between steps (continuous batching): a step takes any subset of the slots, each row
//! choosing its next token its own way (greedy, or sampled with its own settings and draw).

use crate::gpu::kernels::{self, ArgmaxParams, MAX_BATCH, MAX_TOP, SampleParams, Step};
use crate::gpu::registry::Key;
use crate::plan::{Dim, Dispatch};
use crate::runtime::Model;
use crate::runtime::session::{Pick, Section, Session};
use crate::{Error, Result};

/// B sequences on one model, decoded together. Prefill each with [`Batch::prefill`], then
/// [`Batch::step`] feeds one token per sequence and returns each one's next token from a single
/// forward pass; decode is bound by reading the weights, so B tokens cost little more than one.
/// [`Batch::decode`] is the general step: some of the sequences, each with its own [`Pick`].
///
/// ```
/// # fn main() -> wgpt::Result<()> {
/// # let engine = wgpt::Engine::new(None)?;
/// # let model = wgpt::Model::load(engine, std::path::Path::new("assets/default"), &Default::default())?;
/// # let tokenizer = wgpt::Tokenizer::from_file("assets/default/tokenizer.json".as_ref())?;
/// let prompts = [tokenizer.encode("A slice is")?, tokenizer.encode("Traits let")?];
/// let mut batch = wgpt::Batch::new(&model, prompts.len())?;
/// let mut next: Vec<u32> = (0..prompts.len())
///     .map(|i| batch.prefill(i, &prompts[i]))
///     .collect::<wgpt::Result<_>>()?;
/// for _ in 0..16 {
///     next = batch.step(&next)?; // one forward pass for all sequences
/// }
/// # Ok(()) }
/// ```
pub struct Batch {
    /// Runs the steps, with a KV cache of B slots; its own position and history are those of
    /// the sequence being prefilled.
    session: Session,
    seqs: Vec<Seq>,
    /// The `max(1, top_n)` largest logits of each row: greedy's pick and the candidates.
    argmax: Dispatch,
    top_params: wgpu::Buffer, // ArgmaxParams uniform
    top: wgpu::Buffer,        // (B, 2 N) u32: ids and probability bits
    /// Each sampled row's draw (sample.wgsl, one workgroup per row).
    sample: Dispatch,
    sample_params: wgpu::Buffer, // (MAX_BATCH) SampleParams uniform
    picked: wgpu::Buffer,        // (B, 4) u32: token, threshold, log-prob bits (filtered, model)
    recent: wgpu::Buffer,        // (B, n_ctx) u32: each sampled row's penalty window
    read: wgpu::Buffer,          // (B, 2 N + 4) u32, mappable: top, then picked
    /// Candidates each row reports (0 = none).
    top_n: usize,
}

/// One sequence's place in the batch.
#[derive(Default)]
struct Seq {
    pos: usize,
    history: Vec<u32>,
}

/// One row of a [`Batch::decode`] step: `token` is fed to sequence `seq`, whose next token
/// `pick` chooses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchRow {
    /// The sequence (its KV-cache slot), `0 .. Batch::len()`.
    pub seq: usize,
    /// The token fed to it.
    pub token: u32,
    /// How its next token is chosen.
    pub pick: Pick,
}

/// What one row of a [`Batch::decode`] step chose.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchToken {
    /// The next token.
    pub id: u32,
    /// Its log-probability under the model's own distribution (softmax at temperature 1, after
    /// any repetition penalty, before the sampling filters): what OpenAI's `logprobs` report.
    pub logprob: f32,
    /// The most likely tokens with their probabilities, most likely first, when asked for
    /// ([`Batch::set_top_candidates`]).
    pub top: Vec<(u32, f32)>,
}

impl Batch {
    /// `sequences` empty sequences (at most 64, and as many as the KV cache of one layer can
    /// hold in one binding), each with the model's whole context.
    pub fn new(model: &Model, sequences: usize) -> Result<Batch> {
        Self::with_context(model, sequences, model.config.n_positions)
    }

    /// `sequences` empty sequences of at most `n_ctx` positions each (at most the model's
    /// `n_positions`): a KV cache of `sequences x n_ctx` rows per layer.
    pub fn with_context(model: &Model, sequences: usize, n_ctx: usize) -> Result<Batch> {
        if sequences == 0 || sequences > MAX_BATCH {
            return Err(Error::Input(format!(
                "a batch holds 1 to {MAX_BATCH} sequences, not {sequences}"
            )));
        }
        if model.config.t5.is_some() {
            return Err(Error::Input(
                "batched decoding runs decoder-only models; an encoder-decoder (T5) generates \
                 one source at a time on a Session (Session::encode)"
                    .into(),
            ));
        }
        if n_ctx == 0 || n_ctx > model.config.n_positions {
            return Err(Error::option(
                "Batch::with_context n_ctx",
                n_ctx,
                &format!(
                    "1 to the model's n_positions ({})",
                    model.config.n_positions
                ),
            ));
        }
        let session = Session::with_slots(model, sequences, n_ctx)?;
        let fits = session.t_max.min(session.head_rows);
        if sequences > fits {
            return Err(Error::Limits(format!(
                "{sequences} sequences do not fit one step's scratch buffers (at most {fits}) on this adapter",
            )));
        }
        let gpu = &model.gpu;
        let b = sequences as u64;
        let top = gpu.storage("batch_top", 8 * MAX_TOP as u64 * b);
        let picked = gpu.storage("batch_picked", 16 * b);
        let recent = gpu.storage("batch_recent", 4 * b * n_ctx as u64);
        let top_params = gpu.uniform(
            "batch_top_params",
            &<ArgmaxParams as bytemuck::Zeroable>::zeroed(),
        );
        let sample_params = gpu.uniform_zeroed("batch_sample", kernels::SAMPLE_ROWS_BYTES);
        let act = &session.act;
        let rows = [Dim::Rows, Dim::Fixed(1)];
        let pipe = gpu.registry.get(gpu, &Key::new("argmax", "argmax"));
        let bind = kernels::bind(
            gpu,
            &pipe,
            "batch_argmax",
            &[&top_params, &act.logits, &top],
        );
        let argmax = Dispatch::new(pipe, bind, rows, "argmax");
        let pipe = gpu.registry.get(gpu, &Key::new("sample", "sample"));
        let buffers = [&sample_params, &act.logits, &picked, &recent];
        let bind = kernels::bind(gpu, &pipe, "batch_sample", &buffers);
        let sample = Dispatch::new(pipe, bind, rows, "sample");
        let mut batch = Batch {
            read: gpu.readback("batch_read", (8 * MAX_TOP as u64 + 16) * b),
            seqs: (0..sequences).map(|_| Seq::default()).collect(),
            session,
            argmax,
            top_params,
            top,
            sample,
            sample_params,
            picked,
            recent,
            top_n: 0,
        };
        batch.set_top_candidates(0);
        Ok(batch)
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether the batch has no sequences (never true for a batch built by [`Batch::new`]).
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Positions each sequence's KV cache holds.
    pub fn n_ctx(&self) -> usize {
        self.session.n_ctx()
    }

    /// Tokens in sequence `seq`'s cache.
    pub fn position(&self, seq: usize) -> usize {
        self.seqs.get(seq).map_or(0, |s| s.pos)
    }

    /// Report the `n` most likely next tokens (at most 64) of every row of each
    /// [`Batch::decode`] step; 0 turns it off.
    pub fn set_top_candidates(&mut self, n: usize) {
        let model = &self.session.model;
        self.top_n = n.min(MAX_TOP).min(model.config.vocab_size);
        let p = ArgmaxParams {
            v: model.config.vocab_size as u32,
            n: self.top_n.max(1) as u32,
            _pad: [0; 2],
        };
        (model.gpu.queue).write_buffer(&self.top_params, 0, bytemuck::bytes_of(&p));
    }

    /// Feeds `tokens` to sequence `seq` (after what it holds) and returns its greedy next token.
    pub fn prefill(&mut self, seq: usize, tokens: &[u32]) -> Result<u32> {
        self.with_seq(seq, |s| s.next_token(tokens, Pick::Greedy))
    }

    /// Feeds `tokens` to sequence `seq` without computing logits: a prompt's prefill, in chunks
    /// between decode steps, before its last token joins a [`Batch::decode`] row.
    pub fn feed(&mut self, seq: usize, tokens: &[u32]) -> Result<()> {
        self.with_seq(seq, |s| s.feed(tokens))
    }

    /// Like [`Batch::prefill`], returning the logits of every token, (T, V) row-major.
    pub fn prefill_logits(&mut self, seq: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        self.with_seq(seq, |s| s.logits(tokens))
    }

    /// Empties sequence `seq` (its slot is free for a new sequence).
    pub fn reset(&mut self, seq: usize) {
        if let Some(s) = self.seqs.get_mut(seq) {
            *s = Seq::default();
        }
    }

    /// One token for each sequence (`tokens[i]` to sequence i), one forward pass: each
    /// sequence's greedy next token.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        let rows = self.greedy_rows(tokens)?;
        Ok(self.decode(&rows)?.into_iter().map(|t| t.id).collect())
    }

    /// One greedy row per sequence, `tokens[i]` to sequence i.
    fn greedy_rows(&self, tokens: &[u32]) -> Result<Vec<BatchRow>> {
        if tokens.len() != self.seqs.len() {
            return Err(Error::Input(format!(
                "a batch step takes one token per sequence: {} tokens for {} sequences",
                tokens.len(),
                self.seqs.len()
            )));
        }
        let row = |(seq, &token): (usize, &u32)| BatchRow {
            seq,
            token,
            pick: Pick::Greedy,
        };
        Ok(tokens.iter().enumerate().map(row).collect())
    }

    /// One decode step of the sequences in `rows` (each at most once, in any order), one
    /// forward pass: each row's token is appended to its sequence, and its next token chosen
    /// by its own [`Pick`]. Returns one [`BatchToken`] per row, in the order of `rows`.
    pub fn decode(&mut self, rows: &[BatchRow]) -> Result<Vec<BatchToken>> {
        let b = self.begin_step(rows)?;
        let sampled = self.write_sampling(rows);
        let s = &self.session;
        let gpu = s.model.gpu.clone();
        let n = self.top_n.max(1) as u64;
        let (top_bytes, picked_bytes) = (8 * n * b as u64, 16 * b as u64);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        s.record(&mut enc, Section::Body, b);
        s.record(&mut enc, Section::Head, b);
        // Candidates first: the sampler's repetition penalty edits the logits in place.
        s.record_ops(&mut enc, std::slice::from_ref(&self.argmax), b);
        enc.copy_buffer_to_buffer(&self.top, 0, &self.read, 0, top_bytes);
        if sampled {
            s.record_ops(&mut enc, std::slice::from_ref(&self.sample), b);
            enc.copy_buffer_to_buffer(&self.picked, 0, &self.read, top_bytes, picked_bytes);
        }
        gpu.queue.submit([enc.finish()]);
        let bytes = top_bytes + if sampled { picked_bytes } else { 0 };
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&self.read, bytes)?);
        self.advance(rows);
        let (top, picked) = words.split_at(top_bytes as usize / 4);
        let n = n as usize;
        let out = rows.iter().enumerate().map(|(r, row)| {
            let cands = &top[2 * n * r..2 * n * (r + 1)];
            let cand = |i: usize| (cands[2 * i], f32::from_bits(cands[2 * i + 1]));
            let (id, logprob) = match row.pick {
                Pick::Greedy => (cand(0).0, cand(0).1.ln()),
                Pick::Sample(..) => (picked[4 * r], f32::from_bits(picked[4 * r + 3])),
            };
            let top = (0..self.top_n).map(cand).collect();
            BatchToken { id, logprob, top }
        });
        Ok(out.collect())
    }

    /// [`Batch::step`] returning the logits of every sequence, (B, V) row-major.
    pub fn step_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let rows = self.greedy_rows(tokens)?;
        let b = self.begin_step(&rows)?;
        let gpu = self.session.model.gpu.clone();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.session.record(&mut enc, Section::Body, b);
        gpu.queue.submit([enc.finish()]);
        let logits = self.session.head_logits(b as usize, 0);
        self.advance(&rows);
        logits
    }

    /// Appends each row's token to its sequence (once its step has run).
    fn advance(&mut self, rows: &[BatchRow]) {
        for row in rows {
            let seq = &mut self.seqs[row.seq];
            seq.pos += 1;
            seq.history.push(row.token);
        }
    }

    /// Checks `rows` and writes the step's tokens and uniforms; returns B.
    fn begin_step(&mut self, rows: &[BatchRow]) -> Result<u32> {
        let cfg = &self.session.model.config;
        let n_ctx = self.session.n_ctx();
        if rows.is_empty() || rows.len() > self.seqs.len() {
            return Err(Error::Input(format!(
                "a batch step takes 1 to {} rows, not {}",
                self.seqs.len(),
                rows.len()
            )));
        }
        let mut step = Step {
            batch: 1,
            slot_rows: n_ctx as u32,
            ..Step::new(rows.len() as u32, 0, 0)
        };
        let mut seen = vec![false; self.seqs.len()];
        for (r, row) in rows.iter().enumerate() {
            let Some(seq) = self.seqs.get(row.seq) else {
                return Err(Error::Input(format!(
                    "sequence {} is not in the batch (it has {})",
                    row.seq,
                    self.seqs.len()
                )));
            };
            if std::mem::replace(&mut seen[row.seq], true) {
                return Err(Error::Input(format!(
                    "sequence {} appears twice in one batch step",
                    row.seq
                )));
            }
            if row.token as usize >= cfg.vocab_size {
                return Err(Error::Input(format!(
                    "token id {} is outside the vocabulary (vocab_size = {})",
                    row.token, cfg.vocab_size
                )));
            }
            if seq.pos >= n_ctx {
                return Err(Error::ContextFull {
                    needed: seq.pos + 1,
                    n_ctx,
                });
            }
            if let Pick::Sample(s, _) = row.pick {
                s.validate()?;
            }
            step.pos[r] = seq.pos as u32;
            step.slots[r] = row.seq as u32;
        }
        let b = rows.len() as u32;
        let tokens: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let (act, queue) = (&self.session.act, &self.session.model.gpu.queue);
        queue.write_buffer(&act.tokens, 0, bytemuck::cast_slice(&tokens));
        queue.write_buffer(&act.body_step, 0, bytemuck::bytes_of(&step));
        queue.write_buffer(&act.head_step, 0, bytemuck::bytes_of(&Step::new(b, 0, 0)));
        Ok(b)
    }

    /// Writes each row's sampling settings and penalty window; whether any row samples.
    fn write_sampling(&self, rows: &[BatchRow]) -> bool {
        let model = &self.session.model;
        let (v, n_ctx) = (model.config.vocab_size, self.session.n_ctx());
        let mut params = vec![<SampleParams as bytemuck::Zeroable>::zeroed(); rows.len()];
        let mut any = false;
        for (r, row) in rows.iter().enumerate() {
            let Pick::Sample(s, u) = row.pick else {
                continue;
            };
            // The window holds the token being fed, as a single session's does.
            let history = &self.seqs[row.seq].history;
            let mut window = history[history.len().saturating_sub(s.repeat_window)..].to_vec();
            window.push(row.token);
            let window = &window[window.len().saturating_sub(s.repeat_window)..];
            let recent0 = r * n_ctx;
            let at = 4 * recent0 as u64;
            (model.gpu.queue).write_buffer(&self.recent, at, bytemuck::cast_slice(window));
            params[r] = SampleParams::new(v, &s, u, recent0, window.len());
            any = true;
        }
        if any {
            let bytes = bytemuck::cast_slice(&params);
            model.gpu.queue.write_buffer(&self.sample_params, 0, bytes);
        }
        any
    }

    /// Runs `f` on the session as sequence `seq` (its slot, position and history).
    fn with_seq<T>(&mut self, seq: usize, f: impl FnOnce(&mut Session) -> Result<T>) -> Result<T> {
        let n = self.seqs.len();
        let Some(state) = self.seqs.get_mut(seq) else {
            return Err(Error::Input(format!(
                "sequence {seq} is not in the batch (it has {n})"
            )));
        };
        let s = &mut self.session;
        s.slot = seq as u32;
        s.pos = state.pos;
        s.history = std::mem::take(&mut state.history);
        let out = f(s);
        state.pos = s.pos;
        state.history = std::mem::take(&mut s.history);
        out
    }
}
