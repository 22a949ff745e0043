//! Fusions as named rewrite rules over a graph's ops, each with its guard (capabilities,
//! shapes, bucket). A rule marks ops so the lowering runs one kernel for a neighbour's work
//! too; with every rule off, each graph op lowers to its own dispatches. Rules can be switched
//! off at load ([`crate::LoadOptions::fuse`], or `WGPT_FUSE=-qkv_attend`) for A/B runs.

use crate::Error;
use crate::config::Activation;
use crate::gpu::kernels::wg;
use crate::gpu::tensor::{GpuTensor, WeightDtype};
use crate::graph::{Act, Keys, NormKind, Op, Then};
use crate::plan::{Bucket, Caps};

/// A fusion rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Linear layers end in their activation or residual add (linear.wgsl's epilogues) instead
    /// of an elementwise dispatch after them.
    Epilogue,
    /// Decode's qkv projection runs the attention too (gemv_texture_attention), and the
    /// attention's output projection appends the step's key and value to the cache
    /// (gemv_texture_append); a rope between them runs there too (HS % 64 == 0), and grouped
    /// query heads each compute their key head's key and value. Texture layout, subgroups of
    /// 8, 32 <= HS <= 256, HS % 32 == 0, scores scaled by 1 / sqrt(HS), both projections one
    /// texture chunk.
    QkvAttend,
    /// Decode's qkv projection appends the key and value to the cache (gemv_texture_kv), where
    /// the attention is not fused in. Texture layout, subgroups of 8, chunks of whole texels.
    QkvAppend,
    /// A pre-LN norm folded into the projection after it, its dispatch gone: a layer norm's
    /// gain and bias in the weights at load (`loader::LnFold`) and its standardisation in
    /// decode's GEMV (NORM); an RMSNorm's gain scaling that GEMV's input (RMS), so packed
    /// weights need no folding. Texture layout, subgroups of 8, weights not f32; not the
    /// head's final norm.
    FoldNorm,
    /// Decode's head GEMV leaves per-workgroup argmax candidates, so greedy picking reads
    /// ceil(V / 32) candidates instead of V logits (gemv_texture_argmax, argmax_partials).
    HeadArgmax,
    /// Multi-row steps' pre-LN norms read a texture copy of the stream and write the next
    /// linear layer's input texture themselves (layernorm_rows_texture), saving its copy.
    NormTexture,
    /// A gated feed-forward's up-projection applies the gate in its store (silu(gate) * up of
    /// its interleaved outputs: linear.wgsl's GATED_SILU epilogue) instead of a gate dispatch.
    GateEpilogue,
    /// Rotary embeddings applied where the keys and queries are read: kv_append rotates the
    /// keys it caches, the attention its queries (ROPE in both), instead of a rope dispatch.
    RopeAttend,
}

impl Rule {
    /// Every rule, in the order the planner applies them.
    pub const ALL: [Rule; 8] = [
        Rule::Epilogue,
        Rule::QkvAttend,
        Rule::QkvAppend,
        Rule::FoldNorm,
        Rule::HeadArgmax,
        Rule::NormTexture,
        Rule::GateEpilogue,
        Rule::RopeAttend,
    ];

    /// The rule's name in `WGPT_FUSE` and `--fuse`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Epilogue => "epilogue",
            Rule::QkvAttend => "qkv_attend",
            Rule::QkvAppend => "qkv_append",
            Rule::FoldNorm => "fold_norm",
            Rule::HeadArgmax => "head_argmax",
            Rule::NormTexture => "norm_texture",
            Rule::GateEpilogue => "gate_epilogue",
            Rule::RopeAttend => "rope_attend",
        }
    }
}

/// Which rules may apply: every one by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fusions(u16);

impl Default for Fusions {
    fn default() -> Self {
        Fusions::all()
    }
}

impl Fusions {
    /// The variable [`Fusions::from_env`] reads.
    pub const ENV: &'static str = "WGPT_FUSE";

    /// Every rule on.
    pub fn all() -> Fusions {
        Fusions((1 << Rule::ALL.len()) - 1)
    }

