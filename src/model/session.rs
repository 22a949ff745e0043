//! One sequence being generated: its KV cache (VRAM), scratch activations, the bind groups that
//! tie them to the model's weights (built once, here), and the forward pass recorded into one
//! command encoder per step.

use crate::gpu::kernels::{
    self, ArgmaxParams, AttentionParams, EmbedParams, Epilogue, Kv, LayerNormParams, MAX_TOP,
    SampleParams, Step, WidthParams, wg,
};
use crate::gpu::tensor::GpuTensor;
use crate::model::Model;
use crate::sampler::Sampling;
use crate::{Error, Result};

/// How the next token is chosen from the last position's logits, on the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pick {
    /// The most likely token.
    Greedy,
    /// Sample with these settings; `u` in [0, 1) picks the point on the filtered CDF.
    Sample(Sampling, f32),
}

/// Per-layer key and value caches, (n_ctx, C) each, allocated once per session: buffers, or in
/// the texture layout rgba32float textures (n_ctx rows, C / 4 texels).
enum KvCache {
    Buffers {
        k: Vec<wgpu::Buffer>,
        v: Vec<wgpu::Buffer>,
    },
    Textures {
        k: Vec<wgpu::TextureView>,
        v: Vec<wgpu::TextureView>,
    },
}

/// Scratch buffers for one step of up to `t_max` tokens. Shapes use T = t_max.
pub(super) struct Activations {
    pub(super) tokens: wgpu::Buffer, // (T) u32
    pub(super) x: wgpu::Buffer,      // (T, C) residual stream
    pub(super) ln: wgpu::Buffer,     // (T, C) layernorm output
    pub(super) qkv: wgpu::Buffer,    // (T, 3C)
    pub(super) att_y: wgpu::Buffer,  // (T, C) attention output, heads side by side
    pub(super) fc_h: wgpu::Buffer,   // (T, n_inner) MLP hidden
    pub(super) lnf: wgpu::Buffer,    // (head_rows, C) final layernorm of the rows the head sees
    pub(super) logits: wgpu::Buffer,
    /// With embedding projections: token embeddings before project_in, (T, E).
    pub(super) emb: Option<wgpu::Buffer>,
    /// With embedding projections: project_out(ln_f(x)), the head's input, (head_rows, E).
    pub(super) proj: Option<wgpu::Buffer>, // (head_rows, V)
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
    /// Input textures of the linear layers, when they read textures (see matmul_texture.wgsl).
    textures: Option<InputTextures>,
}

/// The linear layers' inputs as textures, filled by a copy before each layer.
struct InputTextures {
    /// The residual stream x, copied in for layernorm_rows_texture (multi-row steps).
    x: wgpu::Texture, // (T, C)
    c: wgpu::Texture,     // (T, C): ln and att_y
    inner: wgpu::Texture, // (T, n_inner): fc_h
    head: wgpu::Texture,  // (head_rows, C): lnf
    /// With embedding projections: (T, E) for emb, and (head_rows, E) for proj.
    words: Option<(wgpu::Texture, wgpu::Texture)>,
}

/// Which pipeline an op runs.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kernel {
    Embed,
    LayerNorm,
    /// layernorm_rows: the texture layout's layernorm, one invocation per row.
    LayerNormRows,
    /// A linear layer (gemv or tiled matmul by step size) ending in its epilogue.
    Matmul(Epilogue),
    /// A linear layer of the texture layout.
    MatmulTexture(Epilogue),
    KvAppend,
    KvAppendTexture,
    Attention,
    AttentionTexture,
    Argmax,
    /// argmax_partials: the greedy argmax from the head's candidates (gemv_texture_argmax).
    ArgmaxPartials,
    Sample,
}

impl Kernel {
    /// The kernel family's name, for per-kernel timings (`gemv`: see `Op::gemv`).
    fn name(self, gemv: bool) -> &'static str {
        match self {
            Kernel::Embed => "embed",
            Kernel::LayerNorm | Kernel::LayerNormRows => "layernorm",
            Kernel::Matmul(_) if gemv => "gemv",
            Kernel::Matmul(_) => "matmul",
            Kernel::MatmulTexture(_) if gemv => "gemv_texture",
            Kernel::MatmulTexture(_) => "matmul_texture",
            Kernel::KvAppend => "kv_append",
            Kernel::KvAppendTexture => "kv_append_texture",
            Kernel::Attention => "attention",
            Kernel::AttentionTexture => "attention_texture",
            Kernel::Argmax => "argmax",
            Kernel::ArgmaxPartials => "argmax_partials",
            Kernel::Sample => "sample",
        }
    }
}

/// How many workgroups an op needs for a step of `rows` rows.
#[derive(Clone, Copy)]
pub(super) enum Grid {
    /// (ceil(width / wg), rows): one invocation per element.
    Elements { width: u32, wg: u32 },
    /// (rows): one workgroup per row.
    Rows,
    /// A linear layer with n outputs over k inputs: gemv for a few rows, the tiled matmul for
    /// more.
    Linear { n: u32, k: u32 },
    /// (heads, rows): one workgroup per head and query.
    Heads { nh: u32 },
    /// A single workgroup.
    One,
}

