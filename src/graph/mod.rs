//! The model graph: what a forward pass computes, in model terms, as a list of typed ops over
//! named activations. A family ([`crate::families`]) builds one per model; the planner
//! ([`crate::plan`]) lowers it to dispatches for the adapter, and the CPU reference
//! ([`crate::reference::run`]) interprets it. No adapter, operand layout or weight format
//! appears here: a weight is whatever handle `W` the caller's weight set holds (a GPU tensor, a
//! host vector).
//!
//! Activations are scratch buffers by role (llm.c's style), each with its shape; a step of T
//! tokens runs the body on T rows and the head on the rows whose logits are wanted.

use crate::config::Activation;

/// An activation buffer, by role. Shapes: T rows in the body, the head's rows in the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// (T, C): the residual stream.
    X,
    /// (T, C): a norm's output (post-LN blocks keep their stream here between norms).
    Ln,
    /// (T, (NH + 2 NKV) HS): queries, keys and values, heads side by side.
    Qkv,
    /// (T, NH HS): the attention's output, heads side by side.
    AttY,
    /// (T, n_inner): the feed-forward's hidden layer.
    FcH,
    /// (T, 2 n_inner): a gated feed-forward's gate and up projections, interleaved
    /// (g0 u0 g1 u1 ...).
    GateUp,
    /// (T, E): token embeddings before an input projection.
    Emb,
    /// (head rows, C): the final norm of the rows the head sees.
    Lnf,
    /// (head rows, E): the final hidden state projected to the head's width.
    Proj,
    /// (head rows, V).
    Logits,
    /// (B, C): one pooled vector per sequence.
    Pooled,
    /// (T, NH HS): cross-attention queries.
    Query,
    /// (T, 2 NKV HS): keys then values, for a cross-attention cache.
    Kv,
}

/// How a norm standardises a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// (x - mean) / sqrt(var + eps) * gain + bias.
    Layer,
    /// x / sqrt(mean(x²) + eps) * gain (Llama's RMSNorm).
    Rms,
}

/// Which keys and values an attention reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Causal: the step's own rows appended to layer `layer`'s KV cache, attending to every
    /// cached position up to their own.
    Cache {
        /// The layer whose cache it is.
        layer: usize,
    },
    /// Bidirectional over the packed sequence a row belongs to (its span of rows), with keys
    /// and values kept only for the pass.
    Sequence,
    /// Every row of decoder layer `layer`'s cross-attention cache (the encoder output's keys
    /// and values, [`Op::StoreKv`]); queries alone in the attention's input (`Act::Query`).
    Cross {
        /// The decoder layer.
        layer: usize,
    },
}

/// How each sequence's rows reduce to one vector (sentence-transformers' pooling).
pub use crate::gpu::kernels::PoolMode;

/// A weight matrix with its optional bias: `y = x Wᵀ + b`, W (N, K) output-major.
#[derive(Clone, Copy, Debug)]
pub struct Dense<W> {
    /// (N, K).
    pub w: W,
    /// (N), if the layer has one.
    pub b: Option<W>,
}

/// What a linear layer does with `x Wᵀ + b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// out = y.
    Store,
    /// out = act(y).
    Act(Activation),
    /// out += y: the residual add.
    Add,
}

