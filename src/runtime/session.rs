//! One sequence being generated: its KV cache (VRAM), scratch activations, the bind groups that
//! tie them to the model's weights (built once, here), and the forward pass recorded into one
//! command encoder per step.

use std::collections::HashMap;

use crate::gpu::kernels::{self, ArgmaxParams, MAX_TOP, SampleParams, Step};
use crate::gpu::registry::Key;
use crate::graph::Act;
use crate::plan::{self, Bucket, Caps, Dim, Dispatch, Io, KvCache, Plan, Rule};
use crate::runtime::Model;
use crate::runtime::sampler::Sampling;
use crate::{Error, Result};

/// Most tokens one forward pass takes (llama.cpp's default micro-batch): longer prompts run in
/// steps of this many. The scratch activations are sized by it, not by the context, so a
/// session's memory beyond its KV cache does not grow with n_ctx.
pub const MAX_STEP_ROWS: usize = 512;

/// Most rows of logits one head pass writes ([`Session::logits`] reads longer inputs' in
/// passes of this many): V floats each.
const MAX_HEAD_ROWS: usize = 64;

/// How the next token is chosen from the last position's logits, on the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pick {
    /// The most likely token.
    Greedy,
    /// Sample with these settings; `u` in [0, 1) picks the point on the filtered CDF.
    Sample(Sampling, f32),
}

/// Scratch buffers for one step of up to `t_max` tokens. Shapes use T = t_max.
pub(super) struct Activations {
    pub(super) tokens: wgpu::Buffer, // (T) u32
    pub(super) x: wgpu::Buffer,      // (T, C) residual stream
    pub(super) ln: wgpu::Buffer,     // (T, C) layernorm output
    pub(super) qkv: wgpu::Buffer,    // (T, (NH + 2 NKV) HS)
    pub(super) att_y: wgpu::Buffer,  // (T, NH HS) attention output, heads side by side
    pub(super) fc_h: wgpu::Buffer,   // (T, n_inner) MLP hidden
    /// A gated feed-forward's gate and up projections, (T, 2 n_inner).
    pub(super) gate_up: Option<wgpu::Buffer>,
    pub(super) lnf: wgpu::Buffer, // (head_rows, C) final layernorm of the rows the head sees
    pub(super) logits: wgpu::Buffer,
    /// With embedding projections: token embeddings before project_in, (T, E).
    pub(super) emb: Option<wgpu::Buffer>,
    /// With embedding projections: project_out(ln_f(x)), the head's input, (head_rows, E).
    pub(super) proj: Option<wgpu::Buffer>, // (head_rows, V)
    /// An encoder-decoder's cross-attention queries (T, NH HS), and its encoder output's keys
    /// and values for the cross caches (T, 2 NKV HS).
    pub(super) cross: Option<[wgpu::Buffer; 2]>,
    pub(super) token: wgpu::Buffer, // (4) u32: chosen token, sampler threshold, log-prob bits
    pub(super) partials: wgpu::Buffer, // (ceil(V / 32), 2) u32: the head's argmax candidates
    pub(super) token_read: wgpu::Buffer, // (4 + 2 MAX_TOP) u32, mappable: token, then candidates
    pub(super) top: wgpu::Buffer,   // (2 MAX_TOP) u32: candidate ids and probability bits
    pub(super) top_params: wgpu::Buffer, // TopParams uniform
    pub(super) recent: wgpu::Buffer, // (n_ctx) u32: the repetition penalty's window
    pub(super) logits_read: Option<wgpu::Buffer>, // (head_rows, V), mappable, made on first use
    pub(super) body_step: wgpu::Buffer, // Step uniform for embed and blocks
    pub(super) head_step: wgpu::Buffer, // Step uniform for ln_f and the head
    pub(super) sample: wgpu::Buffer, // SampleParams uniform
    /// (T, C): a linear layer's result before its residual add, where the epilogue rule is off.
    pub(super) tmp: Option<wgpu::Buffer>,
    /// Input textures of the linear layers, when they read textures (see matmul_texture.wgsl).
    textures: Option<InputTextures>,
}

/// The linear layers' inputs as textures, filled by a copy before each layer.
struct InputTextures {
    /// The residual stream x, copied in for layernorm_rows_texture (multi-row steps).
    x: wgpu::Texture, // (T, C)
    c: wgpu::Texture, // (T, C): ln (and att_y when NH HS = C)
    /// (T, NH HS): att_y, when its width is not C.
    att_y: Option<wgpu::Texture>,
    inner: wgpu::Texture, // (T, n_inner): fc_h
    head: wgpu::Texture,  // (head_rows, C): lnf
    /// With embedding projections: (T, E) for emb, and (head_rows, E) for proj.
    words: Option<(wgpu::Texture, wgpu::Texture)>,
}

