// LayerNorm for CPU adapters (the texture layout): layernorm.wgsl's two-pass algorithm with one
// invocation per row, reading four values at a time. No workgroup memory and no barriers: on
// lavapipe a barrier suspends and resumes every lane, and a lane's storage loads are a scalar
// loop anyway, so layernorm.wgsl's 128-lane reductions cost more than the loads. C % 4 == 0.

struct Params { C: u32, eps: f32, _a: u32, _b: u32 }

// step (binding 0): step.wgsl's, prepended by the kernel registry.
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> inp: array<vec4<f32>>;        // (row0 + rows, C / 4)
@group(0) @binding(3) var<storage, read> weight: array<vec4<f32>>;     // (C / 4)
@group(0) @binding(4) var<storage, read> bias: array<vec4<f32>>;       // (C / 4)
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;  // (rows, C / 4)

// LOOP BOUNDS: the loops over C / 4 also take the bound from a buffer's or texture's size. A
// bound that comes from a uniform alone lets lavapipe (Mesa 22.3) inline the uniform and
// compile a variant of the shader at every dispatch when the loop is short (C = 64: 70 ms and
// ~3.6 MB of memory per dispatch, against 0.4 ms).

// RMSNorm instead of LayerNorm (layernorm_rows only): no mean, no bias.
override RMS: bool = false;

@compute @workgroup_size(8)
fn layernorm_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= step.rows) { return; }
    let c4 = min(p.C / 4u, arrayLength(&weight));  // see LOOP BOUNDS above
    let src = (step.row0 + r) * c4;
    let n = f32(p.C);

    var mean = 0.0;
    if (!RMS) {
        var s = vec4(0.0);
        for (var c = 0u; c < c4; c++) { s += inp[src + c]; }
        mean = dot(s, vec4(1.0)) / n;
    }

    var v = vec4(0.0);
    for (var c = 0u; c < c4; c++) {
        let d = inp[src + c] - mean;
        v += d * d;
    }
    let rstd = inverseSqrt(dot(v, vec4(1.0)) / n + p.eps);

    let dst = r * c4;
    for (var c = 0u; c < c4; c++) {
        var y = (inp[src + c] - mean) * rstd * weight[c];
        if (!RMS) { y += bias[c]; }
        out[dst + c] = y;
    }
}

// layernorm_rows for a multi-row step whose output feeds a linear layer reading textures: the
// rows come from the texture `x_rows` (the residual stream, copied in) and go straight into the
// linear layer's input texture, the gain and bias from one uniform binding. On lavapipe a texel
// fetch or a uniform load is one vectorised gather where a storage access is a loop over the
// lanes: ~6x faster than layernorm_rows at GPT-2's prefill shape, and it saves the copy of the
// output into the input texture. C <= 4096.
@group(0) @binding(6) var x_rows: texture_storage_2d<rgba32float, read>;    // (rows, C / 4)
@group(0) @binding(7) var<uniform> gain_bias: array<vec4<f32>, 2048>;       // (2, C / 4)
@group(0) @binding(8) var out_rows: texture_storage_2d<rgba32float, write>; // (rows, C / 4)

@compute @workgroup_size(8)
fn layernorm_rows_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= step.rows) { return; }
    let c4 = min(p.C / 4u, textureDimensions(x_rows).x);  // see LOOP BOUNDS above
    let n = f32(p.C);

    var s = vec4(0.0);
    for (var c = 0u; c < c4; c++) { s += textureLoad(x_rows, vec2(c, r)); }
    let mean = dot(s, vec4(1.0)) / n;

    var v = vec4(0.0);
    for (var c = 0u; c < c4; c++) {
        let d = textureLoad(x_rows, vec2(c, r)) - mean;
        v += d * d;
    }
    let rstd = inverseSqrt(dot(v, vec4(1.0)) / n + p.eps);

    for (var c = 0u; c < c4; c++) {
        let y = (textureLoad(x_rows, vec2(c, r)) - mean) * rstd * gain_bias[c] + gain_bias[c4 + c];
        textureStore(out_rows, vec2(c, r), y);
    }
}
