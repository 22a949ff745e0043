//! Lowering: each graph op, with what the rules fused into it, to its dispatches for one
//! bucket. Here alone are the kernels chosen: the operand layout's, the subgroup variants,
//! the weights' storage constants, the fused GEMVs.

use std::collections::HashMap;

use crate::gpu::Engine;
use crate::gpu::kernels::{
    self, AttentionParams, EmbedParams, Epilogue, Extra, Kv, KvParams, KvWidths, LayerNormParams,
    LinearIo, PoolParams, WidthParams, wg,
};
use crate::gpu::registry::{Key, Layout};
use crate::gpu::tensor::{GpuTensor, WeightDtype};
use crate::graph::{Act, Dense, Dims, Keys, NormKind, Op, Then};
use crate::plan::rules::{Fuse, KvFuse};
use crate::plan::{Bucket, Caps, Dim, Dispatch, Io, KvCache};

/// The attention kernel's entry point for its layout, keys and bias; `by_rows`: a multi-row
/// causal step of the texture layout, whose workgroup's lanes are consecutive queries of one
/// head (all busy whatever NH is), not heads of one query.
fn attention_entry(textures: bool, keys: Keys, biased: bool, by_rows: bool) -> &'static str {
    match (textures, keys, biased) {
        (false, Keys::Cache { .. }, false) => "attention",
        (false, Keys::Cache { .. }, true) => "attention_biased",
        (false, Keys::Sequence, false) => "attention_bidirectional",
        (false, Keys::Sequence, true) => "attention_bidirectional_biased",
        (false, Keys::Cross { .. }, _) => "attention_cross",
        (true, Keys::Cache { .. }, false) if by_rows => "attention_texture_rows",
        (true, Keys::Cache { .. }, false) => "attention_texture",
        (true, Keys::Cache { .. }, true) => "attention_texture_biased",
        (true, Keys::Sequence, false) => "attention_texture_bidirectional",
        (true, Keys::Sequence, true) => "attention_texture_bidirectional_biased",
        (true, Keys::Cross { .. }, _) => "attention_texture_cross",
    }
}

/// Lowers ops for one plan, sharing the small uniforms every op of a kind reads.
pub(super) struct Lower<'a> {
    gpu: &'a Engine,
    caps: Caps,
    io: &'a Io,
    dims: Dims,
    /// Copies recorded once, before the first step (norm_texture's gain-and-bias uniforms).
    init: &'a mut wgpu::CommandEncoder,
    uniforms: HashMap<(&'static str, [u32; 2]), wgpu::Buffer>,
    gain_bias: HashMap<wgpu::Buffer, wgpu::Buffer>,
}

/// The override constant of a weight's storage format (format.wgsl's WEIGHT_FORMAT).
fn stored(key: Key, dtype: WeightDtype) -> Key {
    key.with("WEIGHT_FORMAT", dtype.format().code())
}

impl<'a> Lower<'a> {
    pub(super) fn new(
        gpu: &'a Engine,
        caps: Caps,
        io: &'a Io,
        dims: Dims,
        init: &'a mut wgpu::CommandEncoder,
    ) -> Self {
        Lower {
            gpu,
            caps,
            io,
            dims,
            init,
            uniforms: HashMap::new(),
            gain_bias: HashMap::new(),
        }
    }