/// One sequence in progress on a [`Model`]: its KV cache (L layers of (n_ctx, NKV HS) keys and
/// values, in VRAM), scratch activations for one step (as many tokens as fit the adapter's
/// largest binding, up to n_ctx; longer inputs run in several steps), and every bind group of
/// the forward pass, built once. A step brings back only the chosen token id (4 bytes);
/// [`submit`](Session::submit) / [`poll`](Session::poll) let the CPU work meanwhile.
pub struct Session {
    pub(super) model: Model,
    /// Owned here; the bind groups reference it.
    kv: KvCache,
    pub(super) act: Activations,
    /// The model's graph lowered for this session's buffers: the body (embed and blocks, run
    /// on the step's T tokens) and the head (the final norm and the output projection, on the
    /// head's rows), per bucket.
    pub(super) plan: Plan,
    /// Greedy: the largest logit, or (rule head_argmax) the largest of decode's candidates.
    argmax: Dispatch,
    sample: Dispatch,
    /// The `top_n` most likely tokens.
    top_op: Dispatch,
    /// Tokens already in the KV cache.
    pub(super) pos: usize,
    /// Those tokens' ids, for the repetition penalty.
    pub(super) history: Vec<u32>,
    last_logprob: Option<f32>,
    /// The same token's log-probability under the model's own distribution.
    model_logprob: Option<f32>,
    /// How many top candidates each step reports (0 = none), and the last step's.
    top_n: usize,
    candidates: Vec<(u32, f32)>,
    /// Most tokens one forward pass takes (longer inputs run in chunks).
    pub(super) t_max: usize,
    /// Most logits rows one head pass writes.
    pub(super) head_rows: usize,
    /// The submitted step whose token has not been collected.
    pub(super) pending: Option<PendingStep>,
    /// The KV-cache slot this sequence uses (0, except inside a [`crate::Batch`]).
    pub(super) slot: u32,
    /// Positions its KV cache holds (n_positions unless [`Session::with_context`]).
    n_ctx: usize,
    /// The attention debug path, when on (see capture.rs).
    pub(super) capture: Option<super::capture::Capture>,
    /// An encoder-decoder's encoder pass and cross-attention caches.
    pub(super) encoder: Option<super::seq2seq::EncoderPass>,
}

/// A step in flight: its token (and log-probability, candidates) are being read back.
pub(super) struct PendingStep {
    read: crate::gpu::PendingRead,
    sampled: bool,
    top_n: usize,
}

impl Session {
    /// A new, empty sequence on `model`: allocates its KV cache and scratch buffers and builds
    /// every bind group of the forward pass, once.
    pub fn new(model: &Model) -> Result<Self> {
        Self::with_slots(model, 1, model.config.n_positions)
    }

    /// A session whose KV cache holds only `n_ctx` positions (at most the model's
    /// `n_positions`): less GPU memory, for a long-context model on a small adapter or many
    /// sessions at once. Generation with [`crate::GenerateOptions::context_shift`] shifts
    /// within this window.
    pub fn with_context(model: &Model, n_ctx: usize) -> Result<Self> {
        let max = model.config.n_positions;
        if n_ctx == 0 || n_ctx > max {
            return Err(Error::Input(format!(
                "a session context of {n_ctx} positions: it must be 1 to the model's n_positions ({max})"
            )));
        }
        Self::with_slots(model, 1, n_ctx)
    }

    /// A session whose KV cache has room for `slots` sequences of `n_ctx` positions (see
    /// [`crate::Batch`]).
    pub(super) fn with_slots(model: &Model, slots: usize, n_ctx: usize) -> Result<Self> {
        model
            .gpu
            .scoped(|| Self::allocate(model.clone(), slots, n_ctx))
    }

