// LayerNorm over the last dimension, one workgroup per row.
// Two passes (mean, then mean of squared deviations) as PyTorch does: the one-pass
// E[x^2] - E[x]^2 form loses digits when |mean| >> std, which residual streams do have.
// With RMS, Llama's RMSNorm: x / sqrt(mean(x^2) + eps) * weight (no mean, no bias).

struct Params { C: u32, eps: f32, _a: u32, _b: u32 }

// step (binding 0): step.wgsl's, prepended by the kernel registry.
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> inp: array<f32>;        // (row0 + rows, C)
@group(0) @binding(3) var<storage, read> weight: array<f32>;     // (C)
@group(0) @binding(4) var<storage, read> bias: array<f32>;       // (C)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (rows, C)

// RMSNorm instead of LayerNorm.
override RMS: bool = false;

const WG: u32 = 128u;
var<workgroup> red: array<f32, WG>;

// Sum of `v` over the workgroup; every invocation gets the result.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn layernorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wg.x;
    if (r >= step.rows) { return; }
    let lid = lid3.x;
    let src = (step.row0 + r) * p.C;
    let n = f32(p.C);

    var mean = 0.0;
    if (!RMS) {
        var s = 0.0;
        for (var c = lid; c < p.C; c += WG) { s += inp[src + c]; }
        mean = workgroup_sum(lid, s) / n;
    }

    var v = 0.0;
    for (var c = lid; c < p.C; c += WG) {
        let d = inp[src + c] - mean;
        v += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(lid, v) / n + p.eps);

    let dst = r * p.C;
    for (var c = lid; c < p.C; c += WG) {
        var y = (inp[src + c] - mean) * rstd * weight[c];
        if (!RMS) { y += bias[c]; }
        out[dst + c] = y;
    }
}
