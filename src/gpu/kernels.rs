//! The kernel registry: every WGSL source, embedded with `include_str!`, its compute pipeline, and
//! the uniform structs each one reads. File, entry point and Rust names match.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Gpu;
use crate::gpu::tensor::WeightDtype;

/// A WGSL kernel family: `shaders/{name}.wgsl`, whose main entry point is also `{name}`,
/// compiled after an optional shared `prelude` file (plain concatenation, no templating).
pub struct KernelSource {
    pub name: &'static str,
    pub prelude: &'static str,
    pub wgsl: &'static str,
}

impl KernelSource {
    pub fn source(&self) -> String {
        format!("{}\n{}", self.prelude, self.wgsl)
    }
}

macro_rules! kernel {
    ($name:literal) => {
        KernelSource {
            name: $name,
            prelude: "",
            wgsl: include_str!(concat!("../../shaders/", $name, ".wgsl")),
        }
    };
    ($name:literal after $prelude:literal) => {
        KernelSource {
            name: $name,
            prelude: include_str!(concat!("../../shaders/", $prelude, ".wgsl")),
            wgsl: include_str!(concat!("../../shaders/", $name, ".wgsl")),
        }
    };
}

/// Every kernel wgpt ships, in forward-pass order.
pub const KERNELS: &[KernelSource] = &[
    kernel!("embed"),
    kernel!("layernorm"),
    kernel!("matmul" after "linear"),
    kernel!("matmul_texture" after "linear"),
    kernel!("kv_append"),
    kernel!("kv_append_texture"),
    kernel!("attention"),
    kernel!("attention_texture"),
    kernel!("argmax"),
    kernel!("sample"),
    kernel!("fill_random"),
];