    fn allocate(model: Model, slots: usize, n_ctx: usize) -> Result<Self> {
        let model = &model;
        let gpu = &model.gpu;
        let cfg = &model.config;
        let (c, v, inner) = (cfg.n_embd, cfg.vocab_size, cfg.n_inner);
        let (q_w, kv_w, qkv_w) = (cfg.q_width(), cfg.kv_width(), cfg.qkv_width());
        let maxb = model.max_chunk_bytes as usize;
        let cache_rows = slots * n_ctx;
        let max_rows = model.max_kv_rows();
        if cache_rows > max_rows {
            let layer = 2 * cache_rows as u64 * kv_w as u64 * 4;
            return Err(Error::Limits(format!(
                "a KV cache for {slots} sequence(s) of {n_ctx} positions needs {cache_rows} rows \
                 ({layer} bytes of keys and values) per layer, the adapter allows {max_rows} rows in \
                 one binding; use a smaller context (Session::with_context, at most {}), fewer \
                 sequences, or another adapter",
                max_rows / slots.max(1)
            )));
        }
        let t_max = n_ctx
            .min(MAX_STEP_ROWS)
            .min(maxb / (4 * cfg.fc_rows().max(qkv_w).max(c)));
        let head_rows = t_max.min(MAX_HEAD_ROWS).min(maxb / (4 * v));
        if head_rows == 0 {
            return Err(Error::Limits(format!(
                "one row of logits ({v} floats) does not fit the adapter's largest binding ({maxb} bytes)"
            )));
        }
        let f = |n: usize| (n * 4) as u64;
        let kv = kv_cache(model, ["k_cache", "v_cache"], cache_rows);
        // The linear layers' inputs; gemv_texture binds them as uniforms.
        let linear_input = |name: &str, bytes: u64| match model.texture_linear {
            true => gpu.storage_uniform(name, bytes),
            false => gpu.storage(name, bytes),
        };
        let act = Activations {
            tokens: gpu.storage("tokens", f(t_max)),
            // Post-LN blocks feed x itself to c_attn.
            x: linear_input("x", f(t_max * c)),
            ln: linear_input("ln", f(t_max * c)),
            qkv: gpu.storage("qkv", f(t_max * qkv_w)),
            att_y: linear_input("att_y", f(t_max * q_w)),
            fc_h: linear_input("fc_h", f(t_max * inner)),
            gate_up: cfg
                .gated
                .then(|| gpu.storage("gate_up", f(t_max * 2 * inner))),
            lnf: linear_input("lnf", f(head_rows * c)),
            logits: gpu.storage("logits", f(head_rows * v)),
            token: gpu.storage("token", 16),
            partials: gpu.storage("partials", 8 * cfg.vocab_size.div_ceil(32) as u64),
            token_read: gpu.readback("token_read", 16 + 8 * MAX_TOP as u64),
            top: gpu.storage("top", 8 * MAX_TOP as u64),
            top_params: gpu.uniform(
                "top_params",
                &ArgmaxParams {
                    v: v as u32,
                    n: 0,
                    _pad: [0; 2],
                },
            ),
            recent: gpu.storage("recent", f(n_ctx)),
            logits_read: None,
            textures: model.texture_linear.then(|| InputTextures {
                x: gpu.texture("x_texture", t_max, c),
                c: gpu.texture("ln_texture", t_max, c),
                att_y: (q_w != c).then(|| gpu.texture("att_y_texture", t_max, q_w)),
                inner: gpu.texture("fc_h_texture", t_max, inner),
                head: gpu.texture("lnf_texture", head_rows, c),
                words: cfg.projects_embeddings().then(|| {
                    let e = cfg.word_embed_dim;
                    (
                        gpu.texture("emb_texture", t_max, e),
                        gpu.texture("proj_texture", head_rows, e),
                    )
                }),
            }),
            emb: cfg
                .projects_embeddings()
                .then(|| linear_input("emb", f(t_max * cfg.word_embed_dim))),
            proj: cfg
                .projects_embeddings()
                .then(|| linear_input("proj", f(head_rows * cfg.word_embed_dim))),
            cross: cfg.t5.is_some().then(|| {
                [
                    gpu.storage("cross_q", f(t_max * q_w)),
                    gpu.storage("cross_kv_rows", f(t_max * 2 * kv_w)),
                ]
            }),
            body_step: gpu.uniform("body_step", &Step::default()),
            head_step: gpu.uniform("head_step", &Step::default()),
            sample: gpu.uniform_zeroed("sample", kernels::SAMPLE_ROWS_BYTES),
            tmp: (!model.fusions.has(Rule::Epilogue)).then(|| gpu.storage("tmp", f(t_max * c))),
        };
        let cross = cfg
            .t5
            .is_some()
            .then(|| super::seq2seq::cross_caches(model, t_max));
        let io = || Io {
            cross: cross.clone(),
            ..act.io(model, &kv)
        };
        let caps = Caps {
            batched: slots > 1,
            ..model.caps
        };
        let plan = Plan::new(gpu, &model.graph(), caps, model.fusions, &io());
        let encoder = (act.cross.as_ref()).map(|[_, kv_rows]| {
            super::seq2seq::EncoderPass::new(model, io(), kv_rows.clone(), t_max)
        });
        let (argmax, sample, top_op) = pick_ops(model, &act, plan.head_argmax);
        gpu.check()?;
        Ok(Session {
            model: model.clone(),
            kv,
            act,
            plan,
            argmax,
            sample,
            top_op,
            pos: 0,
            history: Vec::new(),
            last_logprob: None,
            model_logprob: None,
            top_n: 0,
            candidates: Vec::new(),
            t_max,
            head_rows,
            pending: None,
            slot: 0,
            n_ctx,
            capture: None,
            encoder,
        })
    }

