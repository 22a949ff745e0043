//! One registry of compute pipelines per device, keyed by what specialises a pipeline: kernel
//! family (the WGSL file), entry point, override constants and bind group layout. Built lazily
//! on a plan's first use (candle's pipeline cache works this way) and shared by every model and
//! session on the device; nothing is built on the per-token path.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::gpu::Engine;
use crate::gpu::kernels::{self, Extra};

/// The bind group layout a pipeline is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Derived by wgpu from the shader (kernels bound by one pipeline only).
    Derived,
    /// The linear layers' explicit layout (`textures`: the texture layout's), with the fused
    /// GEMVs' extra bindings: every pipeline of one layout accepts the same bind group.
    Linear { textures: bool, extra: Extra },
}

/// What specialises a pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// `shaders/{family}.wgsl`.
    pub family: &'static str,
    /// Its entry point.
    pub entry: &'static str,
    /// Override constants (every one wgpt uses is an integer or a flag), sorted by name.
    pub constants: Vec<(&'static str, u32)>,
    pub layout: Layout,
}

impl Key {
    /// Entry `entry` of `family` with a derived layout and no constants.
    pub fn new(family: &'static str, entry: &'static str) -> Key {
        Key {
            family,
            entry,
            constants: Vec::new(),
            layout: Layout::Derived,
        }
    }

    /// The same key with override constant `name` = `value` (0 values are left out: every
    /// constant defaults to 0).
    pub fn with(mut self, name: &'static str, value: u32) -> Key {
        if value != 0 {
            self.constants.retain(|(n, _)| *n != name);
            self.constants.push((name, value));
            self.constants.sort();
        }
        self
    }

    /// The same key built with `layout`.
    pub fn layout(self, layout: Layout) -> Key {
        Key { layout, ..self }
    }
}

/// Pipelines and the explicit layouts they share.
#[derive(Default)]
pub struct Registry {
    pipelines: Mutex<HashMap<Key, wgpu::ComputePipeline>>,
    layouts: Mutex<HashMap<(bool, Extra), wgpu::PipelineLayout>>,
}

impl Registry {
    /// The pipeline of `key`, compiled on first request.
    pub fn get(&self, gpu: &Engine, key: &Key) -> wgpu::ComputePipeline {
        let mut map = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(key) {
            return p.clone();
        }
        let layout = match key.layout {
            Layout::Derived => None,
            Layout::Linear { textures, extra } => Some(self.linear_layout(gpu, textures, extra)),
        };
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
        let pipe = kernels::compile(gpu, key.family, key.entry, layout.as_ref(), &constants);
        map.insert(key.clone(), pipe.clone());
        pipe
    }

    fn linear_layout(&self, gpu: &Engine, textures: bool, extra: Extra) -> wgpu::PipelineLayout {
        let mut map = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((textures, extra))
            .or_insert_with(|| kernels::linear_layout_with(gpu, textures, extra))
            .clone()
    }
}
