//! The planner: lowers a [`Graph`] to the dispatches that run it on this adapter, once per
//! session (or encoder workspace) and row bucket. It decides what the graph leaves open: the
//! operand layout (buffers, or textures on CPU adapters), subgroup kernels, the weights'
//! storage, and which fusions ([`rules`]) apply. Pipelines come from the device's registry,
//! bind groups are built here once; recording a step only sets them and dispatches.
//!
//! ```text
//! Graph × Caps × Bucket ── rules::apply ──> ops with their fusions ── lower ──> Vec<Dispatch>
//! ```

mod lower;
pub mod rules;

use std::collections::HashMap;

use crate::gpu::Engine;
use crate::gpu::kernels::wg;
use crate::gpu::tensor::GpuTensor;
use crate::graph::{Act, Graph};

pub use rules::{Fusions, Rule};

/// Steps of different row counts take different kernels: decode's GEMVs (one row), the
/// buffer layout's GEMV (a few rows), tiled matmuls (more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// One row.
    Decode,
    /// 2 ..= [`wg::GEMV_MAX_ROWS`] rows.
    Small,
    /// More rows.
    Prefill,
}

impl Bucket {
    /// Every bucket, in plan order.
    pub const ALL: [Bucket; 3] = [Bucket::Decode, Bucket::Small, Bucket::Prefill];

    /// The bucket of a step of `rows` rows.
    pub fn of(rows: u32) -> Bucket {
        match rows {
            0 | 1 => Bucket::Decode,
            r if r <= wg::GEMV_MAX_ROWS => Bucket::Small,
            _ => Bucket::Prefill,
        }
    }
}

/// What the adapter and the model's load offer the planner.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Linear layers read textures (see [`crate::WeightLayout`]).
    pub textures: bool,
    /// The SUBGROUP feature (gemv_subgroup).
    pub subgroup: bool,
    /// Subgroups of at least 8 lanes (matmul_texture_subgroup.wgsl).
    pub subgroups8: bool,
    /// HS, fixed in the attention pipelines.
    pub head_size: u32,
    /// Steps may hold rows of several sequences (a batch's session), not one sequence's.
    pub batched: bool,
}

impl Caps {
    /// The capabilities of `gpu` for a model of head size `head_size`.
    pub fn new(gpu: &Engine, textures: bool, head_size: usize) -> Caps {
        Caps {
            textures,
            subgroup: gpu.device.features().contains(wgpu::Features::SUBGROUP),
            subgroups8: crate::gpu::kernels::subgroups_of_8(gpu),
            head_size: head_size as u32,
            batched: false,
        }
    }

    /// Whether a one-sequence step of several rows attends by tiles of queries
    /// (attention_texture_tile: HS 32 or 64).
    pub fn attends_by_tiles(&self) -> bool {
        self.textures && self.subgroups8 && !self.batched && [32, 64].contains(&self.head_size)
    }

    /// Whether decode's qkv projection can run the attention too: a head's 8-lane workgroup
    /// holds HS / 32 texels each of its query, key, value and output, at most 8.
    pub fn attends(&self) -> bool {
        self.textures
            && self.subgroups8
            && crate::gpu::kernels::gemv_attention_head_size(self.head_size)
    }
}

/// A workgroup count along one axis, by the step it is recorded for.
#[derive(Clone, Copy, Debug)]
pub enum Dim {
    /// This many.
    Fixed(u32),
    /// One per row.
    Rows,
    /// One per this many rows.
    RowsPer(u32),
    /// One per packed sequence.
    Seqs,
}

impl Dim {
    fn count(self, rows: u32, seqs: u32) -> u32 {
        match self {
            Dim::Fixed(n) => n,
            Dim::Rows => rows,
            Dim::RowsPer(n) => rows.div_ceil(n),
            Dim::Seqs => seqs,
        }
    }
}

/// One dispatch: pipeline, bind group (built once), workgroups; for a kernel reading a texture
/// copy of its input, the copy to record first.
#[derive(Clone)]
pub struct Dispatch {
    /// From the device's registry.
    pub pipe: wgpu::ComputePipeline,
    /// Built once, with the plan.
    pub bind: wgpu::BindGroup,
    /// Workgroups along x and y.
    pub grid: [Dim; 2],
    /// Copy this buffer's step rows into this texture before dispatching.
    pub copy: Option<(wgpu::Buffer, wgpu::Texture)>,
    /// The kernel family, for per-kernel timings.
    pub name: &'static str,
    /// Whether this dispatch runs a layer's attention (the attention debug path copies q, k, v
    /// after it).
    pub attends: bool,
}

impl Dispatch {
    /// A dispatch of `pipe` over `grid` with nothing copied first.
    pub fn new(
        pipe: wgpu::ComputePipeline,
        bind: wgpu::BindGroup,
        grid: [Dim; 2],
        name: &'static str,
    ) -> Self {
        Dispatch {
            pipe,
            bind,
            grid,
            copy: None,
            name,
            attends: false,
        }
    }

    /// Sets the pipeline and bind group and dispatches for a step of `rows` rows (`seqs`
    /// packed sequences).
    pub fn run(&self, pass: &mut wgpu::ComputePass, rows: u32, seqs: u32) {
        pass.set_pipeline(&self.pipe);
        pass.set_bind_group(0, &self.bind, &[]);
        let [x, y] = self.grid.map(|d| d.count(rows, seqs));
        pass.dispatch_workgroups(x, y, 1);
    }
}