    /// Every rule off: one kernel per graph op.
    pub fn none() -> Fusions {
        Fusions(0)
    }

    /// Whether `rule` is on.
    pub fn has(self, rule: Rule) -> bool {
        self.0 & (1 << rule as u16) != 0
    }

    /// These fusions with `rule` on or off.
    pub fn set(self, rule: Rule, on: bool) -> Fusions {
        match on {
            true => Fusions(self.0 | 1 << rule as u16),
            false => Fusions(self.0 & !(1 << rule as u16)),
        }
    }

    /// The rules that are on, by name.
    pub fn names(self) -> Vec<&'static str> {
        Rule::ALL
            .iter()
            .filter(|&&r| self.has(r))
            .map(|r| r.name())
            .collect()
    }

    /// `WGPT_FUSE`, when set (see [`FromStr`](std::str::FromStr)).
    pub fn from_env() -> crate::Result<Option<Fusions>> {
        match std::env::var(Self::ENV) {
            Ok(v) => Ok(Some(v.parse()?)),
            Err(_) => Ok(None),
        }
    }
}

impl std::str::FromStr for Fusions {
    type Err = Error;
    /// `all`, `none`, or a comma list: `-rule` / `+rule` edit every rule on (when the list
    /// starts with one of them) or the rules before them; a bare name turns only that rule on.
    fn from_str(s: &str) -> crate::Result<Fusions> {
        let bad = || {
            let names: Vec<_> = Rule::ALL.iter().map(|r| r.name()).collect();
            Error::option(
                Fusions::ENV,
                format!("{s:?}"),
                &format!(
                    "all, none, or a comma list of rules, each optionally prefixed + or -: {}",
                    names.join(", ")
                ),
            )
        };
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        let edits = items.first().is_some_and(|i| i.starts_with(['-', '+']));
        let mut f = if edits {
            Fusions::all()
        } else {
            Fusions::none()
        };
        for item in items {
            let (on, name) = match item.as_bytes()[0] {
                b'-' => (false, &item[1..]),
                b'+' => (true, &item[1..]),
                _ => (true, item),
            };
            f = match name {
                "all" => Fusions::all(),
                "none" => Fusions::none(),
                _ => {
                    let rule = Rule::ALL
                        .into_iter()
                        .find(|r| r.name() == name)
                        .ok_or_else(bad)?;
                    f.set(rule, on)
                }
            };
        }
        Ok(f)
    }
}

/// What the rules fused into one graph op, for one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Fuse {
    /// Its work is done by a neighbour's dispatch.
    pub skip: bool,
    /// A linear's activation or residual add runs as an elementwise dispatch after it.
    pub split_then: bool,
    /// A linear that touches its layer's KV cache.
    pub kv: Option<KvFuse>,
    /// A linear that standardises this activation itself (its folded norm's input), with the
    /// norm's epsilon and kind.
    pub norm_of: Option<(Act, f32, NormKind)>,
    /// The head's linear leaving argmax candidates.
    pub argmax: bool,
    /// A norm writing the input texture of the linear after it.
    pub to_texture: bool,
    /// A linear whose input texture was written by the norm before it.
    pub input_ready: bool,
    /// An attention whose key and value a projection appends.
    pub appended: bool,
    /// A linear whose store applies the gate after it, writing the gate's output.
    pub gate_into: Option<Act>,
    /// An attention that applies the rotary embedding before it (to its queries, and to the
    /// keys its kv_append caches).
    pub rope: bool,
}

/// How a decode GEMV touches its layer's KV cache ([`crate::gpu::kernels::Kv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvFuse {
    /// The qkv projection writes layer `layer`'s key and value into the cache.
    Append { layer: usize },
    /// The qkv projection runs the attention over the cache into `out` (`rope`: and the rope
    /// op between them, which the lowering finds after it).
    Attend { layer: usize, out: Act, rope: bool },
    /// The output projection appends the key and value from `qkv`.
    Deferred { layer: usize, qkv: Act },
}