    /// The dispatches of one section's ops (`head`: the head's step uniform) for `bucket`.
    pub(super) fn section(
        &mut self,
        ops: &[Op<&GpuTensor>],
        fuse: &[Fuse],
        bucket: Bucket,
        head: bool,
    ) -> Vec<Dispatch> {
        let mut out = Vec::new();
        // A rope the next attention applies (rope_attend): its frequencies.
        let mut rope = None;
        // A norm the next linear applies (fold_norm): its gain.
        let mut gain = None;
        for (i, (op, f)) in ops.iter().zip(fuse).enumerate() {
            let step = &self.io.steps[head as usize];
            if f.skip {
                match op {
                    Op::Rope { inv_freq, .. } => rope = Some(*inv_freq),
                    Op::Norm { gain: g, .. } => gain = Some(*g),
                    _ => {}
                }
                continue;
            }
            match op {
                Op::Embed { .. } => out.extend(self.embed(op, step)),
                Op::Norm { .. } => out.push(self.norm(op, f, step)),
                Op::Linear { .. } => {
                    let gain = gain.take().filter(|_| f.norm_of.is_some());
                    // A qkv projection attending with the rope after it (qkv_attend): its
                    // frequencies.
                    let rope = match (f.kv, ops.get(i + 1)) {
                        (
                            Some(KvFuse::Attend { rope: true, .. }),
                            Some(Op::Rope { inv_freq, .. }),
                        ) => Some(*inv_freq),
                        _ => None,
                    };
                    out.extend(self.linear(op, f, bucket, step, (gain, rope)));
                }
                Op::Rope { .. } => out.push(self.rope(op, step)),
                Op::Gate { .. } => out.push(self.gate(op, step)),
                Op::Attention { .. } => {
                    let rope = rope.take().filter(|_| f.rope);
                    out.extend(self.attention(op, f, (step, bucket), rope));
                }
                Op::Pool { .. } => out.push(self.pool(op)),
                Op::StoreKv { inp, layer } => out.push(self.store_kv(step, *inp, *layer)),
            }
        }
        out
    }