    /// The model this session runs on.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The context length: the model's n_positions, or the session's own (see
    /// [`Session::with_context`]).
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Tokens in the KV cache: the position the next token will take.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// A second session continuing from this one's state: its own KV cache, with this one's
    /// cached positions copied GPU-side (no recompute), so a conversation can branch. Costs one
    /// session's allocation plus a copy of `position()` rows per layer.
    pub fn fork(&self) -> Result<Session> {
        if self.pending.is_some() {
            return Err(Error::SessionState(
                "cannot fork while a step is in flight: collect its token first",
            ));
        }
        let mut other = Session::with_slots(&self.model, 1, self.n_ctx)?;
        let gpu = &self.model.gpu;
        let c = self.model.config.kv_width() as u64;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        copy_cache(&mut enc, &self.kv, &other.kv, self.pos, c * 4);
        if let (Some(from), Some(to)) = (&self.encoder, &mut other.encoder) {
            copy_cache(
                &mut enc,
                &from.cross.kv,
                &to.cross.kv,
                from.source_len,
                c * 4,
            );
            enc.copy_buffer_to_buffer(&from.cross.span, 0, &to.cross.span, 0, 16);
            to.source_len = from.source_len;
        }
        gpu.queue.submit([enc.finish()]);
        other.pos = self.pos;
        other.history = self.history.clone();
        other.set_top_candidates(self.top_n);
        gpu.check()?;
        Ok(other)
    }

    /// Forgets the sequence (and any step in flight); the cache is reused, not reallocated.
    pub fn reset(&mut self) {
        // The readback buffer must be unmapped before it is used again.
        if self.pending.is_some() {
            let _ = self.collect(true);
            self.pending = None;
        }
        self.pos = 0;
        self.history.clear();
        self.capture_reset();
    }

    /// Forgets every position from `pos` on, keeping the cache before it: the sequence continues
    /// from there (a chat whose re-rendered history differs from the tokens generated, a
    /// rejected draft). The cache rows after `pos` are overwritten by the next steps.
    pub fn truncate(&mut self, pos: usize) -> Result<()> {
        if self.pending.is_some() {
            return Err(Error::SessionState(
                "cannot truncate while a step is in flight: collect its token first",
            ));
        }
        if pos < self.pos {
            self.pos = pos;
            self.history.truncate(pos);
            // The attention history kept for capture is of the old positions.
            self.capture_reset();
        }
        Ok(())
    }

    /// Dispatches per forward step with one token (body + head + pick).
    pub fn dispatches_per_token(&self) -> usize {
        let decode = Bucket::Decode as usize;
        self.plan.body[decode].len() + self.plan.head[decode].len() + 1
    }