/// The graph ops of one section with what the rules fused into each, for `bucket`.
pub(crate) fn apply(
    ops: &[Op<&GpuTensor>],
    caps: &Caps,
    bucket: Bucket,
    fusions: Fusions,
    head: bool,
) -> Vec<Fuse> {
    let mut fuse = vec![Fuse::default(); ops.len()];
    for rule in Rule::ALL.into_iter().filter(|&r| fusions.has(r)) {
        match rule {
            Rule::Epilogue => {}
            Rule::QkvAttend => qkv_attend(ops, caps, bucket, &mut fuse),
            Rule::QkvAppend => qkv_append(ops, caps, bucket, &mut fuse),
            Rule::FoldNorm => fold_norm(ops, caps, bucket, &mut fuse),
            Rule::HeadArgmax if head => head_argmax(ops, caps, bucket, &mut fuse),
            Rule::HeadArgmax => {}
            Rule::NormTexture if !head => norm_texture(ops, caps, bucket, &mut fuse),
            Rule::NormTexture => {}
            Rule::GateEpilogue => gate_epilogue(ops, &mut fuse),
            Rule::RopeAttend => rope_attend(ops, &mut fuse),
        }
    }
    if !fusions.has(Rule::Epilogue) {
        for (f, op) in fuse.iter_mut().zip(ops) {
            f.split_then = matches!(op, Op::Linear { then, .. } if *then != Then::Store);
        }
    }
    fuse
}

/// The weight of a linear op.
fn weight<'a>(op: &Op<&'a GpuTensor>) -> Option<&'a GpuTensor> {
    match op {
        Op::Linear { dense, .. } => Some(dense.w),
        _ => None,
    }
}

/// Whether `w` can run in a decode GEMV of the subgroup texture kernels.
fn decode_gemv(caps: &Caps, bucket: Bucket, w: &GpuTensor) -> bool {
    caps.textures
        && caps.subgroups8
        && bucket == Bucket::Decode
        && w.cols as u32 <= wg::GEMV_UNIFORM_FLOATS
        && !w.textures.is_empty()
}

/// Four outputs (one cache texel) per invocation must not straddle weight chunks.
fn texels(w: &GpuTensor) -> bool {
    w.textures
        .iter()
        .all(|ch| ch.row0 % 4 == 0 && ch.rows % 4 == 0)
}

/// An attention over layer `layer`'s cache reading `qkv`: (layer, qkv, out).
fn cache_attention(op: Option<&Op<&GpuTensor>>, qkv: Act) -> Option<(usize, Act, Act)> {
    match op {
        Some(Op::Attention {
            qkv: read,
            out,
            keys: Keys::Cache { layer },
            ..
        }) if *read == qkv => Some((*layer, qkv, *out)),
        _ => None,
    }
}

/// [linear → qkv, attention(cache layer) → out] at `i`: (layer, qkv, out).
fn attention_at(ops: &[Op<&GpuTensor>], i: usize) -> Option<(usize, Act, Act)> {
    match ops.get(i) {
        Some(Op::Linear { out: q, .. }) => cache_attention(ops.get(i + 1), *q),
        _ => None,
    }
}

/// [linear → qkv, rope(qkv), attention(cache layer) → out] at `i`: (layer, qkv, out).
fn rope_attention_at(ops: &[Op<&GpuTensor>], i: usize) -> Option<(usize, Act, Act)> {
    match (ops.get(i), ops.get(i + 1)) {
        (Some(Op::Linear { out: q, .. }), Some(Op::Rope { qkv, .. })) if q == qkv => {
            cache_attention(ops.get(i + 2), *q)
        }
        _ => None,
    }
}

