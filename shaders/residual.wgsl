// Residual connection: x += y, over the first T rows of (T, C).

struct Step { rows: u32, row0: u32, pos0: u32, _pad: u32 }
struct Params { C: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (T, C)
@group(0) @binding(3) var<storage, read> y: array<f32>;        // (T, C)

@compute @workgroup_size(256)
fn residual(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.C || t >= step.rows) { return; }
    let i = t * p.C + c;
    x[i] += y[i];
}