    /// What a greedy step of `rows` tokens records, in order: each dispatch's kernel family,
    /// with `copy` where an activation is copied into a texture first (the body on `rows` rows,
    /// the head and the argmax on one). For reading a plan and A/B runs of its fusions.
    pub fn kernels(&self, rows: usize) -> Vec<&'static str> {
        let rows = rows.max(1) as u32;
        let ops = (self.ops(Section::Body, rows).iter())
            .chain(self.ops(Section::Head, 1))
            .chain([&self.argmax]);
        ops.flat_map(|op| {
            op.copy
                .as_ref()
                .map(|_| "copy")
                .into_iter()
                .chain([op.name])
        })
        .collect()
    }

    /// Bytes of GPU memory this session allocated: KV cache and scratch buffers.
    pub fn gpu_bytes(&self) -> u64 {
        let a = &self.act;
        let scratch = [
            &a.tokens, &a.x, &a.ln, &a.qkv, &a.att_y, &a.fc_h, &a.lnf, &a.logits, &a.token,
        ]
        .into_iter()
        .chain(a.gate_up.iter())
        .chain(a.emb.iter())
        .chain(a.proj.iter())
        .chain(a.cross.iter().flatten())
        .map(|b| b.size())
        .sum::<u64>()
            + a.logits_read.as_ref().map_or(0, |b| b.size());
        let cfg = &self.model.config;
        // An encoder-decoder's cross caches: its decoder layers' keys and values of a source.
        let sources = self.encoder.as_ref().map_or(0, |e| e.max_source);
        scratch + (2 * cfg.n_layer * (self.n_ctx + sources) * cfg.kv_width() * 4) as u64
    }

    /// Runs one greedy step of `tokens` with each dispatch in its own timed compute pass and
    /// returns GPU seconds per kernel family, summed, in first-use order. `None` when the device
    /// has no timestamp queries. The step counts like any other (the tokens enter the cache).
    pub fn profile_step(&mut self, tokens: &[u32]) -> Result<Option<Vec<(&'static str, f64)>>> {
        let gpu = self.model.gpu.clone();
        if !gpu
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Ok(None);
        }
        let rows = self.run_body_chunks(tokens)? as u32;
        self.write_head_step(1, rows as usize - 1);
        let ops: Vec<(&Dispatch, u32)> = (self.ops(Section::Body, rows).iter().map(|o| (o, rows)))
            .chain(self.ops(Section::Head, 1).iter().map(|o| (o, 1)))
            .chain(std::iter::once((&self.argmax, 1)))
            .collect();
        let n = (2 * ops.len()) as u32;
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: n,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile"),
            size: n as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = gpu.readback("profile_read", n as u64 * 8);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for (i, (op, r)) in ops.iter().enumerate() {
            if let Some((buf, tex)) = &op.copy {
                plan::copy_rows_to_texture(&mut enc, buf, tex, *r);
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            op.run(&mut pass, *r, 1);
        }
        enc.resolve_query_set(&set, 0..n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, n as u64 * 8);
        gpu.queue.submit([enc.finish()]);
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&gpu.read(&read, n as u64 * 8)?);
        let names: Vec<&'static str> = ops.iter().map(|(op, _)| op.name).collect();
        self.pos += rows as usize;
        let period_s = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            let s = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_s;
            match out.iter_mut().find(|(k, _)| *k == name) {
                Some(e) => e.1 += s,
                None => out.push((name, s)),
            }
        }
        Ok(Some(out))
    }

    /// Runs `tokens` through the model (appending them to the cache) and returns the next token,
    /// chosen on the GPU: only its id (and, when sampling, its log-probability) is read back.
    /// Blocks until the GPU is done; [`Session::submit`] and [`Session::poll`] do the same
    /// without blocking.
    pub fn next_token(&mut self, tokens: &[u32], pick: Pick) -> Result<u32> {
        self.submit(tokens, pick)?;
        self.wait()
    }

    /// Records and submits the step [`Session::next_token`] runs, and returns at once; collect
    /// the token with [`Session::poll`] (non-blocking, for a frame loop) or [`Session::wait`].
    /// One step may be in flight per session.
    pub fn submit(&mut self, tokens: &[u32], pick: Pick) -> Result<()> {
        let last = self.run_body_chunks(tokens)?;
        let gpu = self.model.gpu.clone();
        self.write_head_step(1, last - 1);
        let (op, read) = match pick {
            Pick::Greedy => (&self.argmax, 4),
            Pick::Sample(s, u) => {
                let window = &self.history[self.history.len().saturating_sub(s.repeat_window)..];
                gpu.queue
                    .write_buffer(&self.act.recent, 0, bytemuck::cast_slice(window));
                let v = self.model.config.vocab_size;
                let p = SampleParams::new(v, &s, u, 0, window.len());
                gpu.queue
                    .write_buffer(&self.act.sample, 0, bytemuck::bytes_of(&p));
                (&self.sample, 16)
            }
        };
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(&mut enc, Section::Body, last as u32);
        self.record(&mut enc, Section::Head, 1);
        // Candidates first: the sampler's repetition penalty edits the logits in place.
        if self.top_n > 0 {
            self.record_ops(&mut enc, std::slice::from_ref(&self.top_op), 1);
        }
        self.record_ops(&mut enc, std::slice::from_ref(op), 1);
        enc.copy_buffer_to_buffer(&self.act.token, 0, &self.act.token_read, 0, read);
        let top_bytes = 8 * self.top_n as u64;
        if self.top_n > 0 {
            enc.copy_buffer_to_buffer(&self.act.top, 0, &self.act.token_read, 16, top_bytes);
        }
        gpu.queue.submit([enc.finish()]);
        if let Some(c) = &mut self.capture {
            c.in_flight = Some((self.pos, last));
        }
        // The tokens are in the cache once the queue runs; later submissions are ordered after.
        self.pos += last;
        self.pending = Some(PendingStep {
            read: gpu.start_read(&self.act.token_read, 16 + top_bytes),
            sampled: read == 16,
            top_n: self.top_n,
        });
        Ok(())
    }

    /// The token of the step in flight, if the GPU has finished it: polls the device once and
    /// never blocks. `Ok(None)`: not yet (or no step in flight).
    pub fn poll(&mut self) -> Result<Option<u32>> {
        self.collect(false)
    }

    /// Blocks until the step in flight is done and returns its token.
    pub fn wait(&mut self) -> Result<u32> {
        self.collect(true)?.ok_or(Error::SessionState(
            "no step in flight: call Session::submit first",
        ))
    }

    /// Whether a submitted step's token has not been collected yet.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn collect(&mut self, block: bool) -> Result<Option<u32>> {
        let Some(p) = &self.pending else {
            return Ok(None);
        };
        let Some(bytes) = self.model.gpu.finish_read(&p.read, block)? else {
            return Ok(None);
        };
        let word = |i: usize| {
            u32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        };
        self.last_logprob = p.sampled.then(|| f32::from_bits(word(2)));
        self.model_logprob = p.sampled.then(|| f32::from_bits(word(3)));
        self.candidates = (0..p.top_n)
            .map(|i| (word(4 + 2 * i), f32::from_bits(word(5 + 2 * i))))
            .collect();
        self.pending = None;
        let token = word(0);
        if let Some((pos0, rows)) = self.capture.as_mut().and_then(|c| c.in_flight.take()) {
            self.capture_step(pos0, rows)?;
        }
        Ok(Some(token))
    }

    /// Report the `n` most likely next tokens (at most 64) after every step; 0 turns it off.
    pub fn set_top_candidates(&mut self, n: usize) {
        self.top_n = n.min(MAX_TOP).min(self.model.config.vocab_size);
        let p = ArgmaxParams {
            v: self.model.config.vocab_size as u32,
            n: self.top_n as u32,
            _pad: [0; 2],
        };
        self.model
            .gpu
            .queue
            .write_buffer(&self.act.top_params, 0, bytemuck::bytes_of(&p));
    }

    /// The last step's most likely next tokens with their probabilities (softmax at temperature
    /// 1, before any sampling filter), most likely first.
    pub fn top_candidates(&self) -> &[(u32, f32)] {
        &self.candidates
    }

    /// The log-probability of the last sampled token under the filtered distribution (`None`
    /// after a greedy step).
    pub fn last_logprob(&self) -> Option<f32> {
        self.last_logprob
    }

    /// The log-probability of the last sampled token under the model's own distribution
    /// (softmax at temperature 1, after any repetition penalty, before the filters), as
    /// OpenAI's `logprobs` report it; `None` after a greedy step, whose token is the first of
    /// [`Session::top_candidates`].
    pub fn last_model_logprob(&self) -> Option<f32> {
        self.model_logprob
    }

    /// Runs `tokens` through the model, appending them to the cache, without computing logits
    /// (a prefill whose next token is not wanted, e.g. after a context shift).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        let t = self.run_body_chunks(tokens)?;
        let gpu = self.model.gpu.clone();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(&mut enc, Section::Body, t as u32);
        gpu.queue.submit([enc.finish()]);
        self.capture_step(self.pos, t)?;
        self.pos += t;
        gpu.check()
    }

    /// The ids of every token in the cache, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.history
    }

    /// Runs `tokens` through the model (appending them to the cache) and returns the logits of
    /// every one of them, (T, V) row-major.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let v = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(tokens.len() * v);
        self.validate(tokens)?;
        for chunk in tokens.chunks(self.t_max) {
            let t = self.run_body_chunks(chunk)?;
            {
                let gpu = &self.model.gpu;
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                self.record(&mut enc, Section::Body, t as u32);
                gpu.queue.submit([enc.finish()]);
            }
            self.capture_step(self.pos, t)?;
            self.pos += t;
            // The head may see fewer rows per pass than the body (V-wide rows are big).
            let mut row0 = 0;
            while row0 < t {
                let rows = self.head_rows.min(t - row0);
                out.extend(self.head_logits(rows, row0)?);
                row0 += rows;
            }
        }
        Ok(out)
    }

    /// Runs ln_f and the head on rows `row0 .. row0 + rows` of the residual stream, reads them back.
    pub(super) fn head_logits(&mut self, rows: usize, row0: usize) -> Result<Vec<f32>> {
        let gpu = self.model.gpu.clone();
        let bytes = (self.head_rows * self.model.config.vocab_size * 4) as u64;
        let read = self
            .act
            .logits_read
            .get_or_insert_with(|| gpu.readback("logits_read", bytes))
            .clone();
        self.write_head_step(rows, row0);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(&mut enc, Section::Head, rows as u32);
        let n = (rows * self.model.config.vocab_size * 4) as u64;
        enc.copy_buffer_to_buffer(&self.act.logits, 0, &read, 0, n);
        gpu.queue.submit([enc.finish()]);
        let data = gpu.read(&read, n)?;
        Ok(bytemuck::pod_collect_to_vec(&data))
    }

    fn validate(&self, tokens: &[u32]) -> Result<()> {
        let cfg = &self.model.config;
        if self.pending.is_some() {
            return Err(Error::SessionState(
                "a step is still in flight: collect its token (Session::poll or wait) first",
            ));
        }
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if self.encoder.as_ref().is_some_and(|e| e.source_len == 0) {
            return Err(Error::SessionState(
                "an encoder-decoder session decodes after its source: call Session::encode first",
            ));
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: cfg.vocab_size,
            });
        }
        let needed = self.pos + tokens.len();
        if needed > self.n_ctx {
            return Err(Error::ContextFull {
                needed,
                n_ctx: self.n_ctx,
            });
        }
        Ok(())
    }

    /// Submits every chunk of `tokens` but the last through the body; uploads the last chunk's
    /// tokens and step and returns its length, for the caller to record with what follows.
    fn run_body_chunks(&mut self, tokens: &[u32]) -> Result<usize> {
        self.validate(tokens)?;
        self.history.extend_from_slice(tokens);
        let gpu = self.model.gpu.clone();
        let mut chunks = tokens.chunks(self.t_max).peekable();
        loop {
            let chunk = chunks.next().unwrap_or_default();
            gpu.queue
                .write_buffer(&self.act.tokens, 0, bytemuck::cast_slice(chunk));
            let step = Step {
                slot: self.slot,
                slot_rows: self.n_ctx() as u32,
                ..Step::new(chunk.len() as u32, 0, self.pos as u32)
            };
            gpu.queue
                .write_buffer(&self.act.body_step, 0, bytemuck::bytes_of(&step));
            if chunks.peek().is_none() {
                return Ok(chunk.len());
            }
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            self.record(&mut enc, Section::Body, chunk.len() as u32);
            gpu.queue.submit([enc.finish()]);
            self.capture_step(self.pos, chunk.len())?;
            self.pos += chunk.len();
        }
    }

    fn write_head_step(&self, rows: usize, row0: usize) {
        let step = Step::new(rows as u32, row0 as u32, self.pos as u32);
        self.model
            .gpu
            .queue
            .write_buffer(&self.act.head_step, 0, bytemuck::bytes_of(&step));
    }

    /// The dispatches of `section` for a step of `rows` rows.
    pub(super) fn ops(&self, section: Section, rows: u32) -> &[Dispatch] {
        let by_bucket = match section {
            Section::Body => &self.plan.body,
            Section::Head => &self.plan.head,
        };
        &by_bucket[Bucket::of(rows) as usize]
    }

    /// Records `section` for a step of `rows` rows into `enc`.
    pub(super) fn record(&self, enc: &mut wgpu::CommandEncoder, section: Section, rows: u32) {
        self.record_ops(enc, self.ops(section, rows), rows);
    }

    /// Records `ops` for a step of `rows` rows; with the attention debug path on, each layer's
    /// q, k, v rows are copied out after its attention.
    pub(super) fn record_ops(&self, enc: &mut wgpu::CommandEncoder, ops: &[Dispatch], rows: u32) {
        let Some(cap) = &self.capture else {
            return plan::record(enc, ops, rows, 1, None);
        };
        let bytes = (rows as usize * self.model.config.qkv_width() * 4) as u64;
        let mut copy = |enc: &mut wgpu::CommandEncoder, layer: usize| {
            let at = layer as u64 * cap.layer_stride;
            enc.copy_buffer_to_buffer(&self.act.qkv, 0, &cap.buf, at, bytes);
        };
        plan::record(enc, ops, rows, 1, Some(&mut copy));
    }
}

