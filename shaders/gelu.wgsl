// GELU as GPT-2 computes it (transformers' gelu_new, the tanh approximation), in place.

struct Step { rows: u32, row0: u32, pos0: u32, _pad: u32 }
struct Params { width: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;  // (T, width)

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

@compute @workgroup_size(256)
fn gelu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.width || t >= step.rows) { return; }
    let i = t * p.width + c;
    let x = h[i];
    // tanh saturates to +-1 in f32 beyond |u| = 9; clamping keeps drivers that build tanh from
    // exp() away from inf/inf = NaN.
    let u = clamp(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x), -10.0, 10.0);
    h[i] = 0.5 * x * (1.0 + tanh(u));
}