/// The key and value caches of every layer: buffers, or rgba32float textures in the texture
/// layout, each (slots * n_ctx, C). An encoder keeps one pair for the pass (layer 0).
#[derive(Clone)]
pub enum KvCache {
    /// Storage buffers, per layer.
    Buffers {
        /// Keys.
        k: Vec<wgpu::Buffer>,
        /// Values.
        v: Vec<wgpu::Buffer>,
    },
    /// rgba32float textures (C / 4 texels wide), per layer.
    Textures {
        /// Keys.
        k: Vec<wgpu::TextureView>,
        /// Values.
        v: Vec<wgpu::TextureView>,
    },
}

/// What a plan binds besides the weights.
pub struct Io {
    /// The body's and the head's step uniforms.
    pub steps: [wgpu::Buffer; 2],
    /// (T) u32 token ids.
    pub tokens: wgpu::Buffer,
    /// Packed sequences: (T) per row and (B) per sequence (first row, length).
    pub spans: Option<[wgpu::Buffer; 2]>,
    /// Every activation the graph names.
    pub acts: HashMap<Act, wgpu::Buffer>,
    /// The texture layout's input textures, by the activation copied into them.
    pub textures: HashMap<Act, wgpu::Texture>,
    /// The attention's keys and values.
    pub kv: KvCache,
    /// Bound where a kernel's optional input is absent.
    pub zero: wgpu::Buffer,
    /// (T, widest activation): a linear's result before its unfused epilogue.
    pub tmp: Option<wgpu::Buffer>,
    /// (ceil(V / 32), 2) u32: the head's argmax candidates.
    pub partials: Option<wgpu::Buffer>,
    /// An encoder-decoder's cross-attention caches, shared by its encoder's plan (which
    /// fills them) and its decoder's (which reads them).
    pub cross: Option<CrossIo>,
}

/// The cross-attention's keys and values: one cache per decoder layer, each (source rows,
/// NKV HS), and where the source lies in them.
#[derive(Clone)]
pub struct CrossIo {
    /// Per decoder layer.
    pub kv: KvCache,
    /// (1) u32 pair: the source's first cache row and its length, written with each source.
    pub span: wgpu::Buffer,
}

/// The dispatches of a graph for every bucket.
pub struct Plan {
    /// The body's dispatches by bucket ([`Bucket::ALL`] order).
    pub body: [Vec<Dispatch>; 3],
    /// The head's.
    pub head: [Vec<Dispatch>; 3],
    /// Whether decode's head leaves argmax candidates in `Io::partials` (rule head_argmax).
    pub head_argmax: bool,
}

impl Plan {
    /// Lowers `graph` for every bucket; uniforms that need a copy at first use (a norm's gain
    /// and bias for norm_texture) are recorded into one submission here.
    pub fn new(
        gpu: &Engine,
        graph: &Graph<&GpuTensor>,
        caps: Caps,
        fusions: Fusions,
        io: &Io,
    ) -> Plan {
        let mut init = gpu.device.create_command_encoder(&Default::default());
        let mut lower = lower::Lower::new(gpu, caps, io, graph.dims, &mut init);
        let mut head_argmax = false;
        let mut section = |ops, head: bool, bucket| {
            let fuse = rules::apply(ops, &caps, bucket, fusions, head);
            head_argmax |= head && bucket == Bucket::Decode && fuse.iter().any(|f| f.argmax);
            lower.section(ops, &fuse, bucket, head)
        };
        let body = Bucket::ALL.map(|b| section(&graph.body, false, b));
        let head = Bucket::ALL.map(|b| section(&graph.head, true, b));
        gpu.queue.submit([init.finish()]);
        Plan {
            body,
            head,
            head_argmax,
        }
    }
}

/// Called between passes after each attention with the layer's index (the attention debug
/// path's copies).
pub type AfterAttention<'a> = dyn FnMut(&mut wgpu::CommandEncoder, usize) + 'a;

/// Records `ops` for a step of `rows` rows (`seqs` sequences) into `enc`: one compute pass,
/// broken where a kernel's input is copied into a texture first, and after every attention
/// when `after_attention` is given (the attention debug path's copies; its argument counts the
/// layers).
pub fn record(
    enc: &mut wgpu::CommandEncoder,
    ops: &[Dispatch],
    rows: u32,
    seqs: u32,
    mut after_attention: Option<&mut AfterAttention>,
) {
    let mut pass = enc
        .begin_compute_pass(&Default::default())
        .forget_lifetime();
    let mut layer = 0;
    for op in ops {
        if let Some((buf, tex)) = &op.copy {
            drop(pass);
            copy_rows_to_texture(enc, buf, tex, rows);
            pass = enc
                .begin_compute_pass(&Default::default())
                .forget_lifetime();
        }
        op.run(&mut pass, rows, seqs);
        if let (Some(f), true) = (after_attention.as_mut(), op.attends) {
            drop(pass);
            f(enc, layer);
            layer += 1;
            pass = enc
                .begin_compute_pass(&Default::default())
                .forget_lifetime();
        }
    }
}

/// Copies the first `rows` rows of the row-major f32 buffer `buf` into `tex` (width =
/// row / 4 texels): one buffer-to-texture copy whose rows are 256-byte aligned (the texture
/// layout's widths are multiples of 64 floats).
pub fn copy_rows_to_texture(
    enc: &mut wgpu::CommandEncoder,
    buf: &wgpu::Buffer,
    tex: &wgpu::Texture,
    rows: u32,
) {
    crate::runtime::copy_rows_to_texture(enc, buf, tex, rows, tex.width() * 16);
}