/// One recorded dispatch: pipeline, bind group (built once) and its grid; for a linear layer
/// reading textures, the activation buffer to copy into its input texture first.
pub(super) struct Op {
    pub(super) kernel: Kernel,
    pub(super) bind: wgpu::BindGroup,
    pub(super) grid: Grid,
    pub(super) copy: Option<(wgpu::Buffer, wgpu::Texture)>,
    /// A linear layer's own pipeline and bind group for one-row steps, where it fuses in a
    /// neighbour's work: the qkv projection appending the key and value to the cache
    /// (gemv_texture_kv) or running the attention too (gemv_texture_attention), a projection
    /// standardising its input for a folded layer norm (NORM).
    pub(super) decode: Option<Decode>,
    /// Not dispatched in one-row steps, where the next op's `decode` does its work.
    pub(super) skip_in_decode: bool,
    /// A pre-LN block's layer norm in the texture layout: its multi-row pipeline.
    pub(super) norm_texture: Option<NormTexture>,
}

/// layernorm_rows_texture for a layer norm's multi-row steps: the residual stream is copied
/// into a texture (`copy`), and the norm writes the next linear layer's input texture itself.
pub(super) struct NormTexture {
    pipe: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    copy: (wgpu::Buffer, wgpu::Texture),
}

/// A linear layer's one-row pipeline (`Op::decode`).
#[derive(Clone)]
pub(super) struct Decode {
    pipe: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    /// gemv_texture_attention, which runs one workgroup per head.
    attends: bool,
}

impl Op {
    /// A dispatch of `kernel` over `grid` with nothing copied, fused or skipped.
    pub(super) fn new(kernel: Kernel, bind: wgpu::BindGroup, grid: Grid) -> Op {
        Op {
            kernel,
            bind,
            grid,
            copy: None,
            decode: None,
            skip_in_decode: false,
            norm_texture: None,
        }
    }

    /// Whether a linear layer runs as a gemv for a step of `rows` rows: a few rows; for
    /// gemv_texture one row (it reads the weights once per row, where matmul_texture's 4 x 4
    /// blocks read them once per 4 rows: measured on lavapipe, GPT-2 f16, a batched step of 4
    /// takes 317 ms through gemv_texture) whose input fits its uniform binding.
    fn gemv(&self, rows: u32) -> bool {
        match (self.grid, self.kernel) {
            (Grid::Linear { k, .. }, Kernel::MatmulTexture(_)) => {
                rows == 1 && k <= wg::GEMV_UNIFORM_FLOATS
            }
            (Grid::Linear { .. }, _) => rows <= wg::GEMV_MAX_ROWS,
            _ => false,
        }
    }

    /// Whether this op is dispatched in a step of `rows` rows (see `skip_in_decode`).
    fn runs(&self, rows: u32) -> bool {
        !(self.skip_in_decode && rows == 1)
    }

    /// The fused pipeline and bind group this op dispatches with in a step of `rows` rows, if
    /// any (see `decode`).
    fn fused(&self, rows: u32) -> Option<&Decode> {
        self.decode.as_ref().filter(|_| self.gemv(rows))
    }

    /// Whether this op runs the attention in a step of `rows` rows: the attention kernels, or
    /// a qkv projection fusing it in.
    fn attends(&self, rows: u32) -> bool {
        matches!(self.kernel, Kernel::Attention | Kernel::AttentionTexture)
            || self.fused(rows).is_some_and(|d| d.attends)
    }

    /// The kernel family's name for per-kernel timings in a step of `rows` rows.
    fn name(&self, rows: u32) -> &'static str {
        match self.fused(rows) {
            Some(Decode { attends: true, .. }) => "gemv_texture_attention",
            _ => self.kernel.name(self.gemv(rows)),
        }
    }

    /// The activation copy to record before this op for a step of `rows` rows: matmul_texture
    /// and layernorm_rows_texture read their input from a texture.
    fn texture_copy(&self, rows: u32) -> Option<&(wgpu::Buffer, wgpu::Texture)> {
        match &self.norm_texture {
            Some(n) if rows > 1 => Some(&n.copy),
            _ => self.copy.as_ref().filter(|_| !self.gemv(rows)),
        }
    }
}