/// Keys and values of each of `model`'s layers, `rows` rows of NKV HS each, named `names`
/// and the layer: textures in the texture layout, else buffers.
pub(super) fn kv_cache(model: &Model, names: [&str; 2], rows: usize) -> KvCache {
    let gpu = &model.gpu;
    let (layers, kv_w) = (model.config.n_layer, model.config.kv_width());
    let [k, v] = names;
    if model.texture_linear {
        let tex = |name: &str, l: usize| {
            gpu.texture(&format!("{name}.{l}"), rows, kv_w)
                .create_view(&Default::default())
        };
        return KvCache::Textures {
            k: (0..layers).map(|l| tex(k, l)).collect(),
            v: (0..layers).map(|l| tex(v, l)).collect(),
        };
    }
    let bytes = (rows * kv_w * 4) as u64;
    let buf = |name: &str, l: usize| gpu.storage(&format!("{name}.{l}"), bytes);
    KvCache::Buffers {
        k: (0..layers).map(|l| buf(k, l)).collect(),
        v: (0..layers).map(|l| buf(v, l)).collect(),
    }
}

/// Copies the first `rows` rows (`row_bytes` each, as buffers) of every layer's keys and
/// values from `from` to `to`, caches of one layout.
fn copy_cache(
    enc: &mut wgpu::CommandEncoder,
    from: &KvCache,
    to: &KvCache,
    rows: usize,
    row_bytes: u64,
) {
    match (from, to) {
        (KvCache::Buffers { k, v }, KvCache::Buffers { k: k2, v: v2 }) => {
            for (src, dst) in k.iter().zip(k2).chain(v.iter().zip(v2)) {
                enc.copy_buffer_to_buffer(src, 0, dst, 0, rows as u64 * row_bytes);
            }
        }
        (KvCache::Textures { k, v }, KvCache::Textures { k: k2, v: v2 }) => {
            for (src, dst) in k.iter().zip(k2).chain(v.iter().zip(v2)) {
                if rows > 0 {
                    enc.copy_texture_to_texture(
                        src.texture().as_image_copy(),
                        dst.texture().as_image_copy(),
                        wgpu::Extent3d {
                            width: src.texture().width(),
                            height: rows as u32,
                            depth_or_array_layers: 1,
                        },
                    );
                }
            }
        }
        _ => unreachable!("one model gives every session the same cache layout"),
    }
}

