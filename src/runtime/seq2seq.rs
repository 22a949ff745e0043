//! An encoder-decoder's source side on a [`Session`]: the encoder's plan over the session's own
//! scratch buffers, and the cross-attention caches it fills (one per decoder layer, VRAM) for
//! the decoder's plan to read. [`Session::encode`] runs it once per source; the decoder then
//! runs as any decoder does, from the start token, with the same sampling and streaming.

use crate::gpu::kernels::Step;
use crate::graph::Act;
use crate::plan::{self, Bucket, CrossIo, Io, Plan};
use crate::runtime::Model;
use crate::runtime::session::Session;
use crate::{Error, Result};

/// The encoder's pass and what it writes. Shapes: T = the session's t_max (the longest source).
pub(super) struct EncoderPass {
    plan: Plan,
    step: wgpu::Buffer, // Step uniform: rows = source length, positions from 0
    row_spans: wgpu::Buffer, // (T) (0, source length): one packed sequence
    seq_spans: wgpu::Buffer, // (1) (0, source length)
    pub(super) cross: CrossIo,
    /// Source tokens in the cross caches (0 before the first [`Session::encode`]).
    pub(super) source_len: usize,
    /// The longest source one pass takes.
    pub(super) max_source: usize,
}

/// The cross-attention caches of `model`'s decoder layers, `rows` source rows each, in the
/// layout its other caches use.
pub(super) fn cross_caches(model: &Model, rows: usize) -> CrossIo {
    CrossIo {
        kv: super::session::kv_cache(model, ["cross_k", "cross_v"], rows),
        span: model.gpu.storage("cross_span", 16),
    }
}

impl EncoderPass {
    /// The encoder's graph planned over `io` (the decoder's buffers: the encoder runs before
    /// the decoder does, so they are free; its self-attention's keys and values use the
    /// decoder's layer-0 cache rows), with its own step, spans and `kv_rows` (T, 2 NKV HS).
    pub(super) fn new(model: &Model, mut io: Io, kv_rows: wgpu::Buffer, t_max: usize) -> Self {
        let gpu = &model.gpu;
        let step = gpu.uniform("encoder_step", &Step::default());
        let row_spans = gpu.storage("encoder_row_spans", (8 * t_max) as u64);
        let seq_spans = gpu.storage("encoder_seq_spans", 16);
        io.steps = [step.clone(), step.clone()];
        io.spans = Some([row_spans.clone(), seq_spans.clone()]);
        io.acts.insert(Act::Kv, kv_rows);
        let graph = crate::families::t5::encoder_graph(&model.config, &model.weights);
        EncoderPass {
            plan: Plan::new(gpu, &graph, model.caps, model.fusions, &io),
            step,
            row_spans,
            seq_spans,
            cross: io
                .cross
                .clone()
                .expect("an encoder-decoder's Io has cross caches"),
            source_len: 0,
            max_source: t_max,
        }
    }
}

impl Session {
    /// Reads `source` (token ids, with the `</s>` the tokenizer appends) with the encoder of an
    /// encoder-decoder model (T5) and keeps each decoder layer's cross-attention keys and
    /// values in VRAM; the session then starts over, ready for the decoder's start token
    /// ([`crate::t5::T5Config::decoder_start_token_id`]). One forward pass of the encoder, one
    /// submission; nothing is read back.
    ///
    /// ```
    /// # fn main() -> wgpt::Result<()> {
    /// let dir = std::path::Path::new("tests/fixtures/t5/t5-v1_0"); // a tiny random T5
    /// let model = wgpt::Model::load(wgpt::Engine::new(None)?, dir, &Default::default())?;
    /// let tokenizer = wgpt::Tokenizer::from_dir(dir)?;
    /// let mut session = wgpt::Session::new(&model)?;
    /// session.encode(&tokenizer.encode("translate English to German: Hello.")?)?;
    /// let start = model.config.t5.as_ref().map_or(0, |t5| t5.decoder_start_token_id);
    /// let opts = wgpt::GenerateOptions { max_tokens: 8, ..Default::default() };
    /// let out = wgpt::generate_ids(&mut session, Some(&tokenizer), &[start], &opts, |_| {})?;
    /// assert!(!out.ids.is_empty() && out.prompt_ids == [start]);
    /// # Ok(()) }
    /// ```
    pub fn encode(&mut self, source: &[u32]) -> Result<()> {
        let Some(max_source) = self.encoder.as_ref().map(|e| e.max_source) else {
            return Err(Error::Input(
                "Session::encode is for encoder-decoder models (T5); this model is a decoder: \
                 feed its prompt with Session::submit or Session::feed"
                    .into(),
            ));
        };
        let cfg = &self.model.config;
        if source.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if let Some(&id) = source.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: cfg.vocab_size,
            });
        }
        if source.len() > max_source {
            return Err(Error::Input(format!(
                "the source is {} tokens; the encoder reads at most {max_source} in one pass (the \
                 session's context and the adapter's largest binding)",
                source.len(),
            )));
        }
        self.reset();
        let pass = self.encoder.as_ref().expect("checked above");
        let t = source.len() as u32;
        let gpu = self.model.gpu.clone();
        let q = &gpu.queue;
        q.write_buffer(&self.act.tokens, 0, bytemuck::cast_slice(source));
        q.write_buffer(&pass.step, 0, bytemuck::bytes_of(&Step::new(t, 0, 0)));
        let spans: Vec<[u32; 2]> = vec![[0, t]; source.len()];
        q.write_buffer(&pass.row_spans, 0, bytemuck::cast_slice(&spans));
        q.write_buffer(&pass.seq_spans, 0, bytemuck::cast_slice(&spans[..1]));
        q.write_buffer(&pass.cross.span, 0, bytemuck::cast_slice(&spans[..1]));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        plan::record(
            &mut enc,
            &pass.plan.body[Bucket::of(t) as usize],
            t,
            1,
            None,
        );
        q.submit([enc.finish()]);
        if let Some(pass) = &mut self.encoder {
            pass.source_len = source.len();
        }
        gpu.check()
    }

    /// The source tokens the decoder attends to (0 before [`Session::encode`], and for
    /// decoder-only models).
    pub fn source_len(&self) -> usize {
        self.encoder.as_ref().map_or(0, |e| e.source_len)
    }

    /// Dispatches of one encoder pass over `rows` source tokens (0 for decoder-only models).
    pub fn encoder_dispatches(&self, rows: usize) -> usize {
        let bucket = Bucket::of(rows.max(1) as u32) as usize;
        self.encoder
            .as_ref()
            .map_or(0, |e| e.plan.body[bucket].len())
    }
}