/// One sequence in progress on a [`Model`]: its KV cache (L layers of (n_ctx, C) keys and
/// values, in VRAM), scratch activations for one step (as many tokens as fit the adapter's
/// largest binding, up to n_ctx; longer inputs run in several steps), and every bind group of
/// the forward pass, built once. A step brings back only the chosen token id (4 bytes);
/// [`submit`](Session::submit) / [`poll`](Session::poll) let the CPU work meanwhile.
pub struct Session {
    pub(super) model: Model,
    /// Owned here; the bind groups reference it.
    kv: KvCache,
    pub(super) act: Activations,
    /// embed and the blocks, run on the step's T tokens.
    pub(super) body: Vec<Op>,
    /// ln_f and the output projection, run on the head's rows.
    pub(super) head: Vec<Op>,
    argmax: Op,
    sample: Op,
    top_op: Op,
    /// Tokens already in the KV cache.
    pub(super) pos: usize,
    /// Those tokens' ids, for the repetition penalty.
    pub(super) history: Vec<u32>,
    last_logprob: Option<f32>,
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
        let maxb = model.max_chunk_bytes as usize;
        let cache_rows = slots * n_ctx;
        let max_rows = match model.texture_linear {
            true => gpu.limits.max_texture_dimension_2d as usize,
            false => maxb / (4 * c),
        };
        if cache_rows > max_rows {
            let layer = 2 * cache_rows as u64 * c as u64 * 4;
            return Err(Error::Limits(format!(
                "a KV cache for {slots} sequence(s) of {n_ctx} positions needs {cache_rows} rows \
                 ({layer} bytes of keys and values) per layer, the adapter allows {max_rows} rows in \
                 one binding; use a smaller context (Session::with_context, at most {}), fewer \
                 sequences, or another adapter",
                max_rows / slots.max(1)
            )));
        }
        let t_max = n_ctx.min(maxb / (4 * inner.max(3 * c)));
        let head_rows = t_max.min(maxb / (4 * v));
        if head_rows == 0 {
            return Err(Error::Limits(format!(
                "one row of logits ({v} floats) does not fit the adapter's largest binding ({maxb} bytes)"
            )));
        }
        let f = |n: usize| (n * 4) as u64;
        let kv = if model.texture_linear {
            let tex = |name: &str, l: usize| {
                gpu.texture(&format!("{name}.{l}"), cache_rows, c)
                    .create_view(&Default::default())
            };
            KvCache::Textures {
                k: (0..cfg.n_layer).map(|l| tex("k_cache", l)).collect(),
                v: (0..cfg.n_layer).map(|l| tex("v_cache", l)).collect(),
            }
        } else {
            let buf = |name: &str, l: usize| gpu.storage(&format!("{name}.{l}"), f(cache_rows * c));
            KvCache::Buffers {
                k: (0..cfg.n_layer).map(|l| buf("k_cache", l)).collect(),
                v: (0..cfg.n_layer).map(|l| buf("v_cache", l)).collect(),
            }
        };
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
            qkv: gpu.storage("qkv", f(t_max * 3 * c)),
            att_y: linear_input("att_y", f(t_max * c)),
            fc_h: linear_input("fc_h", f(t_max * inner)),
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
            body_step: gpu.uniform("body_step", &Step::default()),
            head_step: gpu.uniform("head_step", &Step::default()),
            sample: gpu.uniform("sample", &<SampleParams as bytemuck::Zeroable>::zeroed()),
        };
        let (body, head, argmax, sample, top_op) = build_ops(model, &kv, &act);
        gpu.check()?;
        Ok(Session {
            model: model.clone(),
            kv,
            act,
            body,
            head,
            argmax,
            sample,
            top_op,
            pos: 0,
            history: Vec::new(),
            last_logprob: None,
            top_n: 0,
            candidates: Vec::new(),
            t_max,
            head_rows,
            pending: None,
            slot: 0,
            n_ctx,
            capture: None,
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
        let c = self.model.config.n_embd as u64;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        match (&self.kv, &other.kv) {
            (KvCache::Buffers { k, v }, KvCache::Buffers { k: k2, v: v2 }) => {
                for (src, dst) in k.iter().zip(k2).chain(v.iter().zip(v2)) {
                    enc.copy_buffer_to_buffer(src, 0, dst, 0, self.pos as u64 * c * 4);
                }
            }
            (KvCache::Textures { k, v }, KvCache::Textures { k: k2, v: v2 }) => {
                for (src, dst) in k.iter().zip(k2).chain(v.iter().zip(v2)) {
                    if self.pos > 0 {
                        enc.copy_texture_to_texture(
                            src.texture().as_image_copy(),
                            dst.texture().as_image_copy(),
                            wgpu::Extent3d {
                                width: src.texture().width(),
                                height: self.pos as u32,
                                depth_or_array_layers: 1,
                            },
                        );
                    }
                }
            }
            _ => unreachable!("one model gives every session the same cache layout"),
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

    /// Dispatches per forward step with one token (body + head + pick).
    pub fn dispatches_per_token(&self) -> usize {
        let runs = |ops: &[Op]| ops.iter().filter(|o| o.runs(1)).count();
        runs(&self.body) + runs(&self.head) + 1
    }

    /// Bytes of GPU memory this session allocated: KV cache and scratch buffers.
    pub fn gpu_bytes(&self) -> u64 {
        let a = &self.act;
        let scratch = [
            &a.tokens, &a.x, &a.ln, &a.qkv, &a.att_y, &a.fc_h, &a.lnf, &a.logits, &a.token,
        ]
        .into_iter()
        .chain(a.emb.iter())
        .chain(a.proj.iter())
        .map(|b| b.size())
        .sum::<u64>()
            + a.logits_read.as_ref().map_or(0, |b| b.size());
        let cfg = &self.model.config;
        scratch + (2 * cfg.n_layer * self.n_ctx * cfg.n_embd * 4) as u64
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
        let ops: Vec<(&Op, u32)> = (self.body.iter().map(|o| (o, rows)))
            .chain(self.head.iter().map(|o| (o, 1)))
            .chain(std::iter::once((&self.argmax, 1)))
            .filter(|(o, r)| o.runs(*r))
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
            if let Some((buf, tex)) = op.texture_copy(*r) {
                crate::model::copy_rows_to_texture(&mut enc, buf, tex, *r, tex.width() * 16);
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            self.dispatch(&mut pass, op, *r);
        }
        enc.resolve_query_set(&set, 0..n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, n as u64 * 8);
        gpu.queue.submit([enc.finish()]);
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&gpu.read(&read, n as u64 * 8)?);
        self.pos += rows as usize;
        let period_s = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        for (i, (op, r)) in ops.iter().enumerate() {
            let s = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_s;
            let name = op.name(*r);
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
                let p = SampleParams {
                    v: self.model.config.vocab_size as u32,
                    temperature: if s.temperature > 0.0 {
                        s.temperature
                    } else {
                        1e-4
                    },
                    u: u.clamp(0.0, 1.0 - f32::EPSILON),
                    top_k: if s.temperature > 0.0 { s.top_k } else { 1 },
                    top_p: s.top_p,
                    min_p: s.min_p,
                    penalty: s.repeat_penalty,
                    n_recent: window.len() as u32,
                };
                gpu.queue
                    .write_buffer(&self.act.sample, 0, bytemuck::bytes_of(&p));
                (&self.sample, 12)
            }
        };
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(&mut enc, &self.body, last as u32);
        self.record(&mut enc, &self.head, 1);
        // Candidates first: the sampler's repetition penalty edits the logits in place.
        if self.top_n > 0 {
            self.record(&mut enc, std::slice::from_ref(&self.top_op), 1);
        }
        self.record(&mut enc, std::slice::from_ref(op), 1);
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
            sampled: read == 12,
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

    /// Runs `tokens` through the model, appending them to the cache, without computing logits
    /// (a prefill whose next token is not wanted, e.g. after a context shift).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        let t = self.run_body_chunks(tokens)?;
        let gpu = self.model.gpu.clone();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(&mut enc, &self.body, t as u32);
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
                self.record(&mut enc, &self.body, t as u32);
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
        self.record(&mut enc, &self.head, rows as u32);
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
            self.record(&mut enc, &self.body, chunk.len() as u32);
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

    /// Records `ops` for a step of `rows` rows into `enc`: one compute pass, broken only where a
    /// linear layer reading textures needs its input copied in first.
    pub(super) fn record(&self, enc: &mut wgpu::CommandEncoder, ops: &[Op], rows: u32) {
        let mut pass = enc
            .begin_compute_pass(&Default::default())
            .forget_lifetime();
        let mut layer = 0;
        for op in ops.iter().filter(|o| o.runs(rows)) {
            if let Some((buf, tex)) = op.texture_copy(rows) {
                drop(pass);
                crate::model::copy_rows_to_texture(enc, buf, tex, rows, tex.width() * 16);
                pass = enc
                    .begin_compute_pass(&Default::default())
                    .forget_lifetime();
            }
            self.dispatch(&mut pass, op, rows);
            // The attention debug path: this layer's q, k, v rows, copied between passes.
            if let (Some(cap), true) = (&self.capture, op.attends(rows)) {
                drop(pass);
                let bytes = (rows as usize * 3 * self.model.config.n_embd * 4) as u64;
                let at = layer * cap.layer_stride;
                enc.copy_buffer_to_buffer(&self.act.qkv, 0, &cap.buf, at, bytes);
                layer += 1;
                pass = enc
                    .begin_compute_pass(&Default::default())
                    .forget_lifetime();
            }
        }
    }

    /// The pipeline of `kernel` (as a GEMV with `few` rows), for ops without a fused one.
    fn pipeline(&self, kernel: Kernel, few: bool) -> &wgpu::ComputePipeline {
        let p = &self.model.pipelines;
        match kernel {
            Kernel::Embed => &p.embed,
            Kernel::LayerNorm => &p.layernorm,
            Kernel::LayerNormRows => &p.textures().layernorm_rows,
            Kernel::Matmul(e) if few => p.gemv_subgroup.as_ref().unwrap_or(&p.gemv).get(e),
            Kernel::Matmul(e) => p.matmul.get(e),
            Kernel::MatmulTexture(e) if few => {
                let t = p.textures();
                t.gemv_texture_subgroup
                    .as_ref()
                    .unwrap_or(&t.gemv_texture)
                    .get(e)
            }
            Kernel::MatmulTexture(e) => {
                let t = p.textures();
                t.matmul_texture_subgroup
                    .as_ref()
                    .unwrap_or(&t.matmul_texture)
                    .get(e)
            }
            Kernel::KvAppend => &p.kv_append,
            Kernel::KvAppendTexture => &p.textures().kv_append_texture,
            Kernel::Attention => &p.attention,
            Kernel::AttentionTexture => &p.textures().attention_texture,
            Kernel::Argmax => &p.argmax,
            Kernel::ArgmaxPartials => &p.textures().argmax_partials,
            Kernel::Sample => &p.sample,
        }
    }

    fn dispatch(&self, pass: &mut wgpu::ComputePass, op: &Op, rows: u32) {
        if let Some(n) = op.norm_texture.as_ref().filter(|_| rows > 1) {
            pass.set_pipeline(&n.pipe);
            pass.set_bind_group(0, &n.bind, &[]);
            pass.dispatch_workgroups(rows.div_ceil(wg::LAYERNORM_ROWS), 1, 1);
            return;
        }
        let few = op.gemv(rows);
        let fused = op.fused(rows);
        pass.set_pipeline(match fused {
            Some(d) => &d.pipe,
            None => self.pipeline(op.kernel, few),
        });
        pass.set_bind_group(0, fused.map_or(&op.bind, |d| &d.bind), &[]);
        let (x, y) = match (op.grid, op.kernel) {
            _ if fused.is_some_and(|d| d.attends) => (self.model.config.n_head as u32, 1),
            (Grid::Elements { width, wg }, _) => (width.div_ceil(wg), rows),
            (Grid::Rows, Kernel::LayerNormRows) => (rows.div_ceil(wg::LAYERNORM_ROWS), 1),
            (Grid::Rows, _) => (rows, 1),
            (Grid::Linear { n, .. }, Kernel::MatmulTexture(_)) => (
                n.div_ceil(4).div_ceil(wg::LINEAR_TEXTURE),
                if few { rows } else { rows.div_ceil(4) },
            ),
            (Grid::Linear { n, .. }, _) if few => (n.div_ceil(wg::GEMV_OUTPUTS), rows),
            (Grid::Linear { n, .. }, _) => {
                (n.div_ceil(wg::MATMUL_TILE), rows.div_ceil(wg::MATMUL_TILE))
            }
            (Grid::Heads { nh }, _) => (nh, rows),
            (Grid::One, _) => (1, 1),
        };
        pass.dispatch_workgroups(x, y, 1);
    }
}

/// What a linear layer's one-row dispatch fuses in (`Op::decode`): the layer's KV cache (the
/// qkv projection appends the key and value, or runs the attention too, and then the output
/// projection appends them), a layer norm folded into its weights (the row sums and the
/// residual stream it standardises), the greedy argmax's candidates (the head).
#[derive(Clone, Copy, Default)]
struct Fuse<'a> {
    kv: Option<Kv<'a>>,
    ln: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    partials: Option<&'a wgpu::Buffer>,
}