/// The two parts of a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Section {
    Body,
    Head,
}

impl Activations {
    /// What the model's plan binds: these buffers and textures, and the cache `kv`.
    fn io(&self, model: &Model, kv: &KvCache) -> Io {
        let mut acts = HashMap::from([
            (Act::X, self.x.clone()),
            (Act::Ln, self.ln.clone()),
            (Act::Qkv, self.qkv.clone()),
            (Act::AttY, self.att_y.clone()),
            (Act::FcH, self.fc_h.clone()),
            (Act::Lnf, self.lnf.clone()),
            (Act::Logits, self.logits.clone()),
        ]);
        acts.extend(self.gate_up.clone().map(|b| (Act::GateUp, b)));
        acts.extend(self.emb.clone().map(|b| (Act::Emb, b)));
        acts.extend(self.proj.clone().map(|b| (Act::Proj, b)));
        acts.extend(self.cross.clone().map(|[q, _]| (Act::Query, q)));
        let mut textures = HashMap::new();
        if let Some(t) = &self.textures {
            for (act, tex) in [
                (Act::X, &t.x),
                (Act::Ln, &t.c),
                (Act::AttY, t.att_y.as_ref().unwrap_or(&t.c)),
                (Act::FcH, &t.inner),
                (Act::Lnf, &t.head),
            ] {
                textures.insert(act, tex.clone());
            }
            if let Some((emb, proj)) = &t.words {
                textures.insert(Act::Emb, emb.clone());
                textures.insert(Act::Proj, proj.clone());
            }
        }
        Io {
            steps: [self.body_step.clone(), self.head_step.clone()],
            tokens: self.tokens.clone(),
            spans: None,
            acts,
            textures,
            kv: kv.clone(),
            zero: model.zero.clone(),
            tmp: self.tmp.clone(),
            partials: Some(self.partials.clone()),
            cross: None,
        }
    }
}