fn qkv_attend(ops: &[Op<&GpuTensor>], caps: &Caps, bucket: Bucket, fuse: &mut [Fuse]) {
    if !caps.attends() {
        return;
    }
    for i in 0..ops.len() {
        // With a rope between, the kernel rotates a lane's dims and their partners HS / 2 on,
        // which one lane holds where HS % 64 == 0.
        let (rope, found) = match attention_at(ops, i) {
            Some(found) => (false, found),
            None => match rope_attention_at(ops, i) {
                Some(found) if caps.head_size.is_multiple_of(64) => (true, found),
                _ => continue,
            },
        };
        let (layer, qkv, out) = found;
        let at = i + 1 + rope as usize;
        let (Some(w_qkv), Some(w_proj)) = (weight(&ops[i]), ops.get(at + 1).and_then(weight))
        else {
            continue;
        };
        // The output projection reads the attention's output and adds to the stream; the
        // fused kernel adds no position bias and scales by 1 / sqrt(HS).
        let scale = 1.0 / (caps.head_size as f32).sqrt();
        let next = matches!(ops[at + 1], Op::Linear { inp, then: Then::Add, .. } if inp == out)
            && matches!(ops[at], Op::Attention { bias: None, scale: s, .. } if s == scale);
        let one = |w: &GpuTensor| w.textures.len() == 1 && decode_gemv(caps, bucket, w);
        if next && one(w_qkv) && one(w_proj) {
            fuse[i].kv = Some(KvFuse::Attend { layer, out, rope });
            fuse[i + 1..=at].iter_mut().for_each(|f| f.skip = true);
            fuse[at + 1].kv = Some(KvFuse::Deferred { layer, qkv });
        }
    }
}

fn qkv_append(ops: &[Op<&GpuTensor>], caps: &Caps, bucket: Bucket, fuse: &mut [Fuse]) {
    for i in 0..ops.len() {
        let Some((layer, _, _)) = attention_at(ops, i) else {
            continue;
        };
        let w = weight(&ops[i]).expect("attention_at matched a linear");
        if fuse[i].kv.is_none() && decode_gemv(caps, bucket, w) && texels(w) {
            fuse[i].kv = Some(KvFuse::Append { layer });
            fuse[i + 1].appended = true;
        }
    }
}

/// Whether `act` is read by an op from `from` on before one writes it anew.
fn read_later(ops: &[Op<&GpuTensor>], from: usize, act: Act) -> bool {
    for op in &ops[from.min(ops.len())..] {
        let (reads, writes) = match op {
            Op::Embed { out, .. } => (false, *out == act),
            Op::Norm { inp, out, .. } => (*inp == act, *out == act),
            Op::Linear { inp, out, then, .. } => (
                *inp == act || (*out == act && *then == Then::Add),
                *out == act,
            ),
            Op::Attention { qkv, out, .. } => (*qkv == act, *out == act),
            Op::Rope { qkv, .. } => (*qkv == act, false),
            Op::Gate { inp, out, .. } => (*inp == act, *out == act),
            Op::Pool { inp, out, .. } => (*inp == act, *out == act),
            Op::StoreKv { inp, .. } => (*inp == act, false),
        };
        if reads {
            return true;
        }
        if writes {
            return false;
        }
    }
    false
}

/// [norm(a → b), linear(b → …)] at `i`, with `b` read by nothing after: the norm's input `a`,
/// epsilon and kind.
fn norm_feeding_linear(ops: &[Op<&GpuTensor>], i: usize) -> Option<(Act, f32, NormKind)> {
    match (&ops[i], ops.get(i + 1)) {
        (
            Op::Norm {
                kind,
                inp,
                out,
                eps,
                ..
            },
            Some(Op::Linear { inp: next, .. }),
        ) if next == out && !read_later(ops, i + 2, *out) => Some((*inp, *eps, *kind)),
        _ => None,
    }
}

