//! The kernel registry: every WGSL source, embedded with `include_str!`, its compute pipeline, and
//! the uniform structs each one reads. File, entry point and Rust names match.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Engine;
use crate::gpu::registry::{Key, Layout};
use crate::gpu::tensor::{GpuTensor, WeightDtype};

/// A WGSL kernel family: `shaders/{name}.wgsl`, whose main entry point is also `{name}`,
/// compiled after optional shared prelude files (plain concatenation, no templating).
pub struct KernelSource {
    /// File stem and main entry point, e.g. `"matmul"`.
    pub name: &'static str,
    /// WGSL prepended to [`wgsl`](Self::wgsl) in order (`step.wgsl`, `linear.wgsl`, ...).
    pub prelude: &'static [&'static str],
    /// The kernel's own WGSL source.
    pub wgsl: &'static str,
}

impl KernelSource {
    /// The complete module text: the preludes, then the kernel.
    pub fn source(&self) -> String {
        let mut s = String::new();
        for p in self.prelude {
            s.push_str(p);
            s.push('\n');
        }
        s.push_str(self.wgsl);
        s
    }
}

macro_rules! kernel {
    ($name:literal $(after $($prelude:literal),+)?) => {
        KernelSource {
            name: $name,
            prelude: &[$($(include_str!(concat!("../../shaders/", $prelude, ".wgsl"))),+)?],
            wgsl: include_str!(concat!("../../shaders/", $name, ".wgsl")),
        }
    };
}

/// Every kernel wgpt ships, in forward-pass order.
pub const KERNELS: &[KernelSource] = &[
    kernel!("embed" after "step", "format", "format_f16", "format_q8", "format_nibbles"),
    kernel!("layernorm" after "step"),
    kernel!("layernorm_rows" after "step"),
    kernel!("matmul" after "step", "activation", "format", "format_f16", "format_q8", "format_nibbles", "linear"),
    // matmul.wgsl's gemv with subgroup reductions, for adapters with the SUBGROUP feature (a
    // module of its own: naga rejects subgroup operations anywhere in a module without it).
    kernel!("gemv_subgroup" after "step", "activation", "format", "format_f16", "format_q8", "format_nibbles", "linear", "matmul"),
    kernel!("matmul_texture" after "step", "activation", "format", "format_f16", "format_q8", "format_nibbles", "linear"),
    // matmul_texture with inputs broadcast across subgroups (a module of its own, as above).
    kernel!("matmul_texture_subgroup" after "step", "rotary", "activation", "format", "format_f16", "format_q8", "format_nibbles", "softmax", "lanes8", "linear", "matmul_texture"),
    // A linear layer's epilogue as its own dispatch (plans without the epilogue fusion).
    kernel!("elementwise" after "step", "activation"),
    kernel!("rope" after "step", "rotary", "rotary_qkv"),
    kernel!("kv_append" after "step", "rotary", "rotary_qkv"),
    kernel!("kv_append_texture" after "step", "rotary", "rotary_qkv"),
    kernel!("attention" after "step", "rotary", "rotary_qkv", "softmax"),
    kernel!("attention_texture" after "step", "rotary", "rotary_qkv", "softmax"),
    kernel!("attention_texture_subgroup" after "step", "rotary", "rotary_qkv", "softmax", "lanes8", "attention_texture"),
    kernel!("argmax"),
    kernel!("sample"),
    kernel!("fill_random" after "format"),
    kernel!("sinusoid"),
    kernel!("pool"),
];

/// Most sequences one batched decode step advances (`Step::pos`).
pub const MAX_BATCH: usize = 64;

/// Per-step values shared by every kernel of a step; two live per session (the body's and the
/// head's), rewritten in place each step. Mirrors `struct Step` in step.wgsl (prepended to every
/// kernel that reads it, the linear layers included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Step {
    /// Rows (tokens) this dispatch works on: T for the body, the head's rows for the head.
    pub rows: u32,
    /// First row of the input the head reads (the body starts at 0).
    pub row0: u32,
    /// Position of the step's first token in the sequence.
    pub pos0: u32,
    /// The KV-cache slot of the sequence (a batch holds several; a session has slot 0).
    pub slot: u32,
    /// 1: a batched decode, row r is one token of slot `slots[r]` at position `pos[r]`.
    pub batch: u32,
    /// KV-cache rows per slot (n_ctx).
    pub slot_rows: u32,
    /// Padding to WGSL's 16-byte alignment of `pos`.
    pub _pad: [u32; 2],
    /// Batched decode: the position of row r's token in its slot (WGSL `array<vec4<u32>, 16>`).
    pub pos: [u32; MAX_BATCH],
    /// Batched decode: the KV-cache slot of row r's sequence.
    pub slots: [u32; MAX_BATCH],
}

impl Step {
    /// `rows` tokens of the sequence in slot 0 from position `pos0` (`row0`: see the field).
    pub fn new(rows: u32, row0: u32, pos0: u32) -> Step {
        Step {
            rows,
            row0,
            pos0,
            ..Zeroable::zeroed()
        }
    }
}

impl Default for Step {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// Mirrors `struct Params` in embed.wgsl: one dispatch per row chunk of `wte`, each writing
/// only the rows of x (T, C) whose token falls in its range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EmbedParams {
    /// C: embedding width.
    pub c: u32,
    /// First token id (row of `wte`) held by the bound chunk.
    pub tok0: u32,
    /// Rows of `wte` in the bound chunk.
    pub tok_rows: u32,
    /// Token embeddings are multiplied by this ([`Config::embed_scale`](crate::Config)).
    pub scale: f32,
    /// 1: add the token embedding (0: leave it out).
    pub tokens: u32,
    /// 1: add the position embedding (0: leave it out).
    pub positions: u32,
    /// Keeps the struct a multiple of 16 bytes.
    pub _pad: [u32; 2],
}

