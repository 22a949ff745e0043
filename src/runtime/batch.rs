//! Batched decode: B sequences advanced by one forward pass per step, one matmul over B rows
//! instead of B passes over the weights. Each sequence has its own slot of a shared KV cache and
//! its own position; step.wgsl tells the kernels which row belongs where.

use crate::gpu::kernels::{self, ArgmaxParams, MAX_BATCH, Step};
use crate::gpu::registry::Key;
use crate::plan::{Dim, Dispatch};
use crate::runtime::Model;
use crate::runtime::session::{Pick, Section, Session};
use crate::{Error, Result};

/// B sequences on one model, decoded together (greedy). Prefill each with
/// [`Batch::prefill`], then [`Batch::step`] feeds one token per sequence and returns each one's
/// next token from a single forward pass; decode is bound by reading the weights, so B tokens
/// cost little more than one.
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
    /// Greedy pick over B rows of logits, into `ids`.
    argmax: Dispatch,
    ids: wgpu::Buffer,      // (B, 2) u32: token, probability bits
    ids_read: wgpu::Buffer, // (B, 2) u32, mappable
}

/// One sequence's place in the batch.
#[derive(Default)]
struct Seq {
    pos: usize,
    history: Vec<u32>,
}

impl Batch {
    /// `sequences` empty sequences (at most 64, and as many as the KV cache of one layer can
    /// hold in one binding).
    pub fn new(model: &Model, sequences: usize) -> Result<Batch> {
        if sequences == 0 || sequences > MAX_BATCH {
            return Err(Error::Input(format!(
                "a batch holds 1 to {MAX_BATCH} sequences, not {sequences}"
            )));
        }
        let session = Session::with_slots(model, sequences, model.config.n_positions)?;
        if sequences > session.t_max.min(session.head_rows) {
            return Err(Error::Limits(format!(
                "{sequences} sequences do not fit one step's scratch buffers (at most {}) on this adapter",
                session.t_max.min(session.head_rows)
            )));
        }
        let gpu = &model.gpu;
        let ids = gpu.storage("batch_ids", 8 * sequences as u64);
        let greedy = ArgmaxParams {
            v: model.config.vocab_size as u32,
            n: 1,
            _pad: [0; 2],
        };
        let pipe = gpu.registry.get(gpu, &Key::new("argmax", "argmax"));
        let uniform = gpu.uniform("batch_argmax", &greedy);
        let bind = kernels::bind(
            gpu,
            &pipe,
            "batch_argmax",
            &[&uniform, &session.act.logits, &ids],
        );
        let argmax = Dispatch::new(pipe, bind, [Dim::Rows, Dim::Fixed(1)], "argmax");
        Ok(Batch {
            ids_read: gpu.readback("batch_ids_read", 8 * sequences as u64),
            ids,
            argmax,
            seqs: (0..sequences).map(|_| Seq::default()).collect(),
            session,
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether the batch has no sequences (never true for a batch built by [`Batch::new`]).
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Tokens in sequence `seq`'s cache.
    pub fn position(&self, seq: usize) -> usize {
        self.seqs.get(seq).map_or(0, |s| s.pos)
    }

    /// Feeds `tokens` to sequence `seq` (after what it holds) and returns its greedy next token.
    pub fn prefill(&mut self, seq: usize, tokens: &[u32]) -> Result<u32> {
        self.with_seq(seq, |s| s.next_token(tokens, Pick::Greedy))
    }

    /// Like [`Batch::prefill`], returning the logits of every token, (T, V) row-major.
    pub fn prefill_logits(&mut self, seq: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        self.with_seq(seq, |s| s.logits(tokens))
    }

    /// Empties sequence `seq`.
    pub fn reset(&mut self, seq: usize) {
        if let Some(s) = self.seqs.get_mut(seq) {
            *s = Seq::default();
        }
    }

    /// One token for each sequence (`tokens[i]` to sequence i), one forward pass: each
    /// sequence's greedy next token.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        let b = self.begin_step(tokens)?;
        let s = &self.session;
        let gpu = s.model.gpu.clone();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        s.record(&mut enc, Section::Body, b);
        s.record(&mut enc, Section::Head, b);
        s.record_ops(&mut enc, std::slice::from_ref(&self.argmax), b);
        enc.copy_buffer_to_buffer(&self.ids, 0, &self.ids_read, 0, 8 * b as u64);
        gpu.queue.submit([enc.finish()]);
        let words: Vec<u32> =
            bytemuck::pod_collect_to_vec(&gpu.read(&self.ids_read, 8 * b as u64)?);
        self.end_step(tokens);
        Ok(words.iter().step_by(2).copied().collect())
    }

    /// [`Batch::step`] returning the logits of every sequence, (B, V) row-major.
    pub fn step_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let b = self.begin_step(tokens)?;
        let gpu = self.session.model.gpu.clone();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.session.record(&mut enc, Section::Body, b);
        gpu.queue.submit([enc.finish()]);
        let logits = self.session.head_logits(b as usize, 0);
        self.end_step(tokens);
        logits
    }

    /// Checks `tokens` and writes the step's uniforms; returns B.
    fn begin_step(&mut self, tokens: &[u32]) -> Result<u32> {
        let cfg = &self.session.model.config;
        if tokens.len() != self.seqs.len() {
            return Err(Error::Input(format!(
                "a batch step takes one token per sequence: {} tokens for {} sequences",
                tokens.len(),
                self.seqs.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary (vocab_size = {})",
                cfg.vocab_size
            )));
        }
        if let Some(full) = self.seqs.iter().position(|s| s.pos >= cfg.n_positions) {
            return Err(Error::ContextFull {
                needed: self.seqs[full].pos + 1,
                n_ctx: cfg.n_positions,
            });
        }
        let b = tokens.len() as u32;
        let mut step = Step {
            batch: 1,
            slot_rows: cfg.n_positions as u32,
            ..Step::new(b, 0, 0)
        };
        for (p, s) in step.pos.iter_mut().zip(&self.seqs) {
            *p = s.pos as u32;
        }
        let (act, queue) = (&self.session.act, &self.session.model.gpu.queue);
        queue.write_buffer(&act.tokens, 0, bytemuck::cast_slice(tokens));
        queue.write_buffer(&act.body_step, 0, bytemuck::bytes_of(&step));
        queue.write_buffer(&act.head_step, 0, bytemuck::bytes_of(&Step::new(b, 0, 0)));
        Ok(b)
    }

    fn end_step(&mut self, tokens: &[u32]) {
        for (s, &t) in self.seqs.iter_mut().zip(tokens) {
            s.pos += 1;
            s.history.push(t);
        }
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