fn fold_norm(ops: &[Op<&GpuTensor>], caps: &Caps, bucket: Bucket, fuse: &mut [Fuse]) {
    for i in 0..ops.len() {
        let Some(x) = norm_feeding_linear(ops, i) else {
            continue;
        };
        let w = weight(&ops[i + 1]).expect("norm_feeding_linear matched a linear");
        // The NORM pipelines: plain and appending need whole texels, attending one chunk.
        let shapes = match fuse[i + 1].kv {
            None | Some(KvFuse::Append { .. }) => texels(w),
            Some(KvFuse::Attend { .. }) => true,
            Some(KvFuse::Deferred { .. }) => false,
        };
        // A layer norm folds into weights at load (their row sums then exist); an RMSNorm's
        // gain scales the GEMV's input instead, in any weight format but f32 (whose NORM GEMV
        // reads its input unscaled: gemv_f32).
        // Not the head's final norm: a prefill's head reads the last row of the norm's input,
        // which the GEMV would not find.
        let head = matches!(
            ops[i + 1],
            Op::Linear {
                out: Act::Logits,
                ..
            }
        );
        let foldable = match x.2 {
            NormKind::Layer => w.row_sums.is_some(),
            NormKind::Rms => w.formats().all(|(_, d)| d != WeightDtype::F32) && !head,
        };
        if foldable && decode_gemv(caps, bucket, w) && shapes {
            fuse[i].skip = true;
            fuse[i + 1].norm_of = Some(x);
        }
    }
}

fn head_argmax(ops: &[Op<&GpuTensor>], caps: &Caps, bucket: Bucket, fuse: &mut [Fuse]) {
    let Some(i) = ops.iter().position(|op| {
        matches!(
            op,
            Op::Linear {
                out: Act::Logits,
                ..
            }
        )
    }) else {
        return;
    };
    let w = weight(&ops[i]).expect("a linear");
    // Candidates go to slot col0 / 32 + workgroup: chunks must start at multiples of 32.
    let aligned = w.textures.iter().all(|ch| ch.row0 % 32 == 0);
    if decode_gemv(caps, bucket, w) && aligned && fuse[i].norm_of.is_none() {
        fuse[i].argmax = true;
    }
}

/// [linear → a (Store), gate(a → b, SiLU)] becomes the linear storing b.
fn gate_epilogue(ops: &[Op<&GpuTensor>], fuse: &mut [Fuse]) {
    for i in 0..ops.len().saturating_sub(1) {
        let gated = match (&ops[i], &ops[i + 1]) {
            (
                Op::Linear {
                    out,
                    then: Then::Store,
                    ..
                },
                Op::Gate {
                    inp,
                    out: gated,
                    act: Activation::Silu,
                },
            ) if out == inp && !read_later(ops, i + 2, *out) => *gated,
            _ => continue,
        };
        fuse[i].gate_into = Some(gated);
        fuse[i + 1].skip = true;
    }
}

/// [rope(qkv), attention(qkv, causal)] becomes the attention rotating as it reads.
fn rope_attend(ops: &[Op<&GpuTensor>], fuse: &mut [Fuse]) {
    for i in 0..ops.len().saturating_sub(1) {
        if let (
            Op::Rope { qkv, .. },
            Op::Attention {
                qkv: read,
                keys: Keys::Cache { .. },
                ..
            },
        ) = (&ops[i], &ops[i + 1])
        {
            // Not a rope qkv_attend took.
            if qkv == read && !read_later(ops, i + 2, *qkv) && !fuse[i + 1].skip {
                fuse[i].skip = true;
                fuse[i + 1].rope = true;
            }
        }
    }
}

fn norm_texture(ops: &[Op<&GpuTensor>], caps: &Caps, bucket: Bucket, fuse: &mut [Fuse]) {
    if !caps.textures || bucket == Bucket::Decode {
        return;
    }
    for i in 0..ops.len() {
        let Some((x, ..)) = norm_feeding_linear(ops, i) else {
            continue;
        };
        let Op::Norm { bias: Some(_), .. } = &ops[i] else {
            continue;
        };
        // Its gain and bias sit in one uniform of GAIN_BIAS_BYTES; the stream is x.
        let c = ops[i + 1..]
            .iter()
            .find_map(weight)
            .map_or(0, |w| w.cols as u64);
        if x == Act::X && c * 8 <= wg::GAIN_BIAS_BYTES {
            fuse[i].to_texture = true;
            fuse[i + 1].input_ready = true;
        }
    }
}