impl EmbedParams {
    /// Token plus position embedding of width `c`, from the wte chunk starting at `tok0`.
    pub fn new(c: u32, tok0: u32, tok_rows: u32, scale: f32) -> Self {
        EmbedParams {
            c,
            tok0,
            tok_rows,
            scale,
            tokens: 1,
            positions: 1,
            _pad: [0; 2],
        }
    }
}

/// Mirrors `struct Params` in layernorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct LayerNormParams {
    /// C: width of each normalised row.
    pub c: u32,
    /// Added to the variance ([`Config::layer_norm_epsilon`](crate::Config::layer_norm_epsilon)).
    pub eps: f32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 2],
}

/// Mirrors `struct Params` in linear.wgsl, read by matmul, gemv, matmul_texture and
/// gemv_texture: out (M, ldo) = a (M, K) @ w (N, K)ᵀ + bias, then the epilogue, where
/// M = `Step::rows`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MatmulParams {
    /// K: input width (columns of the weight chunk).
    pub k: u32,
    /// N: outputs this dispatch computes (rows of the weight chunk).
    pub n: u32,
    /// Row stride of the output (N, or V for a chunk of the head).
    pub ldo: u32,
    /// First output column this weight chunk writes.
    pub col0: u32,
    /// 1: add `bias[col0 + n]`; 0: the bound bias is a placeholder.
    pub has_bias: u32,
    /// NH HS, the queries' width, for the decode GEMVs that touch the KV cache ([`Kv`]); else 0.
    pub kv_c: u32,
    /// The fused layer norm's epsilon, for matmul_texture_subgroup.wgsl's NORM pipelines.
    pub ln_eps: f32,
    /// NKV HS, the keys' width, for the decode GEMVs that touch the KV cache; else 0.
    pub kv_w: u32,
}

/// What the linear kernels do with a result after the bias (linear.wgsl's EPILOGUE_*): an
/// override constant, one pipeline per epilogue ([`Linear`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// out = result.
    Store = 0,
    /// GPT-2's gelu_new, fused into the MLP's up-projection.
    Gelu = 1,
    /// out += result: the residual add, fused into the down-projections.
    Residual = 2,
    /// max(result, 0): OPT's feed-forward.
    Relu = 3,
    /// The exact (erf) GELU: XGLM's feed-forward.
    GeluErf = 4,
    /// x sigmoid(x): the Llama family's gate (elementwise.wgsl's `gate`).
    Silu = 5,
    /// Outputs are interleaved (gate, up) pairs; stores silu(gate) * up, half as many: the
    /// gated feed-forward's up-projection with its gate fused in (the `gate_epilogue` rule).
    GatedSilu = 6,
}

impl Epilogue {
    /// Every epilogue, in declaration order.
    pub const ALL: [Epilogue; 7] = [
        Epilogue::Store,
        Epilogue::Gelu,
        Epilogue::Residual,
        Epilogue::Relu,
        Epilogue::GeluErf,
        Epilogue::Silu,
        Epilogue::GatedSilu,
    ];

    /// The epilogue that applies a model's feed-forward activation.
    pub fn activation(a: crate::config::Activation) -> Epilogue {
        match a {
            crate::config::Activation::GeluTanh => Epilogue::Gelu,
            crate::config::Activation::GeluErf => Epilogue::GeluErf,
            crate::config::Activation::Relu => Epilogue::Relu,
            crate::config::Activation::Silu => Epilogue::Silu,
        }
    }
}

/// Mirrors `struct Params` in sinusoid.wgsl: a (rows, C) table from position `offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SinusoidParams {
    /// C: table width (even).
    pub c: u32,
    /// Rows to fill.
    pub rows: u32,
    /// Position of row 0.
    pub offset: u32,
    /// Keeps the struct 16 bytes.
    pub _pad: u32,
}

/// sinusoid.wgsl's frequencies f_i = 10000^(-i / (C/2 - 1)), each split as (hi, lo) with hi on
/// 12 significant bits, so a position times hi is exact in f32. (C/2) pairs.
pub fn sinusoid_frequencies(c: usize) -> Vec<[f32; 2]> {
    let half = c / 2;
    let step = (10000f64).ln() / (half.max(2) - 1) as f64;
    (0..half)
        .map(|i| {
            let f = (-(i as f64) * step).exp();
            let hi = f32::from_bits((f as f32).to_bits() & 0xFFFF_F000);
            [hi, (f - hi as f64) as f32]
        })
        .collect()
}

/// Mirrors `struct Params` in attention.wgsl and attention_texture.wgsl: causal attention of
/// the step's queries (in qkv (T, (NH + 2 NKV) HS)) over the KV cache (rows of NKV HS),
/// written to (T, NH HS). Also rope.wgsl's (`scale` unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttentionParams {
    /// NH: query heads.
    pub nh: u32,
    /// NKV: key and value heads (NH divides by it).
    pub nkv: u32,
    /// HS: head size (at most [`MAX_HEAD_SIZE`](crate::config::MAX_HEAD_SIZE)).
    pub hs: u32,
    /// Multiplies the queries: 1 / sqrt(HS).
    pub scale: f32,
}

impl AttentionParams {
    /// NH heads of HS, each with its own key and value head.
    pub fn heads(nh: u32, hs: u32) -> Self {
        AttentionParams {
            nh,
            nkv: nh,
            hs,
            scale: 1.0 / (hs as f32).sqrt(),
        }
    }
}

/// Rotary frequencies a uniform holds (rotary.wgsl's `inv_freq`): HS / 2 for HS up to
/// [`MAX_HEAD_SIZE`](crate::config::MAX_HEAD_SIZE).
pub const ROPE_FREQS: usize = 128;