/// One op of the forward pass.
#[derive(Clone, Debug)]
pub enum Op<W> {
    /// `out = scale * table[tokens] + positions[position]`; either part may be absent. `packed`:
    /// rows are packed sequences and positions count from each one's first row.
    Embed {
        /// The token table (V, width) and its scale.
        tokens: Option<(W, f32)>,
        /// The position table (n_ctx, width).
        positions: Option<W>,
        /// Values per row.
        width: usize,
        /// Positions from each packed sequence's first row (encoders), else from the step's.
        packed: bool,
        /// (rows, width).
        out: Act,
    },
    /// `out = norm(inp) * gain + bias`, row by row.
    Norm {
        /// Layer norm (or, later, RMS).
        kind: NormKind,
        /// (rows, C) in.
        inp: Act,
        /// (rows, C) out.
        out: Act,
        /// (C).
        gain: W,
        /// (C), if the norm has one.
        bias: Option<W>,
        /// Added to the variance.
        eps: f32,
    },
    /// `out = then(inp Wᵀ + b)`.
    Linear {
        /// (rows, K).
        inp: Act,
        /// (rows, N).
        out: Act,
        /// W (N, K) and b (N).
        dense: Dense<W>,
        /// The epilogue.
        then: Then,
    },
    /// Rotary position embeddings on `qkv`'s queries and keys, in place: in each head, dims i
    /// and i + HS/2 rotated by the row's position × `inv_freq[i]`.
    Rope {
        /// (rows, (NH + 2 NKV) HS).
        qkv: Act,
        /// (HS / 2).
        inv_freq: W,
    },
    /// `out[:, j] = act(inp[:, 2j]) * inp[:, 2j + 1]`: a gated feed-forward's hidden layer.
    Gate {
        /// (rows, 2 n_inner): gate and up outputs interleaved.
        inp: Act,
        /// (rows, n_inner).
        out: Act,
        /// Applied to the gate.
        act: Activation,
    },
    /// Scaled dot-product attention of `qkv`'s queries over `keys`, written to `out`.
    Attention {
        /// (rows, (NH + 2 NKV) HS): queries, keys, values.
        qkv: Act,
        /// (rows, NH HS).
        out: Act,
        /// Which keys and values each query sees.
        keys: Keys,
        /// NH.
        n_head: usize,
        /// Multiplies the scores (1 / sqrt(HS); 1 for T5).
        scale: f32,
        /// Added to the scores by query-key distance: T5's relative position bias (its table
        /// as [`crate::t5::attention_bias`] lays it out, one 32-bit word per f32).
        bias: Option<W>,
    },
    /// `inp`'s rows (keys, then values) into decoder layer `layer`'s cross-attention cache,
    /// from row 0: an encoder-decoder's encoder output, projected once per source.
    StoreKv {
        /// (T, 2 NKV HS).
        inp: Act,
        /// The decoder layer.
        layer: usize,
    },
    /// One vector per packed sequence of `inp`'s rows, optionally L2-normalised.
    Pool {
        /// (T, C).
        inp: Act,
        /// (B, C).
        out: Act,
        /// Mean, max or first row.
        mode: PoolMode,
        /// Divide each vector by its L2 norm.
        normalize: bool,
    },
}

/// A forward pass: the body runs on a step's T rows, the head on the rows whose logits are
/// wanted (empty for encoders, which end in a pool).
#[derive(Clone, Debug)]
pub struct Graph<W> {
    /// Widths the ops' activations have.
    pub dims: Dims,
    /// Embedding and blocks.
    pub body: Vec<Op<W>>,
    /// The final norm and the output projection.
    pub head: Vec<Op<W>>,
}

/// The widths of a graph's activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// C.
    pub c: usize,
    /// The feed-forward's hidden width.
    pub inner: usize,
    /// E: the token embeddings' width (C without projections).
    pub embed: usize,
    /// V (0 for encoders).
    pub vocab: usize,
    /// NH.
    pub n_head: usize,
    /// NKV: key and value heads (query head h reads key head h / (NH / NKV)).
    pub n_kv_head: usize,
    /// HS.
    pub head_size: usize,
}

impl Dims {
    /// Widths of a model whose heads split C evenly and have their own keys.
    pub fn plain(c: usize, inner: usize, embed: usize, vocab: usize, n_head: usize) -> Dims {
        Dims {
            c,
            inner,
            embed,
            vocab,
            n_head,
            n_kv_head: n_head,
            head_size: c / n_head.max(1),
        }
    }

    /// NH HS: the queries' width.
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_size
    }

    /// NKV HS: the keys' width, one KV-cache row.
    pub fn kv_width(&self) -> usize {
        self.n_kv_head * self.head_size
    }

    /// Values per row of `act`.
    pub fn width(&self, act: Act) -> usize {
        match act {
            Act::X | Act::Ln | Act::Lnf | Act::Pooled => self.c,
            Act::AttY => self.q_width(),
            Act::Qkv => self.q_width() + 2 * self.kv_width(),
            Act::FcH => self.inner,
            Act::GateUp => 2 * self.inner,
            Act::Emb | Act::Proj => self.embed,
            Act::Logits => self.vocab,
            Act::Query => self.q_width(),
            Act::Kv => 2 * self.kv_width(),
        }
    }
}

/// Builds a graph op by op, the way a family's forward reads.
pub struct Builder<W> {
    graph: Graph<W>,
    in_head: bool,
}