/// Per-step values shared by every kernel of a step; two live per session (the body's and the
/// head's), rewritten in place each step. Mirrors `struct Step` in the shaders.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Step {
    /// Rows (tokens) this dispatch works on: T for the body, the head's rows for the head.
    pub rows: u32,
    /// First row of the input the head reads (the body starts at 0).
    pub row0: u32,
    /// Position of the step's first token in the sequence.
    pub pos0: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EmbedParams {
    pub c: u32,
    pub tok0: u32,
    pub tok_rows: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct LayerNormParams {
    pub c: u32,
    pub eps: f32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MatmulParams {
    pub k: u32,
    pub n: u32,
    /// Row stride of the output (N, or V for a chunk of the head).
    pub ldo: u32,
    /// First output column this weight chunk writes.
    pub col0: u32,
    pub has_bias: u32,
    /// An [`Epilogue`] as u32.
    pub epilogue: u32,
    pub _pad: [u32; 2],
}

/// What the linear kernels do with a result after the bias (matmul.wgsl's EPILOGUE_*).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    Store = 0,
    /// GPT-2's gelu_new, fused into the MLP's up-projection.
    Gelu = 1,
    /// out += result: the residual add, fused into the down-projections.
    Residual = 2,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttentionParams {
    pub c: u32,
    pub nh: u32,
    pub hs: u32,
    pub scale: f32,
}

/// One width, for kv_append.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct WidthParams {
    pub width: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SampleParams {
    pub v: u32,
    pub temperature: f32,
    pub u: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub penalty: f32,
    pub n_recent: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FillParams {
    pub n: u32,
    pub seed: u32,
    pub scale: f32,
    pub center: f32,
    /// q8 only: words per stored row, and how many of them at its start are int8 (the rest
    /// get scales).
    pub row_words: u32,
    pub q_words: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ArgmaxParams {
    pub v: u32,
    /// How many of the largest logits to return (1 = greedy).
    pub n: u32,
    pub _pad: [u32; 2],
}

/// The most candidates `argmax.wgsl` returns.
pub const MAX_TOP: usize = 64;

/// Workgroup sizes, as declared in the shaders; dispatch counts are computed from them.
pub mod wg {
    pub const EMBED: u32 = 64;
    /// matmul.wgsl: output rows and columns per workgroup.
    pub const MATMUL_TILE: u32 = 32;
    /// gemv.wgsl: invocations per workgroup, each computing 4 outputs.
    pub const GEMV: u32 = 64;
    /// Steps of at most this many rows use gemv, longer ones the tiled matmul. Measured on
    /// lavapipe (K = 768, N = 2304): at 1 row gemv is ~9x faster than the 32 x 32 tile.
    pub const GEMV_MAX_ROWS: u32 = 4;
    /// matmul_texture.wgsl: invocations per workgroup; each computes 4 columns (x 4 rows for
    /// matmul_texture).
    pub const LINEAR_TEXTURE: u32 = 8;
    /// gemv_texture's uniform input holds this many floats (rows x K): the 64 KiB every
    /// adapter allows in one uniform binding. Larger steps use matmul_texture.
    pub const GEMV_UNIFORM_FLOATS: u32 = 16384;
    /// attention_texture.wgsl: invocations per workgroup, one per head.
    pub const ATTENTION_TEXTURE: u32 = 8;
    pub const KV_APPEND: u32 = 64;
}

/// Every compute pipeline, built once per model.
pub struct Pipelines {
    pub embed: wgpu::ComputePipeline,
    pub layernorm: wgpu::ComputePipeline,
    pub matmul: wgpu::ComputePipeline,
    pub gemv: wgpu::ComputePipeline,
    pub matmul_texture: wgpu::ComputePipeline,
    pub gemv_texture: wgpu::ComputePipeline,
    pub kv_append: wgpu::ComputePipeline,
    pub kv_append_texture: wgpu::ComputePipeline,
    pub attention: wgpu::ComputePipeline,
    pub attention_texture: wgpu::ComputePipeline,
    pub argmax: wgpu::ComputePipeline,
    pub sample: wgpu::ComputePipeline,
}

/// Compiles kernel `name` (entry point of the same name) with its override `constants`.
pub fn pipeline(
    gpu: &Gpu,
    name: &str,
    layout: Option<&wgpu::PipelineLayout>,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    entry_pipeline(gpu, name, name, layout, constants)
}

/// Compiles entry point `entry` of kernel family `family` (e.g. `gemv` in `matmul.wgsl`).
pub fn entry_pipeline(
    gpu: &Gpu,
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
    /// Every pipeline of the forward pass, for weights stored as `dtype`.
    pub fn new(gpu: &Gpu, dtype: WeightDtype) -> Self {
        let weights: &[(&str, f64)] = &[
            ("WEIGHT_F16", (dtype == WeightDtype::F16) as u8 as f64),
            ("WEIGHT_Q8", (dtype == WeightDtype::Q8) as u8 as f64),
        ];
        // matmul and gemv share one explicit layout, so one bind group serves both and the
        // choice between them can be made per step.
        let linear = linear_layout(gpu, false);
        let linear_texture = linear_layout(gpu, true);
        Pipelines {
            embed: pipeline(gpu, "embed", None, weights),
            layernorm: pipeline(gpu, "layernorm", None, &[]),
            matmul: pipeline(gpu, "matmul", Some(&linear), weights),
            gemv: entry_pipeline(gpu, "matmul", "gemv", Some(&linear), weights),
            matmul_texture: pipeline(gpu, "matmul_texture", Some(&linear_texture), weights),
            gemv_texture: entry_pipeline(
                gpu,
                "matmul_texture",
                "gemv_texture",
                Some(&linear_texture),
                weights,
            ),
            kv_append: pipeline(gpu, "kv_append", None, &[]),
            kv_append_texture: pipeline(gpu, "kv_append_texture", None, &[]),
            attention: pipeline(gpu, "attention", None, &[]),
            attention_texture: pipeline(gpu, "attention_texture", None, &[]),
            argmax: pipeline(gpu, "argmax", None, &[]),
            sample: pipeline(gpu, "sample", None, &[]),
        }
    }
}

/// step, params (uniform); a, w (read: buffers, or rgba32float storage textures); bias (read);
/// out (read-write); with textures also gemv_texture's input x (uniform, 64 KiB).
fn linear_layout(gpu: &Gpu, textures: bool) -> wgpu::PipelineLayout {
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
        entries.push(entry(6, wgpu::BufferBindingType::Uniform));
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
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let resources = buffers.iter().map(|b| b.as_entire_binding()).collect();
    bind_resources(gpu, pipeline, label, resources)
}

/// A bind group for `pipeline` binding `resources` at 0, 1, 2, ...
pub fn bind_resources(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    resources: Vec<wgpu::BindingResource>,
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = resources
        .into_iter()
        .enumerate()
        .map(|(i, resource)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource,
        })
        .collect();
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}