/// rotary.wgsl's `inv_freq` uniform: `freqs` padded with zeros to [`ROPE_FREQS`].
pub fn rope_uniform(gpu: &Engine, label: &str, freqs: &[f32]) -> wgpu::Buffer {
    let mut padded = [0f32; ROPE_FREQS];
    for (p, f) in padded.iter_mut().zip(freqs) {
        *p = *f;
    }
    gpu.uniform(label, &padded)
}

/// Mirrors `struct Params` in kv_append.wgsl and kv_append_texture.wgsl: the widths of the
/// queries and of the keys in a qkv row (T, Q + 2 KV), and the head size (for ROPE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct KvParams {
    /// Q: NH HS, where the keys start.
    pub q: u32,
    /// KV: NKV HS, one cache row.
    pub kv: u32,
    /// HS.
    pub hs: u32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// One width, for elementwise.wgsl (mirrors its `struct Params { width, .. }`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct WidthParams {
    /// Values per row.
    pub width: u32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 3],
}

/// Mirrors `struct Params` in sample.wgsl: how one row of the logits is sampled, settings as in
/// [`Sampling`](crate::Sampling). The kernel's uniform holds [`MAX_BATCH`] of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SampleParams {
    /// V: vocabulary size (logits per row).
    pub v: u32,
    /// Divides the logits; must be > 0 (greedy runs as a tiny temperature with top-k 1).
    pub temperature: f32,
    /// Uniform draw in [0, 1) that picks the point on the filtered CDF.
    pub u: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: u32,
    /// Nucleus mass to keep; 1 = off.
    pub top_p: f32,
    /// Keep tokens at least this fraction as likely as the top one; 0 = off.
    pub min_p: f32,
    /// Repetition penalty on the recent tokens' logits; 1 = off.
    pub penalty: f32,
    /// Entries of the `recent` token buffer, from `recent0`, that the penalty looks at.
    pub n_recent: u32,
    /// Where this row's window starts in `recent`.
    pub recent0: u32,
    /// 0: the row is not sampled (a greedy row of a batched decode); 1: it is.
    pub sampled: u32,
    /// Padding to WGSL's 16-byte array stride.
    pub _pad: [u32; 2],
}

impl SampleParams {
    /// One row's settings: `s` at the draw `u`, penalising the `n_recent` ids from `recent0` of
    /// the recent-token buffer. Greedy with a repetition penalty runs as a tiny temperature with
    /// top-k 1.
    pub fn new(v: usize, s: &crate::Sampling, u: f32, recent0: usize, n_recent: usize) -> Self {
        let sampled = s.temperature > 0.0;
        SampleParams {
            v: v as u32,
            temperature: if sampled { s.temperature } else { 1e-4 },
            u: u.clamp(0.0, 1.0 - f32::EPSILON),
            top_k: if sampled { s.top_k } else { 1 },
            top_p: s.top_p,
            min_p: s.min_p,
            penalty: s.repeat_penalty,
            n_recent: n_recent as u32,
            recent0: recent0 as u32,
            sampled: 1,
            _pad: [0; 2],
        }
    }
}

/// Bytes of sample.wgsl's uniform: settings for up to [`MAX_BATCH`] rows.
pub const SAMPLE_ROWS_BYTES: u64 = (MAX_BATCH * std::mem::size_of::<SampleParams>()) as u64;

/// Mirrors `struct Params` in fill_random.wgsl: fills a buffer with pseudo-random values in
/// [center - scale, center + scale), for weights generated on the GPU (benchmarks, tests).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FillParams {
    /// u32 words to write (each one f32, or two f16 with `PACK_F16`).
    pub n: u32,
    /// Seed of the PCG hash; different seeds give different tensors.
    pub seed: u32,
    /// Half-width of the value range.
    pub scale: f32,
    /// Middle of the value range (1 for layer-norm gains, 0 otherwise).
    pub center: f32,
    /// q8 only: u32 words per stored row.
    pub row_words: u32,
    /// q8 only: how many words at the start of each row are int8 (the rest get scales).
    pub q_words: u32,
    /// q8 only, when not 0: the rows are a weight texture's; the first `q_rows` are int8, the
    /// rest scales (`q_words` is then unused).
    pub q_rows: u32,
    /// Keeps the struct a multiple of 16 bytes (uniform layout).
    pub _pad: u32,
}

/// Mirrors `struct Params` in argmax.wgsl: per row of logits (rows, V), the `n` largest logits
/// as (id, probability bits) pairs, largest first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ArgmaxParams {
    /// V: vocabulary size (logits per row).
    pub v: u32,
    /// How many of the largest logits to return (1 = greedy).
    pub n: u32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 2],
}

/// Mirrors `struct Params` in pool.wgsl: one sentence embedding (C) per sequence of rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct PoolParams {
    /// C: hidden width.
    pub c: u32,
    /// A [`PoolMode`] as u32.
    pub mode: u32,
    /// 1: divide each pooled vector by its L2 norm.
    pub normalize: u32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// How pool.wgsl reduces a sequence's hidden states (pool.wgsl's POOL_*), as sentence-transformers'
/// `Pooling` module does.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// The mean over the sequence's tokens (`pooling_mode_mean_tokens`).
    Mean = 0,
    /// The elementwise maximum over its tokens (`pooling_mode_max_tokens`).
    Max = 1,
    /// The first token, `[CLS]` (`pooling_mode_cls_token`).
    Cls = 2,
}

/// The most candidates `argmax.wgsl` returns.
pub const MAX_TOP: usize = 64;