impl<W> Builder<W> {
    /// An empty graph of these widths.
    pub fn new(dims: Dims) -> Self {
        Builder {
            graph: Graph {
                dims,
                body: Vec::new(),
                head: Vec::new(),
            },
            in_head: false,
        }
    }

    fn push(&mut self, op: Op<W>) {
        match self.in_head {
            true => self.graph.head.push(op),
            false => self.graph.body.push(op),
        }
    }

    /// What follows runs on the head's rows.
    pub fn head(&mut self) {
        self.in_head = true;
    }

    /// `out = scale * tokens[ids] + positions[pos]`.
    pub fn embed(&mut self, tokens: Option<(W, f32)>, positions: Option<W>, out: Act) {
        let width = self.graph.dims.width(out);
        self.push(Op::Embed {
            tokens,
            positions,
            width,
            packed: false,
            out,
        });
    }

    /// `embed` with positions counted from each packed sequence's first row.
    pub fn embed_packed(&mut self, tokens: W, positions: W, out: Act) {
        let width = self.graph.dims.width(out);
        self.push(Op::Embed {
            tokens: Some((tokens, 1.0)),
            positions: Some(positions),
            width,
            packed: true,
            out,
        });
    }

    /// `out = layer_norm(inp) * gain + bias`.
    pub fn layer_norm(&mut self, inp: Act, out: Act, gain: W, bias: Option<W>, eps: f32) {
        self.push(Op::Norm {
            kind: NormKind::Layer,
            inp,
            out,
            gain,
            bias,
            eps,
        });
    }

    /// `out = rms_norm(inp) * gain`.
    pub fn rms_norm(&mut self, inp: Act, out: Act, gain: W, eps: f32) {
        self.push(Op::Norm {
            kind: NormKind::Rms,
            inp,
            out,
            gain,
            bias: None,
            eps,
        });
    }

    /// Rotary embeddings on `qkv`'s queries and keys.
    pub fn rope(&mut self, qkv: Act, inv_freq: W) {
        self.push(Op::Rope { qkv, inv_freq });
    }

    /// `out = act(gate) * up`, from `inp`'s interleaved (gate, up) pairs.
    pub fn gate(&mut self, inp: Act, out: Act, act: Activation) {
        self.push(Op::Gate { inp, out, act });
    }

    /// `out = then(inp Wᵀ + b)`.
    pub fn linear(&mut self, inp: Act, out: Act, w: W, b: Option<W>, then: Then) {
        self.push(Op::Linear {
            inp,
            out,
            dense: Dense { w, b },
            then,
        });
    }

    /// Causal self-attention over layer `layer`'s KV cache.
    pub fn causal_attention(&mut self, qkv: Act, out: Act, layer: usize) {
        self.attention(qkv, out, Keys::Cache { layer });
    }

    /// Attention of every row over its own packed sequence.
    pub fn bidirectional_attention(&mut self, qkv: Act, out: Act) {
        self.attention(qkv, out, Keys::Sequence);
    }

    fn attention(&mut self, qkv: Act, out: Act, keys: Keys) {
        let d = self.graph.dims;
        self.push(Op::Attention {
            qkv,
            out,
            keys,
            n_head: d.n_head,
            scale: 1.0 / (d.head_size as f32).sqrt(),
            bias: None,
        });
    }

    /// T5's attention: scores unscaled (its initialisation folds HS^-0.5 into the weights),
    /// plus the relative position `bias` where given.
    pub fn unscaled_attention(&mut self, qkv: Act, out: Act, keys: Keys, bias: Option<W>) {
        self.push(Op::Attention {
            qkv,
            out,
            keys,
            n_head: self.graph.dims.n_head,
            scale: 1.0,
            bias,
        });
    }

    /// `inp`'s keys and values into decoder layer `layer`'s cross-attention cache.
    pub fn store_kv(&mut self, inp: Act, layer: usize) {
        self.push(Op::StoreKv { inp, layer });
    }

    /// One vector per packed sequence.
    pub fn pool(&mut self, inp: Act, out: Act, mode: PoolMode, normalize: bool) {
        self.push(Op::Pool {
            inp,
            out,
            mode,
            normalize,
        });
    }

    /// The graph built.
    pub fn finish(self) -> Graph<W> {
        self.graph
    }
}