/// Builds every dispatch of the forward pass, in order, with its bind group. Reads like the
/// model: embed; per block `x = x + attn(ln_1(x))`, `x = x + mlp(ln_2(x))`; then ln_f and head.
fn build_ops(model: &Model, kv: &KvCache, act: &Activations) -> (Vec<Op>, Vec<Op>, Op, Op, Op) {
    let gpu = &*model.gpu;
    let cfg = &model.config;
    let w = &model.weights;
    let p = &model.pipelines;
    let (c, v) = (cfg.n_embd as u32, cfg.vocab_size as u32);
    let (nh, hs) = (cfg.n_head as u32, cfg.head_size() as u32);
    let bind = |pipe, label: &str, bufs: &[&wgpu::Buffer]| kernels::bind(gpu, pipe, label, bufs);
    let width = |width: u32| {
        gpu.uniform(
            "width",
            &WidthParams {
                width,
                _pad: [0; 3],
            },
        )
    };

    // The texture layout (CPU adapters) takes the barrier-free layernorm.
    let (ln_kernel, ln_pipe) = match &p.texture {
        Some(t) if act.textures.is_some() => (Kernel::LayerNormRows, &t.layernorm_rows),
        _ => (Kernel::LayerNorm, &p.layernorm),
    };
    // Every norm of the model has the same width and epsilon: one uniform serves them all.
    let ln_params = gpu.uniform(
        "ln",
        &LayerNormParams {
            c,
            eps: cfg.layer_norm_epsilon,
            _pad: [0; 2],
        },
    );
    let layernorm = |step: &wgpu::Buffer, inp, weight: &GpuTensor, bias: &GpuTensor, out| {
        let bufs = [step, &ln_params, inp, weight.single(), bias.single(), out];
        Op::new(ln_kernel, bind(ln_pipe, "layernorm", &bufs), Grid::Rows)
    };
    // A pre-LN block's norm in the texture layout, for multi-row steps: from a copy of x into
    // the linear layer's input texture (layernorm_rows_texture), its gain and bias copied into
    // one uniform buffer by `init` (submitted once, below).
    let mut init = gpu.device.create_command_encoder(&Default::default());
    let norm_texture = |init: &mut wgpu::CommandEncoder, weight: &GpuTensor, bias: &GpuTensor| {
        let (t, tp) = (act.textures.as_ref()?, p.texture.as_ref()?);
        if !cfg.pre_ln || c as u64 * 8 > wg::GAIN_BIAS_BYTES {
            return None;
        }
        let bytes = c as u64 * 4;
        let gain_bias = gpu.storage_uniform("ln_gain_bias", wg::GAIN_BIAS_BYTES);
        init.copy_buffer_to_buffer(weight.single(), 0, &gain_bias, 0, bytes);
        init.copy_buffer_to_buffer(bias.single(), 0, &gain_bias, bytes, bytes);
        let [x, out] = [&t.x, &t.c].map(|t| t.create_view(&Default::default()));
        let r = vec![
            (0, act.body_step.as_entire_binding()),
            (1, ln_params.as_entire_binding()),
            (6, wgpu::BindingResource::TextureView(&x)),
            (7, gain_bias.as_entire_binding()),
            (8, wgpu::BindingResource::TextureView(&out)),
        ];
        let pipe = &tp.layernorm_rows_texture;
        Some(NormTexture {
            pipe: pipe.clone(),
            bind: kernels::bind_at(gpu, pipe, "layernorm_rows_texture", r),
            copy: (act.x.clone(), t.x.clone()),
        })
    };
    // out = epilogue(inp @ weight^T + bias), one dispatch per row chunk of the weight. With
    // textures, the first dispatch copies `inp` into the input texture of its width.
    let matmul = |step: &wgpu::Buffer,
                  inp: &wgpu::Buffer,
                  inp_texture: fn(&InputTextures) -> &wgpu::Texture,
                  weight: &GpuTensor,
                  bias: Option<&GpuTensor>,
                  epilogue: Epilogue,
                  out: &wgpu::Buffer,
                  fuse: Fuse|
     -> Vec<Op> {
        let input = act.textures.as_ref().map(inp_texture);
        let view = input.map(|t| t.create_view(&Default::default()));
        let io = kernels::LinearIo {
            step,
            inp,
            input_texture: view.as_ref(),
            bias: (bias.map_or(&model.zero, |b| b.single()), bias.is_some()),
            out,
            kv: None,
            ln: None,
            partials: None,
        };
        let (kernel, pipe) = match input {
            Some(_) => (
                Kernel::MatmulTexture(epilogue),
                p.textures().matmul_texture.get(epilogue),
            ),
            None => (Kernel::Matmul(epilogue), p.matmul.get(epilogue)),
        };
        // The one-row (decode) pipeline fusing in the neighbours' work `fuse` names, where the
        // adapter has it and the row fits gemv's uniform: four outputs (one cache texel) per
        // invocation must not straddle weight chunks; the argmax candidates go to slot
        // col0 / 32 + workgroup, so chunks must start at multiples of 32.
        let chunks_at = |n: usize| weight.textures.iter().all(|ch| ch.row0 % n == 0);
        let texels = chunks_at(4) && weight.textures.iter().all(|ch| ch.rows % 4 == 0);
        let one_chunk = weight.textures.len() == 1;
        let t = (p.texture.as_ref())
            .filter(|_| weight.cols as u32 <= wg::GEMV_UNIFORM_FLOATS && view.is_some());
        let partials = fuse.partials.filter(|_| chunks_at(32));
        let fused_pipe = match (t, fuse.kv, fuse.ln, partials) {
            (Some(t), None, None, Some(_)) => t.gemv_texture_argmax.clone(),
            (Some(t), Some(Kv::Append(_)), None, None) if texels => t.gemv_texture_kv.clone(),
            (Some(t), Some(Kv::Append(_)), Some(_), None) if texels => {
                t.gemv_texture_kv_norm.clone()
            }
            (Some(t), Some(Kv::Attend { .. }), None, None) if one_chunk => {
                t.gemv_texture_attention.clone()
            }
            (Some(t), Some(Kv::Attend { .. }), Some(_), None) if one_chunk => {
                t.gemv_texture_attention_norm.clone()
            }
            (Some(t), Some(Kv::Deferred { .. }), None, None) if one_chunk => {
                t.gemv_texture_append.clone()
            }
            (Some(t), None, Some(_), None) if texels => {
                (t.gemv_texture_norm.as_ref()).map(|l| l.get(epilogue).clone())
            }
            _ => None,
        };
        let fused: Vec<_> = match &fused_pipe {
            Some(pipe) => {
                let io = kernels::LinearIo {
                    // A fused layer norm standardises the residual stream itself.
                    inp: fuse.ln.map_or(inp, |(_, x)| x),
                    kv: fuse.kv,
                    ln: fuse
                        .ln
                        .map(|(row_sums, _)| (row_sums, cfg.layer_norm_epsilon)),
                    partials,
                    ..io
                };
                let attends = matches!(fuse.kv, Some(Kv::Attend { .. }));
                let binds = kernels::linear_binds(gpu, pipe, weight, &io);
                (binds.into_iter())
                    .map(|(bind, _)| Decode {
                        pipe: pipe.clone(),
                        bind,
                        attends,
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        kernels::linear_binds(gpu, pipe, weight, &io)
            .into_iter()
            .enumerate()
            .map(|(i, (bind, n))| Op {
                kernel,
                bind,
                grid: Grid::Linear {
                    n,
                    k: weight.cols as u32,
                },
                copy: input.filter(|_| i == 0).map(|t| (inp.clone(), t.clone())),
                decode: fused.get(i).cloned(),
                skip_in_decode: false,
                norm_texture: None,
            })
            .collect()
    };
    let step = &act.body_step;

    let mut body = Vec::new();
    let embed = |params: EmbedParams, chunk: &wgpu::Buffer, out: &wgpu::Buffer| {
        Op::new(
            Kernel::Embed,
            bind(
                &p.embed,
                "embed",
                &[
                    step,
                    &gpu.uniform("embed", &params),
                    &act.tokens,
                    chunk,
                    w.wpe.single(),
                    out,
                ],
            ),
            Grid::Elements {
                width: params.c,
                wg: wg::EMBED,
            },
        )
    };
    let e = cfg.word_embed_dim as u32;
    match (&w.project_in, &act.emb) {
        // x = wte[tokens] + wpe[positions]
        (None, _) | (_, None) => {
            for ch in &w.wte.chunks {
                let params = EmbedParams::new(c, ch.row0 as u32, ch.rows as u32, cfg.embed_scale);
                body.push(embed(params, &ch.buffer, &act.x));
            }
        }
        // x = wpe[positions]; emb = wte[tokens]; x += project_in(emb)
        (Some(project_in), Some(emb)) => {
            let positions = EmbedParams {
                tokens: 0,
                ..EmbedParams::new(c, 0, 0, 1.0)
            };
            body.push(embed(positions, &w.wte.chunks[0].buffer, &act.x));
            for ch in &w.wte.chunks {
                let params = EmbedParams {
                    positions: 0,
                    ..EmbedParams::new(e, ch.row0 as u32, ch.rows as u32, cfg.embed_scale)
                };
                body.push(embed(params, &ch.buffer, emb));
            }
            body.extend(matmul(
                step,
                emb,
                |t| &t.words.as_ref().expect("made with the projections").0,
                project_in,
                None,
                Epilogue::Residual,
                &act.x,
                Fuse::default(),
            ));
        }
    }
    // Pre-LN (GPT-2, XGLM, most OPT):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x)).
    // Post-LN (OPT-350m):               x = ln_1(x + attn(x));  x = ln_2(x + mlp(x)),
    //   computed as x += attn(x); ln = ln_1(x); ln += mlp(ln); x = ln_2(ln).
    let pre_ln = cfg.pre_ln;
    let attn_in = if pre_ln { &act.ln } else { &act.x };
    let mlp_resid = if pre_ln { &act.x } else { &act.ln };
    // Whether every op in `ops` (a projection's weight chunks) fuses its neighbours' work into
    // its one-row dispatch, so that work is skipped there (`Op::skip_in_decode`; for the head,
    // the argmax over V logits).
    let fused = |ops: &[Op]| !ops.is_empty() && ops.iter().all(|o| o.decode.is_some());
    // Decode's qkv projection runs the attention too where the pipelines were built for it and
    // both of the attention's projections are one texture chunk each (it appends this step's
    // key and value to the cache only after the attention, in the output projection).
    let one_chunk = |t: &GpuTensor| t.textures.len() == 1;
    let attends = (p.texture.as_ref()).is_some_and(|t| t.gemv_texture_attention.is_some())
        && (w.layers.iter()).all(|lw| one_chunk(&lw.c_attn_w) && one_chunk(&lw.attn_proj_w));
    for (l, lw) in w.layers.iter().enumerate() {
        // A norm folded into the projection after it (`loader::LnFold`): its row sums, and the
        // residual stream the fused GEMV standardises.
        let folded_ln = |i: usize| model.ln_folded.as_ref().map(|s| (&s[l][i], &act.x));
        let ln_1 = body.len();
        let mut ln_texture = false;
        if pre_ln {
            let norm_texture = norm_texture(&mut init, &lw.ln_1_w, &lw.ln_1_b);
            ln_texture = norm_texture.is_some();
            body.push(Op {
                norm_texture,
                ..layernorm(step, &act.x, &lw.ln_1_w, &lw.ln_1_b, &act.ln)
            });
        }
        let mut qkv = matmul(
            step,
            attn_in,
            |t| &t.c,
            &lw.c_attn_w,
            Some(&lw.c_attn_b),
            Epilogue::Store,
            &act.qkv,
            Fuse {
                kv: match kv {
                    KvCache::Textures { k, v } if attends => Some(Kv::Attend {
                        cache: [&k[l], &v[l]],
                        att_y: &act.att_y,
                    }),
                    KvCache::Textures { k, v } => Some(Kv::Append([&k[l], &v[l]])),
                    KvCache::Buffers { .. } => None,
                },
                ln: folded_ln(0),
                ..Fuse::default()
            },
        );
        // The norm wrote the projection's input texture itself.
        if ln_texture {
            qkv.iter_mut().for_each(|op| op.copy = None);
        }
        let qkv_fused = fused(&qkv);
        if pre_ln && qkv_fused && model.ln_folded.is_some() {
            body[ln_1].skip_in_decode = true;
        }
        body.extend(qkv);
        let att = AttentionParams {
            c,
            nh,
            hs,
            scale: 1.0 / (hs as f32).sqrt(),
        };
        let att = gpu.uniform("attention", &att);
        let (append, attention) = match kv {
            KvCache::Buffers { k, v } => (
                Op::new(
                    Kernel::KvAppend,
                    bind(
                        &p.kv_append,
                        "kv_append",
                        &[step, &width(c), &act.qkv, &k[l], &v[l]],
                    ),
                    Grid::Elements {
                        width: c,
                        wg: wg::KV_APPEND,
                    },
                ),
                Op::new(
                    Kernel::Attention,
                    bind(
                        &p.attention,
                        "attention",
                        &[step, &att, &act.qkv, &k[l], &v[l], &act.att_y],
                    ),
                    Grid::Heads { nh },
                ),
            ),
            KvCache::Textures { k, v } => {
                let w = width(c);
                (
                    Op::new(
                        Kernel::KvAppendTexture,
                        kernels::bind_resources(
                            gpu,
                            &p.textures().kv_append_texture,
                            "kv_append_texture",
                            kv_texture_resources(step, &w, &act.qkv, [&k[l], &v[l]], None),
                        ),
                        Grid::Elements {
                            width: c / 4,
                            wg: wg::KV_APPEND,
                        },
                    ),
                    Op::new(
                        Kernel::AttentionTexture,
                        kernels::bind_resources(
                            gpu,
                            &p.textures().attention_texture,
                            "attention_texture",
                            kv_texture_resources(
                                step,
                                &att,
                                &act.qkv,
                                [&k[l], &v[l]],
                                Some(&act.att_y),
                            ),
                        ),
                        Grid::Elements {
                            width: nh,
                            wg: wg::ATTENTION_TEXTURE,
                        },
                    ),
                )
            }
        };
        // The fused qkv projection appends the key and value itself, or runs the attention and
        // leaves the append to the output projection.
        let qkv_attends = qkv_fused && attends;
        body.push(Op {
            skip_in_decode: qkv_fused,
            ..append
        });
        body.push(Op {
            skip_in_decode: qkv_attends,
            ..attention
        });
        let proj = matmul(
            step,
            &act.att_y,
            |t| &t.c,
            &lw.attn_proj_w,
            Some(&lw.attn_proj_b),
            Epilogue::Residual,
            &act.x,
            Fuse {
                kv: match kv {
                    KvCache::Textures { k, v } if qkv_attends => Some(Kv::Deferred {
                        cache: [&k[l], &v[l]],
                        qkv: &act.qkv,
                    }),
                    _ => None,
                },
                ..Fuse::default()
            },
        );
        // One dispatch appends this step's key and value in either case.
        debug_assert_eq!(fused(&proj), qkv_attends, "the output projection appends");
        body.extend(proj);
        let (ln_w, ln_b) = if pre_ln {
            (&lw.ln_2_w, &lw.ln_2_b)
        } else {
            (&lw.ln_1_w, &lw.ln_1_b)
        };
        let ln_2 = body.len();
        let norm_texture = norm_texture(&mut init, ln_w, ln_b);
        let ln_texture = norm_texture.is_some();
        body.push(Op {
            norm_texture,
            ..layernorm(step, &act.x, ln_w, ln_b, &act.ln)
        });
        let mut fc = matmul(
            step,
            &act.ln,
            |t| &t.c,
            &lw.c_fc_w,
            Some(&lw.c_fc_b),
            Epilogue::activation(cfg.activation),
            &act.fc_h,
            Fuse {
                ln: folded_ln(1),
                ..Fuse::default()
            },
        );
        if ln_texture {
            fc.iter_mut().for_each(|op| op.copy = None);
        }
        if pre_ln && fused(&fc) && model.ln_folded.is_some() {
            body[ln_2].skip_in_decode = true;
        }
        body.extend(fc);
        body.extend(matmul(
            step,
            &act.fc_h,
            |t| &t.inner,
            &lw.mlp_proj_w,
            Some(&lw.mlp_proj_b),
            Epilogue::Residual,
            mlp_resid,
            Fuse::default(),
        ));
        if !pre_ln {
            body.push(layernorm(step, &act.ln, &lw.ln_2_w, &lw.ln_2_b, &act.x));
        }
    }

    // logits = ln_f(x[row0 .. row0 + rows]) @ head^T. Post-LN has no final norm: x is already
    // the last block's ln_2(ln), and the loader hands that norm over as ln_f, applied to ln.
    let hstep = &act.head_step;
    let head_in = if pre_ln { &act.x } else { &act.ln };
    let mut head = vec![layernorm(hstep, head_in, &w.ln_f_w, &w.ln_f_b, &act.lnf)];
    // With embedding projections the head sees project_out(lnf), (rows, E).
    let head_input = match (&w.project_out, &act.proj) {
        (Some(project_out), Some(proj)) => {
            head.extend(matmul(
                hstep,
                &act.lnf,
                |t| &t.head,
                project_out,
                None,
                Epilogue::Store,
                proj,
                Fuse::default(),
            ));
            proj
        }
        _ => &act.lnf,
    };
    let head_texture: fn(&InputTextures) -> &wgpu::Texture = match &w.project_out {
        Some(_) => |t| &t.words.as_ref().expect("made with the projections").1,
        None => |t| &t.head,
    };
    let logits = matmul(
        hstep,
        head_input,
        head_texture,
        model.head(),
        None,
        Epilogue::Store,
        &act.logits,
        Fuse {
            partials: Some(&act.partials),
            ..Fuse::default()
        },
    );
    // Greedy: the single largest logit into `token`. Where the head's one-row steps leave
    // per-workgroup candidates, from those (ceil(V / 32) of them); else over the logits.
    let argmax = match &p.texture {
        Some(t) if fused(&logits) => {
            let n = ArgmaxParams {
                v: v.div_ceil(32),
                n: 1,
                _pad: [0; 2],
            };
            let r = [&gpu.uniform("argmax", &n), &act.partials, &act.token];
            let r = [0, 3, 2].into_iter().zip(r.map(|b| b.as_entire_binding()));
            let bind = kernels::bind_at(gpu, &t.argmax_partials, "argmax_partials", r.collect());
            Op::new(Kernel::ArgmaxPartials, bind, Grid::One)
        }
        _ => {
            let n = ArgmaxParams {
                v,
                n: 1,
                _pad: [0; 2],
            };
            let r = [&gpu.uniform("argmax", &n), &act.logits, &act.token];
            Op::new(Kernel::Argmax, bind(&p.argmax, "argmax", &r), Grid::One)
        }
    };
    head.extend(logits);
    let sample = Op::new(
        Kernel::Sample,
        bind(
            &p.sample,
            "sample",
            &[&act.sample, &act.logits, &act.token, &act.recent],
        ),
        Grid::One,
    );
    // The N most likely tokens (--top): argmax with N > 1, over the logits.
    let top_op = Op::new(
        Kernel::Argmax,
        bind(
            &p.argmax,
            "argmax",
            &[&act.top_params, &act.logits, &act.top],
        ),
        Grid::One,
    );
    gpu.queue.submit([init.finish()]);
    (body, head, argmax, sample, top_op)
}

/// Bindings of kv_append_texture (no output buffer) and attention_texture (`out` = att_y).
fn kv_texture_resources<'a>(
    step: &'a wgpu::Buffer,
    uni: &'a wgpu::Buffer,
    qkv: &'a wgpu::Buffer,
    views: [&'a wgpu::TextureView; 2],
    out: Option<&'a wgpu::Buffer>,
) -> Vec<wgpu::BindingResource<'a>> {
    let mut r = vec![
        step.as_entire_binding(),
        uni.as_entire_binding(),
        qkv.as_entire_binding(),
        wgpu::BindingResource::TextureView(views[0]),
        wgpu::BindingResource::TextureView(views[1]),
    ];
    r.extend(out.map(|o| o.as_entire_binding()));
    r
}