/// Workgroup sizes, as declared in the shaders; dispatch counts are computed from them.
pub mod wg {
    /// embed.wgsl: invocations per workgroup along C (one per value).
    pub const EMBED: u32 = 64;
    /// matmul.wgsl: output rows and columns per workgroup.
    pub const MATMUL_TILE: u32 = 32;
    /// matmul.wgsl's gemv (and gemv_subgroup): outputs per workgroup (its 64 lanes split K).
    pub const GEMV_OUTPUTS: u32 = 4;
    /// Steps of at most this many rows use gemv, longer ones the tiled matmul. Measured on
    /// lavapipe (K = 768, N = 2304): at 1 row gemv is ~9x faster than the 32 x 32 tile; a
    /// batched decode of 8 rows (SmolLM2, q4) is 1.2x (textures) and 1.7x (buffers) faster
    /// through gemv than through the tile, which would leave 24 of its 32 rows idle.
    /// llama.cpp's CUDA backend draws the same line (MMVQ_MAX_BATCH_SIZE = 8).
    pub const GEMV_MAX_ROWS: u32 = 8;
    /// matmul_texture.wgsl: invocations per workgroup; each computes 4 columns (x 4 rows for
    /// matmul_texture).
    pub const LINEAR_TEXTURE: u32 = 8;
    /// gemv_texture's uniform input holds this many floats (rows x K): the 64 KiB every
    /// adapter allows in one uniform binding. Larger steps use matmul_texture.
    pub const GEMV_UNIFORM_FLOATS: u32 = 16384;
    /// layernorm_rows.wgsl: invocations (rows) per workgroup.
    pub const LAYERNORM_ROWS: u32 = 8;
    /// layernorm_rows_texture's gain-and-bias uniform (its `array<vec4<f32>, 2048>`), bytes:
    /// C <= 4096.
    pub const GAIN_BIAS_BYTES: u64 = 2048 * 16;
    /// attention_texture.wgsl: invocations per workgroup, one per head.
    pub const ATTENTION_TEXTURE: u32 = 8;
    /// kv_append.wgsl and kv_append_texture.wgsl: invocations per workgroup along C (one per
    /// value, or per 4 values for the texture variant).
    pub const KV_APPEND: u32 = 64;
    /// elementwise.wgsl: invocations per workgroup along the width (one per value).
    pub const ELEMENTWISE: u32 = 64;
    /// pool.wgsl: invocations per workgroup (one workgroup per sequence).
    pub const POOL: u32 = 64;
}

/// What a linear layer `out = epilogue(inp @ weightᵀ + bias)` binds besides its weight
/// (linear.wgsl's bindings).
pub struct LinearIo<'a> {
    /// The step uniform (M = its rows).
    pub step: &'a wgpu::Buffer,
    /// The input (M, K); gemv_texture reads it through a uniform binding.
    pub inp: &'a wgpu::Buffer,
    /// The texture layout's input texture, which `inp` is copied into for matmul_texture;
    /// `None` in the buffer layout.
    pub input_texture: Option<&'a wgpu::TextureView>,
    /// The bias (N), or a placeholder the kernels do not read (`false`).
    pub bias: (&'a wgpu::Buffer, bool),
    /// The output (M, N).
    pub out: &'a wgpu::Buffer,
    /// For the decode GEMVs that touch the layer's KV cache (see [`Kv`]); `None` for every
    /// other pipeline.
    pub kv: Option<Kv<'a>>,
    /// For the NORM pipelines (a layer norm fused in, its gain and bias folded into the
    /// weights): the weight's row sums (col0 + N) and the norm's epsilon.
    pub ln: Option<(&'a wgpu::Buffer, f32)>,
    /// For gemv_texture_argmax: the buffer of per-workgroup candidates (ceil(N / 32) x 2 u32).
    pub partials: Option<&'a wgpu::Buffer>,
}

/// The parts of a qkv row a decode GEMV that touches the KV cache reads: the queries' width
/// NH HS, then the keys' and the values' NKV HS each (a cache row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvWidths {
    /// NH HS.
    pub q: u32,
    /// NKV HS.
    pub kv: u32,
}

impl KvWidths {
    /// Every query head with its own key and value head: C each (GPT-2's).
    pub fn mha(c: u32) -> KvWidths {
        KvWidths { q: c, kv: c }
    }
}