    fn buf(&self, act: Act) -> &'a wgpu::Buffer {
        let io: &'a Io = self.io;
        io.acts
            .get(&act)
            .unwrap_or_else(|| panic!("the plan's Io holds no {act:?} buffer"))
    }

    fn texture(&self, act: Act) -> &'a wgpu::Texture {
        let io: &'a Io = self.io;
        io.textures
            .get(&act)
            .unwrap_or_else(|| panic!("the plan's Io holds no {act:?} texture"))
    }

    fn pipe(&self, key: Key) -> wgpu::ComputePipeline {
        self.gpu.registry.get(self.gpu, &key)
    }

    /// A uniform of `value`, one per kind and contents.
    fn uniform<T: bytemuck::Pod>(
        &mut self,
        kind: &'static str,
        id: [u32; 2],
        value: &T,
    ) -> wgpu::Buffer {
        let gpu = self.gpu;
        self.uniforms
            .entry((kind, id))
            .or_insert_with(|| gpu.uniform(kind, value))
            .clone()
    }

    fn width(&mut self, width: usize) -> wgpu::Buffer {
        let p = WidthParams {
            width: width as u32,
            _pad: [0; 3],
        };
        self.uniform("width", [width as u32, 0], &p)
    }

    /// `out = scale * tokens[ids] + positions[pos]`: one dispatch per chunk of the token table
    /// (each writes the rows whose token it holds).
    fn embed(&mut self, op: &Op<&GpuTensor>, step: &wgpu::Buffer) -> Vec<Dispatch> {
        let Op::Embed {
            tokens,
            positions,
            width,
            packed,
            out,
        } = op
        else {
            unreachable!()
        };
        if let Some((table, scale)) = tokens.filter(|(t, _)| t.chunks.is_empty()) {
            return self.embed_texture(op, table, scale, step);
        }
        let entry = if *packed { "embed_packed" } else { "embed" };
        let dtype = tokens.map_or(WeightDtype::F32, |(t, _)| t.dtype);
        let pipe = self.pipe(stored(Key::new("embed", entry), dtype));
        let zero = &self.io.zero;
        let pos = positions.map_or(zero, |p| p.single());
        let chunks: Vec<(EmbedParams, &wgpu::Buffer)> = match tokens {
            Some((table, scale)) => (table.chunks.iter())
                .map(|ch| {
                    let p = EmbedParams::new(*width as u32, ch.row0 as u32, ch.rows as u32, *scale);
                    (
                        EmbedParams {
                            positions: positions.is_some() as u32,
                            ..p
                        },
                        &ch.buffer,
                    )
                })
                .collect(),
            None => vec![(
                EmbedParams {
                    tokens: 0,
                    ..EmbedParams::new(*width as u32, 0, 0, 1.0)
                },
                zero,
            )],
        };
        let spans = self
            .io
            .spans
            .as_ref()
            .filter(|_| *packed)
            .map(|[rows, _]| rows);
        (chunks.into_iter())
            .map(|(params, table)| {
                let u = self.gpu.uniform("embed", &params);
                let mut r = vec![step, &u, &self.io.tokens, table, pos, self.buf(*out)];
                r.extend(spans);
                let bind = kernels::bind(self.gpu, &pipe, entry, &r);
                Dispatch::new(
                    pipe.clone(),
                    bind,
                    [Dim::Fixed((*width as u32).div_ceil(wg::EMBED)), Dim::Rows],
                    "embed",
                )
            })
            .collect()
    }

    /// `embed` from a token table held only as the tied head's weight textures: one dispatch
    /// per texture.
    fn embed_texture(
        &mut self,
        op: &Op<&GpuTensor>,
        table: &GpuTensor,
        scale: f32,
        step: &wgpu::Buffer,
    ) -> Vec<Dispatch> {
        let Op::Embed {
            positions,
            width,
            out,
            ..
        } = op
        else {
            unreachable!()
        };
        let pipe = self.pipe(stored(Key::new("embed", "embed_texture"), table.dtype));
        let pos = positions.map_or(&self.io.zero, |p| p.single());
        (table.textures.iter())
            .map(|ch| {
                let params = EmbedParams {
                    positions: positions.is_some() as u32,
                    ..EmbedParams::new(*width as u32, ch.row0 as u32, ch.rows as u32, scale)
                };
                let u = self.gpu.uniform("embed", &params);
                let r = vec![
                    (0, step.as_entire_binding()),
                    (1, u.as_entire_binding()),
                    (2, self.io.tokens.as_entire_binding()),
                    (4, pos.as_entire_binding()),
                    (5, self.buf(*out).as_entire_binding()),
                    (7, wgpu::BindingResource::TextureView(&ch.view)),
                ];
                let bind = kernels::bind_at(self.gpu, &pipe, "embed_texture", r);
                let grid = [Dim::Fixed((*width as u32).div_ceil(wg::EMBED)), Dim::Rows];
                Dispatch::new(pipe.clone(), bind, grid, "embed")
            })
            .collect()
    }

    /// A layer norm: layernorm (one workgroup per row) or, in the texture layout,
    /// layernorm_rows (one invocation per row), or norm_texture's layernorm_rows_texture.
    fn norm(&mut self, op: &Op<&GpuTensor>, f: &Fuse, step: &wgpu::Buffer) -> Dispatch {
        let Op::Norm {
            kind,
            inp,
            out,
            gain,
            bias,
            eps,
        } = op
        else {
            unreachable!()
        };
        let c = gain.cols as u32;
        let params = LayerNormParams {
            c,
            eps: *eps,
            _pad: [0; 2],
        };
        let params = self.uniform("ln", [c, eps.to_bits()], &params);
        let bias = bias.map_or(&self.io.zero, |b| b.single());
        if f.to_texture {
            return self.norm_texture(step, &params, (gain.single(), bias), *inp, *out);
        }
        let (key, grid) = match self.caps.textures {
            true => (
                Key::new("layernorm_rows", "layernorm_rows"),
                [Dim::RowsPer(wg::LAYERNORM_ROWS), Dim::Fixed(1)],
            ),
            false => (
                Key::new("layernorm", "layernorm"),
                [Dim::Rows, Dim::Fixed(1)],
            ),
        };
        let pipe = self.pipe(key.with("RMS", (*kind == NormKind::Rms) as u32));
        let r = [
            step,
            &params,
            self.buf(*inp),
            gain.single(),
            bias,
            self.buf(*out),
        ];
        let bind = kernels::bind(self.gpu, &pipe, "layernorm", &r);
        Dispatch::new(pipe, bind, grid, "layernorm")
    }

    /// layernorm_rows_texture: from a texture copy of `inp` into `out`'s input texture, its
    /// gain and bias copied into one uniform buffer (once, by `init`).
    fn norm_texture(
        &mut self,
        step: &wgpu::Buffer,
        params: &wgpu::Buffer,
        (gain, bias): (&wgpu::Buffer, &wgpu::Buffer),
        inp: Act,
        out: Act,
    ) -> Dispatch {
        let bytes = self.dims.c as u64 * 4;
        let (gpu, init) = (self.gpu, &mut *self.init);
        let gain_bias = self
            .gain_bias
            .entry(gain.clone())
            .or_insert_with(|| {
                let u = gpu.storage_uniform("ln_gain_bias", wg::GAIN_BIAS_BYTES);
                init.copy_buffer_to_buffer(gain, 0, &u, 0, bytes);
                init.copy_buffer_to_buffer(bias, 0, &u, bytes, bytes);
                u
            })
            .clone();
        let [x, o] =
            [self.texture(inp), self.texture(out)].map(|t| t.create_view(&Default::default()));
        let r = vec![
            (0, step.as_entire_binding()),
            (1, params.as_entire_binding()),
            (6, wgpu::BindingResource::TextureView(&x)),
            (7, gain_bias.as_entire_binding()),
            (8, wgpu::BindingResource::TextureView(&o)),
        ];
        let pipe = self.pipe(Key::new("layernorm_rows", "layernorm_rows_texture"));
        let bind = kernels::bind_at(gpu, &pipe, "layernorm_rows_texture", r);
        Dispatch {
            copy: Some((self.buf(inp).clone(), self.texture(inp).clone())),
            ..Dispatch::new(
                pipe,
                bind,
                [Dim::RowsPer(wg::LAYERNORM_ROWS), Dim::Fixed(1)],
                "layernorm_texture",
            )
        }
    }

    /// `out = then(inp Wᵀ + b)`: one dispatch per row chunk of W, then the epilogue's own
    /// dispatch when it is not fused. `norm_gain`: a folded RMSNorm's gain; `rope`: the
    /// frequencies of the rope a fused attention applies.
    fn linear(
        &mut self,
        op: &Op<&GpuTensor>,
        f: &Fuse,
        bucket: Bucket,
        step: &wgpu::Buffer,
        (norm_gain, rope): (Option<&GpuTensor>, Option<&GpuTensor>),
    ) -> Vec<Dispatch> {
        let Op::Linear {
            inp,
            out,
            dense,
            then,
        } = op
        else {
            unreachable!()
        };
        let Dense { w, b } = *dense;
        let epilogue = match (f.split_then, then) {
            _ if f.gate_into.is_some() => Epilogue::GatedSilu,
            (true, _) | (_, Then::Store) => Epilogue::Store,
            (_, Then::Act(a)) => Epilogue::activation(*a),
            (_, Then::Add) => Epilogue::Residual,
        };
        let tmp = self.io.tmp.as_ref();
        let result = match (f.split_then, then) {
            (true, Then::Add) => tmp.expect("a plan without the epilogue rule has a tmp buffer"),
            _ => self.buf(f.gate_into.unwrap_or(*out)),
        };
        // Each chunk runs its format's kernel (a stacked tensor's differ); one layout serves
        // them all, so the bind groups are made with the first.
        let formats: Vec<WeightDtype> = match self.caps.textures {
            true => w.textures.iter().map(|c| c.dtype).collect(),
            false => w.chunks.iter().map(|c| c.dtype).collect(),
        };
        let (key, gemv) = self.linear_key(w, f, bucket, epilogue, w.dtype);
        let pipe = self.pipe(key);
        let pipes: Vec<wgpu::ComputePipeline> = (formats.iter())
            .map(|&d| match d == w.dtype {
                true => pipe.clone(),
                false => self.pipe(self.linear_key(w, f, bucket, epilogue, d).0),
            })
            .collect();
        let input = self.caps.textures.then(|| self.texture(*inp));
        let view = input.map(|t| t.create_view(&Default::default()));
        let no_rope = self.no_rope();
        let io = LinearIo {
            step,
            // A folded norm's GEMV standardises the norm's input itself.
            inp: f.norm_of.map_or(self.buf(*inp), |(x, ..)| self.buf(x)),
            input_texture: view.as_ref(),
            bias: (b.map_or(&self.io.zero, |b| b.single()), b.is_some()),
            out: result,
            kv: f
                .kv
                .map(|kv| self.kv(kv, rope.map_or(&no_rope, |t| t.single()))),
            // A folded RMSNorm's GEMV takes the norm's gain (it scales its input), a layer
            // norm's the row sums of the weights its gain and bias were folded into.
            ln: f.norm_of.map(|(_, eps, kind)| match kind {
                NormKind::Rms => (norm_gain.expect("fold_norm skipped its norm").single(), eps),
                NormKind::Layer => (w.row_sums.as_ref().expect("fold_norm checked"), eps),
            }),
            partials: self.io.partials.as_ref().filter(|_| f.argmax),
        };
        let attends = matches!(f.kv, Some(KvFuse::Attend { .. }));
        let name = match (self.caps.textures, gemv, attends) {
            (_, _, true) => "gemv_texture_attention",
            (true, true, _) => "gemv_texture",
            (true, false, _) => "matmul_texture",
            (false, true, _) => "gemv",
            (false, false, _) => "matmul",
        };
        let mut ops: Vec<Dispatch> = kernels::linear_binds(self.gpu, &pipe, w, &io)
            .into_iter()
            .enumerate()
            .map(|(i, (bind, n))| {
                let grid = match (self.caps.textures, gemv, attends) {
                    (_, _, true) => [Dim::Fixed(self.dims.n_head as u32), Dim::Fixed(1)],
                    (true, true, _) => [
                        Dim::Fixed(n.div_ceil(4).div_ceil(wg::LINEAR_TEXTURE)),
                        Dim::Rows,
                    ],
                    (true, false, _) => [
                        Dim::Fixed(n.div_ceil(4).div_ceil(wg::LINEAR_TEXTURE)),
                        Dim::RowsPer(4),
                    ],
                    (false, true, _) => [Dim::Fixed(n.div_ceil(wg::GEMV_OUTPUTS)), Dim::Rows],
                    (false, false, _) => [
                        Dim::Fixed(n.div_ceil(wg::MATMUL_TILE)),
                        Dim::RowsPer(wg::MATMUL_TILE),
                    ],
                };
                // matmul_texture reads a texture copy of its input, unless a norm wrote it.
                let copy = input.filter(|_| i == 0 && !gemv && !f.input_ready);
                Dispatch {
                    copy: copy.map(|t| (io.inp.clone(), t.clone())),
                    attends,
                    ..Dispatch::new(pipes[i].clone(), bind, grid, name)
                }
            })
            .collect();
        if f.split_then {
            ops.push(self.then(*then, *out, w.rows, step));
        }
        ops
    }

    /// The pipeline of a linear layer, and whether it is a GEMV (one row of textures, a few
    /// rows of buffers).
    fn linear_key(
        &self,
        w: &GpuTensor,
        f: &Fuse,
        bucket: Bucket,
        epilogue: Epilogue,
        dtype: WeightDtype,
    ) -> (Key, bool) {
        let e = epilogue as u32;
        if !self.caps.textures {
            let layout = Layout::Linear {
                textures: false,
                extra: Extra::None,
            };
            let key = match bucket {
                Bucket::Prefill => Key::new("matmul", "matmul"),
                _ if self.caps.subgroup => Key::new("gemv_subgroup", "gemv_subgroup"),
                _ => Key::new("matmul", "gemv"),
            };
            return (
                stored(key, dtype).with("EPILOGUE", e).layout(layout),
                bucket != Bucket::Prefill,
            );
        }
        let gemv = bucket == Bucket::Decode && w.cols as u32 <= wg::GEMV_UNIFORM_FLOATS;
        let sub = "matmul_texture_subgroup";
        let rms = matches!(f.norm_of, Some((.., NormKind::Rms))) as u32;
        let normed = |key: Key| {
            key.with("NORM", f.norm_of.is_some() as u32)
                .with("RMS", rms)
        };
        let (key, extra) = match (gemv, f.kv, f.argmax) {
            (true, Some(KvFuse::Append { .. }), _) => {
                (normed(Key::new(sub, "gemv_texture_kv")), Extra::Kv)
            }
            (true, Some(KvFuse::Attend { rope, .. }), _) => {
                let key = normed(Key::new(sub, "gemv_texture_attention"));
                let key = key
                    .with("HS", self.caps.head_size)
                    .with("ROPE", rope as u32);
                (key, Extra::Attend)
            }
            (true, Some(KvFuse::Deferred { .. }), _) => (
                Key::new(sub, "gemv_texture_append").with("EPILOGUE", e),
                Extra::Deferred,
            ),
            (true, None, true) => (Key::new(sub, "gemv_texture_argmax"), Extra::Partials),
            (true, None, false) if self.caps.subgroups8 => (
                normed(Key::new(sub, "gemv_texture_subgroup")).with("EPILOGUE", e),
                Extra::None,
            ),
            (true, None, false) => (
                Key::new("matmul_texture", "gemv_texture").with("EPILOGUE", e),
                Extra::None,
            ),
            (false, ..) if self.caps.subgroups8 => {
                (Key::new(sub, sub).with("EPILOGUE", e), Extra::None)
            }
            (false, ..) => (
                Key::new("matmul_texture", "matmul_texture").with("EPILOGUE", e),
                Extra::None,
            ),
        };
        let layout = Layout::Linear {
            textures: true,
            extra,
        };
        (stored(key, dtype).layout(layout), gemv)
    }

    /// The cache bindings of a fused decode GEMV (`inv_freq`: the frequencies an attending one
    /// rotates by, zeros for a pipeline without ROPE).
    fn kv<'b>(&self, kv: KvFuse, inv_freq: &'b wgpu::Buffer) -> Kv<'b>
    where
        'a: 'b,
    {
        let io: &'a Io = self.io;
        let KvCache::Textures { k, v } = &io.kv else {
            unreachable!("the KV fusions need the texture layout's cache")
        };
        let d = self.dims;
        let widths = KvWidths {
            q: (d.n_head * d.head_size) as u32,
            kv: (d.n_kv_head * d.head_size) as u32,
        };
        match kv {
            KvFuse::Append { layer } => Kv::Append {
                cache: [&k[layer], &v[layer]],
                widths,
            },
            KvFuse::Attend { layer, out, .. } => Kv::Attend {
                cache: [&k[layer], &v[layer]],
                att_y: self.buf(out),
                widths,
                inv_freq,
            },
            KvFuse::Deferred { layer, qkv } => Kv::Deferred {
                cache: [&k[layer], &v[layer]],
                qkv: self.buf(qkv),
                widths,
            },
        }
    }

    /// Rotary embeddings on the step's queries and keys, in place (one invocation per pair).
    fn rope(&mut self, op: &Op<&GpuTensor>, step: &wgpu::Buffer) -> Dispatch {
        let Op::Rope { qkv, inv_freq } = op else {
            unreachable!()
        };
        let d = self.dims;
        let (nh, nkv, hs) = (d.n_head as u32, d.n_kv_head as u32, d.head_size as u32);
        let params = AttentionParams {
            nkv,
            ..AttentionParams::heads(nh, hs)
        };
        let params = self.uniform("rope", [nh << 16 | nkv, hs], &params);
        let pipe = self.pipe(Key::new("rope", "rope"));
        let r = [step, &params, inv_freq.single(), self.buf(*qkv)];
        let bind = kernels::bind(self.gpu, &pipe, "rope", &r);
        let pairs = (nh + nkv) * hs / 2;
        let grid = [Dim::Fixed(pairs.div_ceil(wg::ELEMENTWISE)), Dim::Rows];
        Dispatch::new(pipe, bind, grid, "rope")
    }

    /// A gated feed-forward's hidden layer: `out = act(gate) * up`.
    fn gate(&mut self, op: &Op<&GpuTensor>, step: &wgpu::Buffer) -> Dispatch {
        let Op::Gate { inp, out, act } = op else {
            unreachable!()
        };
        let width = self.dims.width(*out);
        let params = self.width(width);
        let key = Key::new("elementwise", "gate").with("ACT", Epilogue::activation(*act) as u32);
        let pipe = self.pipe(key);
        let r = [step, &params, self.buf(*inp), self.buf(*out)];
        let bind = kernels::bind(self.gpu, &pipe, "gate", &r);
        let grid = [
            Dim::Fixed((width as u32).div_ceil(wg::ELEMENTWISE)),
            Dim::Rows,
        ];
        Dispatch::new(pipe, bind, grid, "gate")
    }

    /// A linear's unfused epilogue: `out = act(out)`, or `out += tmp`.
    fn then(&mut self, then: Then, out: Act, width: usize, step: &wgpu::Buffer) -> Dispatch {
        let params = self.width(width);
        let out_buf = self.buf(out);
        let (key, r) = match then {
            Then::Act(a) => {
                let key =
                    Key::new("elementwise", "activate").with("ACT", Epilogue::activation(a) as u32);
                (key, vec![(3, out_buf.as_entire_binding())])
            }
            _ => {
                let tmp = self
                    .io
                    .tmp
                    .as_ref()
                    .expect("a plan without the epilogue rule has a tmp buffer");
                (
                    Key::new("elementwise", "add"),
                    vec![
                        (2, tmp.as_entire_binding()),
                        (3, out_buf.as_entire_binding()),
                    ],
                )
            }
        };
        let pipe = self.pipe(key);
        let mut r = r;
        r.extend([
            (0, step.as_entire_binding()),
            (1, params.as_entire_binding()),
        ]);
        let bind = kernels::bind_at(self.gpu, &pipe, "elementwise", r);
        Dispatch::new(
            pipe,
            bind,
            [
                Dim::Fixed((width as u32).div_ceil(wg::ELEMENTWISE)),
                Dim::Rows,
            ],
            "elementwise",
        )
    }

    /// Appends the step's keys and values to the cache (unless a projection did, or they are
    /// the encoder's), then the attention: causal over the cache, bidirectional within each
    /// packed sequence, or over the source's cross-attention cache; with a position bias, its
    /// _biased entry point. With `rope` (the rope_attend fusion: its frequencies), keys and
    /// queries rotate as they are read.
    fn attention(
        &mut self,
        op: &Op<&GpuTensor>,
        f: &Fuse,
        (step, bucket): (&wgpu::Buffer, Bucket),
        rope: Option<&GpuTensor>,
    ) -> Vec<Dispatch> {
        let Op::Attention {
            qkv,
            out,
            keys,
            n_head,
            scale,
            bias,
        } = op
        else {
            unreachable!()
        };
        let d = self.dims;
        let (nh, nkv, hs) = (*n_head as u32, d.n_kv_head as u32, d.head_size as u32);
        let params = AttentionParams {
            nh,
            nkv,
            hs,
            scale: *scale,
        };
        let params = self.uniform("attention", [nh << 16 | nkv, scale.to_bits()], &params);
        let none = self.no_rope();
        let inv_freq = rope.map_or(&none, |t| t.single());
        let [k, v] = match keys {
            Keys::Cache { layer } => self.cache(&self.io.kv, *layer),
            Keys::Sequence => self.cache(&self.io.kv, 0),
            Keys::Cross { layer } => self.cache(&self.cross().kv, *layer),
        };
        let qkv = self.buf(*qkv);
        let mut ops = Vec::new();
        if !f.appended && !matches!(keys, Keys::Cross { .. }) {
            ops.push(self.kv_append(step, qkv, [k.clone(), v.clone()], rope));
        }
        let textures = self.caps.textures;
        let entry = attention_entry(textures, *keys, bias.is_some(), bucket != Bucket::Decode);
        let by_rows = entry == "attention_texture_rows";
        let (family, entry) = match textures {
            _ if by_rows && self.caps.attends_by_tiles() => {
                ("attention_texture_subgroup", "attention_texture_tile")
            }
            true => ("attention_texture", entry),
            false => ("attention", entry),
        };
        let key = Key::new(family, entry).with("HS", self.caps.head_size);
        let attend = self.pipe(key.with("ROPE", rope.is_some() as u32));
        let mut r = vec![
            (0, step.as_entire_binding()),
            (1, params.as_entire_binding()),
            (2, qkv.as_entire_binding()),
            (3, k),
            (4, v),
            (5, self.buf(*out).as_entire_binding()),
            (6, inv_freq.as_entire_binding()),
        ];
        match keys {
            Keys::Sequence => {
                let [rows, _] = self.io.spans.as_ref().expect("packed sequences have spans");
                r.push((7, rows.as_entire_binding()));
            }
            Keys::Cross { .. } => r.push((7, self.cross().span.as_entire_binding())),
            Keys::Cache { .. } => {}
        }
        if let Some(b) = bias {
            r.push((8, b.single().as_entire_binding()));
        }
        let bind = kernels::bind_at(self.gpu, &attend, entry, r);
        let grid = match (textures, by_rows) {
            (true, true) => [Dim::RowsPer(wg::ATTENTION_TEXTURE), Dim::Fixed(nh)],
            (true, false) => [Dim::Fixed(nh.div_ceil(wg::ATTENTION_TEXTURE)), Dim::Rows],
            (false, _) => [Dim::Fixed(nh), Dim::Rows],
        };
        ops.push(Dispatch {
            attends: !matches!(keys, Keys::Cross { .. }),
            ..Dispatch::new(attend, bind, grid, family)
        });
        ops
    }

    /// The cross-attention caches an encoder-decoder's plans bind.
    fn cross(&self) -> &'a super::CrossIo {
        let io: &'a Io = self.io;
        io.cross
            .as_ref()
            .expect("an encoder-decoder's plan has cross caches")
    }

    /// `inp`'s rows (keys, then values) into decoder layer `layer`'s cross-attention cache: a
    /// kv_append with no queries in the row, at the encoder step's positions (0 .. T).
    fn store_kv(&mut self, step: &wgpu::Buffer, inp: Act, layer: usize) -> Dispatch {
        let kv = self.cache(&self.cross().kv, layer);
        self.append(step, 0, self.buf(inp), kv, None)
    }

    /// The frequencies bound where ROPE is off (never read).
    fn no_rope(&mut self) -> wgpu::Buffer {
        self.uniform("no_rope", [0, 0], &[0f32; kernels::ROPE_FREQS])
    }

    /// Layer `layer`'s key and value caches in `kv`, as bindings.
    fn cache(&self, kv: &'a KvCache, layer: usize) -> [wgpu::BindingResource<'a>; 2] {
        match kv {
            KvCache::Buffers { k, v } => {
                [k[layer].as_entire_binding(), v[layer].as_entire_binding()]
            }
            KvCache::Textures { k, v } => [
                wgpu::BindingResource::TextureView(&k[layer]),
                wgpu::BindingResource::TextureView(&v[layer]),
            ],
        }
    }

    /// The step's keys and values from `qkv` into the cache, the keys rotated with `rope`.
    fn kv_append(
        &mut self,
        step: &wgpu::Buffer,
        qkv: &wgpu::Buffer,
        kv: [wgpu::BindingResource; 2],
        rope: Option<&GpuTensor>,
    ) -> Dispatch {
        self.append(step, self.dims.q_width() as u32, qkv, kv, rope)
    }

    /// kv_append (or its texture form) into the cache `[k, v]` from `rows`, whose rows hold `q`
    /// query values and then the keys and values.
    fn append(
        &mut self,
        step: &wgpu::Buffer,
        q: u32,
        rows: &wgpu::Buffer,
        [k, v]: [wgpu::BindingResource; 2],
        rope: Option<&GpuTensor>,
    ) -> Dispatch {
        let d = self.dims;
        let kv_w = d.kv_width() as u32;
        let widths = KvParams {
            q,
            kv: kv_w,
            hs: d.head_size as u32,
            _pad: 0,
        };
        let widths = self.uniform("kv", [q, kv_w], &widths);
        let (name, per) = match self.caps.textures {
            true => ("kv_append_texture", 4 * wg::KV_APPEND),
            false => ("kv_append", wg::KV_APPEND),
        };
        let pipe = self.pipe(Key::new(name, name).with("ROPE", rope.is_some() as u32));
        let none = self.no_rope();
        let inv_freq = rope.map_or(&none, |t| t.single());
        let r = vec![
            step.as_entire_binding(),
            widths.as_entire_binding(),
            rows.as_entire_binding(),
            k,
            v,
            inv_freq.as_entire_binding(),
        ];
        let bind = kernels::bind_resources(self.gpu, &pipe, name, r);
        let grid = [Dim::Fixed(kv_w.div_ceil(per)), Dim::Rows];
        Dispatch::new(pipe, bind, grid, name)
    }

    /// One vector per packed sequence (one workgroup each).
    fn pool(&mut self, op: &Op<&GpuTensor>) -> Dispatch {
        let Op::Pool {
            inp,
            out,
            mode,
            normalize,
        } = op
        else {
            unreachable!()
        };
        let c = self.dims.c as u32;
        let params = PoolParams {
            c,
            mode: *mode as u32,
            normalize: *normalize as u32,
            _pad: 0,
        };
        let params = self.gpu.uniform("pool", &params);
        let [_, seqs] = self
            .io
            .spans
            .as_ref()
            .expect("pooling needs the sequences' spans");
        let pipe = self.pipe(Key::new("pool", "pool"));
        let bind = kernels::bind(
            self.gpu,
            &pipe,
            "pool",
            &[&params, self.buf(*inp), seqs, self.buf(*out)],
        );
        Dispatch::new(pipe, bind, [Dim::Seqs, Dim::Fixed(1)], "pool")
    }
}