/// The picking dispatches: greedy argmax (over the head's candidates where decode's head
/// leaves them), the sampler, and the top-N candidates.
fn pick_ops(
    model: &Model,
    act: &Activations,
    from_partials: bool,
) -> (Dispatch, Dispatch, Dispatch) {
    let gpu = &*model.gpu;
    let v = model.config.vocab_size as u32;
    let pipe = |entry| gpu.registry.get(gpu, &Key::new("argmax", entry));
    let one = [Dim::Fixed(1), Dim::Fixed(1)];
    let argmax = match from_partials {
        true => {
            let n = ArgmaxParams {
                v: v.div_ceil(32),
                n: 1,
                _pad: [0; 2],
            };
            let r = [&gpu.uniform("argmax", &n), &act.partials, &act.token];
            let r = [0, 3, 2].into_iter().zip(r.map(|b| b.as_entire_binding()));
            let p = pipe("argmax_partials");
            let bind = kernels::bind_at(gpu, &p, "argmax_partials", r.collect());
            Dispatch::new(p, bind, one, "argmax_partials")
        }
        false => {
            let n = ArgmaxParams {
                v,
                n: 1,
                _pad: [0; 2],
            };
            let p = pipe("argmax");
            let bind = kernels::bind(
                gpu,
                &p,
                "argmax",
                &[&gpu.uniform("argmax", &n), &act.logits, &act.token],
            );
            Dispatch::new(p, bind, one, "argmax")
        }
    };
    let p = gpu.registry.get(gpu, &Key::new("sample", "sample"));
    let bind = kernels::bind(
        gpu,
        &p,
        "sample",
        &[&act.sample, &act.logits, &act.token, &act.recent],
    );
    let sample = Dispatch::new(p, bind, one, "sample");
    // The N most likely tokens (--top): argmax with N > 1, over the logits.
    let p = pipe("argmax");
    let bind = kernels::bind(gpu, &p, "argmax", &[&act.top_params, &act.logits, &act.top]);
    let top_op = Dispatch::new(p, bind, one, "argmax");
    (argmax, sample, top_op)
}