/// What a decode GEMV does with the layer's KV cache (rgba32float textures, (slots * n_ctx,
/// NKV HS / 4)) besides its own outputs.
#[derive(Clone, Copy)]
pub enum Kv<'a> {
    /// gemv_texture_kv, the qkv projection: writes this row's key and value into the cache
    /// (bindings 7, 8).
    Append {
        /// The layer's key and value cache.
        cache: [&'a wgpu::TextureView; 2],
        /// The qkv row's parts.
        widths: KvWidths,
    },
    /// gemv_texture_attention, the qkv projection and the attention: reads the cache (11, 12)
    /// and writes the attention's output `att_y` (1, NH HS) (13).
    Attend {
        /// The layer's key and value cache.
        cache: [&'a wgpu::TextureView; 2],
        /// The attention's output.
        att_y: &'a wgpu::Buffer,
        /// The qkv row's parts.
        widths: KvWidths,
        /// A rotary model's frequencies (rotary.wgsl's `inv_freq`, 15) for the pipeline built
        /// with ROPE; any uniform of [`ROPE_FREQS`] floats for one without (never read).
        inv_freq: &'a wgpu::Buffer,
    },
    /// gemv_texture_append, the attention's output projection: copies this row's key and value
    /// from `qkv` (1, (NH + 2 NKV) HS) into the cache (7, 8; `qkv` at 14).
    Deferred {
        /// The layer's key and value cache.
        cache: [&'a wgpu::TextureView; 2],
        /// The qkv projection's output, holding this row's key and value.
        qkv: &'a wgpu::Buffer,
        /// The qkv row's parts.
        widths: KvWidths,
    },
}

impl Kv<'_> {
    /// The qkv row's parts.
    fn widths(&self) -> KvWidths {
        match *self {
            Kv::Append { widths, .. } | Kv::Attend { widths, .. } | Kv::Deferred { widths, .. } => {
                widths
            }
        }
    }

    /// Its bindings, numbered as matmul_texture_subgroup.wgsl declares them.
    fn resources(&self) -> Vec<(u32, wgpu::BindingResource<'_>)> {
        let view = wgpu::BindingResource::TextureView;
        match *self {
            Kv::Append { cache: [k, v], .. } => vec![(7, view(k)), (8, view(v))],
            Kv::Attend {
                cache: [k, v],
                att_y,
                inv_freq,
                ..
            } => vec![
                (11, view(k)),
                (12, view(v)),
                (13, att_y.as_entire_binding()),
                (15, inv_freq.as_entire_binding()),
            ],
            Kv::Deferred {
                cache: [k, v], qkv, ..
            } => {
                vec![(7, view(k)), (8, view(v)), (14, qkv.as_entire_binding())]
            }
        }
    }
}

/// One bind group per row chunk of `weight` for `pipe` (any pipeline of a [`Linear`] of the
/// layout: they share one layout), each with the chunk's output count: its textures with
/// `io.input_texture`, else its buffers.
pub fn linear_binds(
    gpu: &Engine,
    pipe: &wgpu::ComputePipeline,
    weight: &GpuTensor,
    io: &LinearIo,
) -> Vec<(wgpu::BindGroup, u32)> {
    let params = |row0: usize, rows: usize| {
        let p = MatmulParams {
            k: weight.cols as u32,
            n: rows as u32,
            ldo: weight.rows as u32,
            col0: row0 as u32,
            has_bias: io.bias.1 as u32,
            kv_c: io.kv.map_or(0, |kv| kv.widths().q),
            ln_eps: io.ln.map_or(0.0, |(_, eps)| eps),
            kv_w: io.kv.map_or(0, |kv| kv.widths().kv),
        };
        gpu.uniform("matmul", &p)
    };
    match io.input_texture {
        Some(input) => (weight.textures.iter())
            .map(|ch| {
                let u = params(ch.row0, ch.rows);
                let resources = vec![
                    io.step.as_entire_binding(),
                    u.as_entire_binding(),
                    wgpu::BindingResource::TextureView(input),
                    wgpu::BindingResource::TextureView(&ch.view),
                    io.bias.0.as_entire_binding(),
                    io.out.as_entire_binding(),
                    Engine::gemv_input(io.inp),
                ];
                let mut numbered: Vec<(u32, wgpu::BindingResource)> =
                    (0..).zip(resources).collect();
                if let Some(kv) = &io.kv {
                    numbered.extend(kv.resources());
                }
                // The NORM row sums; other pipelines of the layout get the bias as a placeholder.
                let row_sums = io.ln.map_or(io.bias.0, |(sums, _)| sums);
                numbered.push((9, row_sums.as_entire_binding()));
                if let Some(partials) = io.partials {
                    numbered.push((10, partials.as_entire_binding()));
                }
                let b = bind_at(gpu, pipe, "matmul_texture", numbered);
                (b, ch.rows as u32)
            })
            .collect(),
        None => (weight.chunks.iter())
            .map(|ch| {
                let u = params(ch.row0, ch.rows);
                let bufs = [io.step, &u, io.inp, &ch.buffer, io.bias.0, io.out];
                (bind(gpu, pipe, "matmul", &bufs), ch.rows as u32)
            })
            .collect(),
    }
}

/// One linear-layer kernel compiled once per [`Epilogue`] it is built for (an override constant
/// in linear.wgsl). All share one explicit layout, so a bind group made with any serves all.
pub struct Linear {
    by_epilogue: [Option<wgpu::ComputePipeline>; Epilogue::ALL.len()],
}

impl Linear {
    /// Entry `entry` of kernel family `family`, with the weight-dtype `constants`, for each of
    /// `epilogues` (a model builds the three it uses: each pipeline costs compile time at load).
    pub fn new(
        gpu: &Engine,
        family: &'static str,
        entry: &'static str,
        layout: Layout,
        constants: &[(&'static str, f64)],
        epilogues: &[Epilogue],
    ) -> Self {
        let by_epilogue = Epilogue::ALL.map(|e| {
            epilogues.contains(&e).then(|| {
                let mut c = constants.to_vec();
                c.push(("EPILOGUE", e as u32 as f64));
                entry_pipeline(gpu, family, entry, Some(layout), &c)
            })
        });
        Linear { by_epilogue }
    }

    /// The pipeline that ends in `epilogue`, which it must have been built for (a model's ops
    /// use only the epilogues its pipelines were built with).
    pub fn get(&self, epilogue: Epilogue) -> &wgpu::ComputePipeline {
        self.by_epilogue[epilogue as usize]
            .as_ref()
            .expect("linear pipelines are built for every epilogue their model uses")
    }
}

/// Every compute pipeline, built once per model.
pub struct Pipelines {
    /// embed.wgsl: x (T, C) = `wte[tokens] + wpe[positions]`.
    pub embed: wgpu::ComputePipeline,
    /// layernorm.wgsl: one workgroup per row.
    pub layernorm: wgpu::ComputePipeline,
    /// matmul.wgsl's tiled `matmul`: linear layers for steps of many rows (prefill).
    pub matmul: Linear,
    /// matmul.wgsl's `gemv`: linear layers for steps of at most [`wg::GEMV_MAX_ROWS`] rows
    /// (decode); shares `matmul`'s bind group layout.
    pub gemv: Linear,
    /// gemv_subgroup.wgsl: `gemv` with subgroup reductions, built where the device has the
    /// SUBGROUP feature (and used instead of `gemv` there).
    pub gemv_subgroup: Option<Linear>,
    /// kv_append.wgsl: copies the step's K and V from qkv (T, 3C) into the cache.
    pub kv_append: wgpu::ComputePipeline,
    /// attention.wgsl: causal attention over the cache buffers.
    pub attention: wgpu::ComputePipeline,
    /// argmax.wgsl: greedy choice and top candidates with their probabilities.
    pub argmax: wgpu::ComputePipeline,
    /// sample.wgsl: penalty, temperature, top-k / top-p / min-p and the draw, on the GPU.
    pub sample: wgpu::ComputePipeline,
    /// The texture layout's kernels, built only for a model using it (they need storage
    /// textures, which some devices lack).
    pub texture: Option<TexturePipelines>,
}

/// The kernels of the texture layout (matmul_texture.wgsl, kv_append_texture.wgsl,
/// attention_texture.wgsl).
pub struct TexturePipelines {
    /// matmul_texture.wgsl's main entry: 4 x 4 output blocks, input and weights as textures.
    pub matmul_texture: Linear,
    /// matmul_texture_subgroup.wgsl: `matmul_texture` with inputs shared by subgroup
    /// broadcasts, built where the device has subgroups of at least 8 lanes (and used instead
    /// of `matmul_texture` there).
    pub matmul_texture_subgroup: Option<Linear>,
    /// matmul_texture.wgsl's `gemv_texture`: one row whose input fits a 64 KiB uniform.
    pub gemv_texture: Linear,
    /// matmul_texture_subgroup.wgsl's `gemv_texture_subgroup`: `gemv_texture` with its input
    /// shared by subgroup broadcasts, built (and used instead) where `subgroups_of_8` holds.
    pub gemv_texture_subgroup: Option<Linear>,
    /// matmul_texture_subgroup.wgsl's `gemv_texture_kv`: `gemv_texture_subgroup` for the
    /// attention's qkv projection that also appends the row's key and value to the KV cache
    /// (kv_append_texture's work, one dispatch fewer per layer); plain store epilogue, its own
    /// layout ([`Kv::Append`]). Built where `subgroups_of_8` holds and the head size does not
    /// suit `gemv_texture_attention`.
    pub gemv_texture_kv: Option<wgpu::ComputePipeline>,
    /// `gemv_texture_kv` with the layer norm before it fused in (NORM; `LinearIo::ln`), for
    /// models whose norms are folded into the weights (`loader::LnFold`). Built as
    /// `gemv_texture_kv`.
    pub gemv_texture_kv_norm: Option<wgpu::ComputePipeline>,
    /// matmul_texture_subgroup.wgsl's `gemv_texture_attention`: the qkv projection and the
    /// attention in one dispatch, one workgroup per head ([`Kv::Attend`]; two dispatches fewer
    /// per layer than kv_append_texture and attention_texture, one fewer than
    /// `gemv_texture_kv`). Built where `subgroups_of_8` holds, for a head size fixed at a
    /// multiple of 32 of at most 256 ([`attends_in_gemv`]).
    pub gemv_texture_attention: Option<wgpu::ComputePipeline>,
    /// `gemv_texture_attention` with the layer norm before it fused in, as above.
    pub gemv_texture_attention_norm: Option<wgpu::ComputePipeline>,
    /// matmul_texture_subgroup.wgsl's `gemv_texture_append`: the attention's output projection
    /// (residual epilogue) after `gemv_texture_attention`, appending the row's key and value
    /// to the cache ([`Kv::Deferred`]). Built with `gemv_texture_attention`.
    pub gemv_texture_append: Option<wgpu::ComputePipeline>,
    /// `gemv_texture_subgroup` with the layer norm before it fused in, as above.
    pub gemv_texture_norm: Option<Linear>,
    /// matmul_texture_subgroup.wgsl's `gemv_texture_argmax`: the head's GEMV (plain store)
    /// leaving each workgroup's largest logit for `argmax_partials` (`LinearIo::partials`).
    /// Built where `subgroups_of_8` holds.
    pub gemv_texture_argmax: Option<wgpu::ComputePipeline>,
    /// argmax.wgsl's `argmax_partials`: greedy decoding's pick from those candidates.
    pub argmax_partials: wgpu::ComputePipeline,
    /// kv_append_texture.wgsl: writes K and V into rgba32float cache textures.
    pub kv_append_texture: wgpu::ComputePipeline,
    /// attention_texture.wgsl: one invocation per head and query, reading the cache textures.
    pub attention_texture: wgpu::ComputePipeline,
    /// layernorm_rows.wgsl: one invocation per row, no barriers.
    pub layernorm_rows: wgpu::ComputePipeline,
    /// layernorm_rows.wgsl's `layernorm_rows_texture`: multi-row steps' norms before a linear
    /// layer, from a texture of the rows into the layer's input texture.
    pub layernorm_rows_texture: wgpu::ComputePipeline,
}

/// Whether decode's qkv projection and attention run as one dispatch
/// (`gemv_texture_attention`) for heads of `head_size`: the lanes of a head's 8-lane workgroup
/// hold HS / 32 texels each of its query, key, value and output, at most 8.
pub fn attends_in_gemv(gpu: &Engine, head_size: Option<u32>) -> bool {
    subgroups_of_8(gpu) && head_size.is_some_and(gemv_attention_head_size)
}

/// Head sizes gemv_texture_attention takes: HS / 32 texels per lane of a head's 8-lane
/// workgroup, at most 8.
pub fn gemv_attention_head_size(hs: u32) -> bool {
    hs.is_multiple_of(32) && (32..=256).contains(&hs)
}

/// Whether the device has subgroups of at least 8 lanes, as matmul_texture_subgroup.wgsl
/// needs: its 8-lane workgroups broadcast from lanes 0 ..= 7 of their subgroup.
pub fn subgroups_of_8(gpu: &Engine) -> bool {
    gpu.device.features().contains(wgpu::Features::SUBGROUP) && gpu.info.subgroup_min_size >= 8
}

/// Kernel `name` (entry point of the same name) with its override `constants`, from the
/// device's pipeline registry.
pub fn pipeline(
    gpu: &Engine,
    name: &'static str,
    layout: Option<Layout>,
    constants: &[(&'static str, f64)],
) -> wgpu::ComputePipeline {
    entry_pipeline(gpu, name, name, layout, constants)
}

/// Entry point `entry` of kernel family `family` (e.g. `gemv` in `matmul.wgsl`), from the
/// device's pipeline registry (built on first request). `None`: the layout wgpu derives.
pub fn entry_pipeline(
    gpu: &Engine,
    family: &'static str,
    entry: &'static str,
    layout: Option<Layout>,
    constants: &[(&'static str, f64)],
) -> wgpu::ComputePipeline {
    let key = constants.iter().fold(Key::new(family, entry), |k, &(n, v)| k.with(n, v as u32));
    gpu.registry.get(gpu, &key.layout(layout.unwrap_or(Layout::Derived)))
}

/// Compiles entry point `entry` of kernel family `family` (the registry's builder).
pub(crate) fn compile(
    gpu: &Engine,
    family: &str,
    entry: &str,
    layout: Option<&wgpu::PipelineLayout>,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let src = KERNELS
        .iter()
        .find(|k| k.name == family)
        .expect("kernel registry names every pipeline");
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(src.name),
            source: wgpu::ShaderSource::Wgsl(src.source().into()),
        });
    gpu.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                ..Default::default()
            },
            cache: None,
        })
}

impl Pipelines {
    /// Every pipeline of the forward pass, for weights stored as `dtype`; with `textures` also
    /// the texture layout's. `head_size` fixes attention's head size as a constant (a model's
    /// pipelines: faster); `None` reads it from the parameters at run time (any shape). The
    /// linear layers are built for `epilogues`.
    pub fn new(
        gpu: &Engine,
        dtype: WeightDtype,
        textures: bool,
        head_size: Option<u32>,
        epilogues: &[Epilogue],
    ) -> Self {
        let weights: &[(&'static str, f64)] = &[
            ("WEIGHT_FORMAT", dtype.format().code() as f64),
        ];
        let head: &[(&'static str, f64)] = &[("HS", head_size.unwrap_or(0) as f64)];
        let norm = [weights, &[("NORM", 1.0)]].concat();
        // matmul and gemv share one explicit layout, so one bind group serves both and the
        // choice between them can be made per step.
        let linear = Layout::Linear { textures: false, extra: Extra::None };
        let texture = textures.then(|| {
            let linear_texture = Layout::Linear { textures: true, extra: Extra::None };
            // Decode's qkv projection fuses the attention where the head size allows (and the
            // output projection then appends to the cache), else only the cache append.
            let attends = attends_in_gemv(gpu, head_size);
            let appends = subgroups_of_8(gpu) && !attends;
            let kv_layout = Layout::Linear { textures: true, extra: Extra::Kv };
            let attend_layout = Layout::Linear { textures: true, extra: Extra::Attend };
            let hs = ("HS", head_size.unwrap_or(0) as f64);
            let with_hs = |c: &[(&'static str, f64)]| [c, &[hs]].concat();
            let kv_pipe = |entry: &'static str, layout: Layout, c: &[(&'static str, f64)]| {
                entry_pipeline(gpu, "matmul_texture_subgroup", entry, Some(layout), c)
            };
            TexturePipelines {
                matmul_texture: Linear::new(
                    gpu,
                    "matmul_texture",
                    "matmul_texture",
                    linear_texture,
                    weights,
                    epilogues,
                ),
                matmul_texture_subgroup: subgroups_of_8(gpu).then(|| {
                    Linear::new(
                        gpu,
                        "matmul_texture_subgroup",
                        "matmul_texture_subgroup",
                        linear_texture,
                        weights,
                        epilogues,
                    )
                }),
                gemv_texture: Linear::new(
                    gpu,
                    "matmul_texture",
                    "gemv_texture",
                    linear_texture,
                    weights,
                    epilogues,
                ),
                gemv_texture_kv: appends.then(|| kv_pipe("gemv_texture_kv", kv_layout, weights)),
                gemv_texture_kv_norm: appends
                    .then(|| kv_pipe("gemv_texture_kv", kv_layout, &norm)),
                gemv_texture_attention: attends
                    .then(|| kv_pipe("gemv_texture_attention", attend_layout, &with_hs(weights))),
                gemv_texture_attention_norm: attends
                    .then(|| kv_pipe("gemv_texture_attention", attend_layout, &with_hs(&norm))),
                gemv_texture_append: attends.then(|| {
                    let residual = [weights, &[("EPILOGUE", Epilogue::Residual as u32 as f64)]];
                    let layout = Layout::Linear { textures: true, extra: Extra::Deferred };
                    kv_pipe("gemv_texture_append", layout, &residual.concat())
                }),
                gemv_texture_norm: subgroups_of_8(gpu).then(|| {
                    Linear::new(
                        gpu,
                        "matmul_texture_subgroup",
                        "gemv_texture_subgroup",
                        linear_texture,
                        &norm,
                        epilogues,
                    )
                }),
                gemv_texture_subgroup: subgroups_of_8(gpu).then(|| {
                    Linear::new(
                        gpu,
                        "matmul_texture_subgroup",
                        "gemv_texture_subgroup",
                        linear_texture,
                        weights,
                        epilogues,
                    )
                }),
                gemv_texture_argmax: subgroups_of_8(gpu).then(|| {
                    entry_pipeline(
                        gpu,
                        "matmul_texture_subgroup",
                        "gemv_texture_argmax",
                        Some(Layout::Linear { textures: true, extra: Extra::Partials }),
                        weights,
                    )
                }),
                argmax_partials: entry_pipeline(gpu, "argmax", "argmax_partials", None, &[]),
                kv_append_texture: pipeline(gpu, "kv_append_texture", None, &[]),
                attention_texture: pipeline(gpu, "attention_texture", None, head),
                layernorm_rows: pipeline(gpu, "layernorm_rows", None, &[]),
                layernorm_rows_texture: entry_pipeline(
                    gpu,
                    "layernorm_rows",
                    "layernorm_rows_texture",
                    None,
                    &[],
                ),
            }
        });
        Pipelines {
            embed: pipeline(gpu, "embed", None, weights),
            layernorm: pipeline(gpu, "layernorm", None, &[]),
            matmul: Linear::new(gpu, "matmul", "matmul", linear, weights, epilogues),
            gemv: Linear::new(gpu, "matmul", "gemv", linear, weights, epilogues),
            gemv_subgroup: gpu
                .device
                .features()
                .contains(wgpu::Features::SUBGROUP)
                .then(|| {
                    Linear::new(
                        gpu,
                        "gemv_subgroup",
                        "gemv_subgroup",
                        linear,
                        weights,
                        epilogues,
                    )
                }),
            kv_append: pipeline(gpu, "kv_append", None, &[]),
            attention: pipeline(gpu, "attention", None, head),
            argmax: pipeline(gpu, "argmax", None, &[]),
            sample: pipeline(gpu, "sample", None, &[]),
            texture,
        }
    }

    /// The texture layout's pipelines; only asked for by a model (or test) that built them.
    pub fn textures(&self) -> &TexturePipelines {
        self.texture
            .as_ref()
            .expect("texture pipelines are built for every model using the texture layout")
    }
}

/// What a fused GEMV's layout adds to the linear layers' texture bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extra {
    /// Nothing.
    None,
    /// gemv_texture_kv's KV-cache textures (7, 8; write-only).
    Kv,
    /// gemv_texture_argmax's candidates (10; read-write).
    Partials,
    /// gemv_texture_attention's KV-cache textures (11, 12; read-only) and output (13).
    Attend,
    /// gemv_texture_append's KV-cache textures (7, 8; write-only) and qkv (14; read).
    Deferred,
}

/// The linear layers' layout, shared by every linear pipeline of an operand layout so one bind
/// group serves all: step, params (uniform); a, w (read: buffers, or with `textures`
/// rgba32float storage textures); bias (read); out (read-write); with textures also
/// gemv_texture's input x (uniform, 64 KiB) and the NORM pipelines' row sums (read; a
/// placeholder for the others); then what `extra` adds.
pub(crate) fn linear_layout_with(gpu: &Engine, textures: bool, extra: Extra) -> wgpu::PipelineLayout {
    // Inputs are rgba32float; weights raw bits (f32 or f16) in rgba32uint.
    let operand = |binding: u32| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: if textures {
            wgpu::BindingType::StorageTexture {
                access: wgpu::StorageTextureAccess::ReadOnly,
                format: if binding == 3 {
                    wgpu::TextureFormat::Rgba32Uint
                } else {
                    wgpu::TextureFormat::Rgba32Float
                },
                view_dimension: wgpu::TextureViewDimension::D2,
            }
        } else {
            wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: true },
                has_dynamic_offset: false,
                min_binding_size: None,
            }
        },
        count: None,
    };
    let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let read = wgpu::BufferBindingType::Storage { read_only: true };
    let mut entries = vec![
        entry(0, wgpu::BufferBindingType::Uniform),
        entry(1, wgpu::BufferBindingType::Uniform),
        operand(2),
        operand(3),
        entry(4, read),
        entry(5, wgpu::BufferBindingType::Storage { read_only: false }),
    ];
    if textures {
        // gemv_texture's input; the NORM pipelines' row sums (matmul_texture_subgroup.wgsl,
        // where every GEMV entry declares them).
        entries.extend([entry(6, wgpu::BufferBindingType::Uniform), entry(9, read)]);
    }
    let cache = |binding: u32, access| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::StorageTexture {
            access,
            format: wgpu::TextureFormat::Rgba32Float,
            view_dimension: wgpu::TextureViewDimension::D2,
        },
        count: None,
    };
    let (write, read_only) = (
        wgpu::StorageTextureAccess::WriteOnly,
        wgpu::StorageTextureAccess::ReadOnly,
    );
    match extra {
        Extra::None => {}
        Extra::Partials => entries.push(entry(
            10,
            wgpu::BufferBindingType::Storage { read_only: false },
        )),
        Extra::Kv => entries.extend([cache(7, write), cache(8, write)]),
        Extra::Attend => entries.extend([
            cache(11, read_only),
            cache(12, read_only),
            entry(13, wgpu::BufferBindingType::Storage { read_only: false }),
            entry(15, wgpu::BufferBindingType::Uniform),
        ]),
        Extra::Deferred => entries.extend([cache(7, write), cache(8, write), entry(14, read)]),
    }
    let bgl = gpu
        .device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("linear"),
            entries: &entries,
        });
    gpu.device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("linear"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        })
}

/// A bind group for `pipeline` binding `buffers` (whole) at 0, 1, 2, ...
pub fn bind(
    gpu: &Engine,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let resources = buffers.iter().map(|b| b.as_entire_binding()).collect();
    bind_resources(gpu, pipeline, label, resources)
}

/// A bind group for `pipeline` binding `resources` at 0, 1, 2, ...
pub fn bind_resources(
    gpu: &Engine,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    resources: Vec<wgpu::BindingResource>,
) -> wgpu::BindGroup {
    bind_at(gpu, pipeline, label, (0..).zip(resources).collect())
}

/// A bind group of `pipeline`'s group 0 with each resource at the binding number given.
pub fn bind_at(
    gpu: &Engine,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    resources: Vec<(u32, wgpu::BindingResource)>,
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = resources
        .into_iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
        .collect();
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}
