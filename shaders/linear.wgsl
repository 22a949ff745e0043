// Shared by the linear-layer kernels (matmul.wgsl, matmul_texture.wgsl), prepended to each by the
// kernel registry after step.wgsl (the step uniform) and activation.wgsl: parameters, bias and output bindings, and
// the fused epilogues.
// out[m, col0 + n] = epilogue(sum_k a[m, k] * w[n, k] + bias[col0 + n]); w is (N, K),
// output-major like torch.nn.Linear (the loader transposes GPT-2's Conv1D), so both operands are
// read along K, four at a time (K % 4 == 0, checked at load).
// Epilogues fuse what follows a projection in GPT-2, saving a dispatch and a round trip through
// memory each: GELU after the MLP's up-projection, the residual add after the down-projections.
// Encoders (BERT) use the erf form of GELU.

// kv_c and kv_w: for the decode GEMVs that touch the KV cache (gemv_texture_kv,
// gemv_texture_attention, gemv_texture_append), the queries' width NH HS (where the keys start
// in a row of qkv) and the keys' NKV HS (the values follow them); else 0. ln_eps: the fused
// layer norm's epsilon (NORM in matmul_texture_subgroup.wgsl).
struct Params { K: u32, N: u32, ldo: u32, col0: u32, has_bias: u32, kv_c: u32, ln_eps: f32, kv_w: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> bias: array<f32>;        // (col0 + N)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;   // (M, ldo)

// The epilogue, fixed per pipeline (an override constant): a CPU adapter (lavapipe) runs a
// branch on a run-time value by running every case under masks, loads and stores included.
// Its codes and activations are activation.wgsl's.
override EPILOGUE: u32 = 0u;

// The bias of outputs n0 .. n0 + 4 (0 past N, or without a bias), loaded once for all the rows
// of a block of outputs.
fn bias4(n0: u32) -> vec4<f32> {
    var b = vec4(0.0);
    if (p.has_bias != 0u) {
        for (var j = 0u; j < 4u; j++) {
            if (n0 + j < p.N) { b[j] = bias[p.col0 + n0 + j]; }
        }
    }
    return b;
}

// Writes outputs n0 .. n0 + 4 of row m (those below N): acc plus the bias b, then the epilogue.
// Four at a time, so the bias and the epilogue's code are shared (on lavapipe every storage
// access is a loop over the lanes: per-output stores made matmul_texture ~30% slower).
fn store4(m: u32, n0: u32, acc: vec4<f32>, b: vec4<f32>) {
    var v = acc + b;
    if (EPILOGUE == EPILOGUE_GATED_SILU) {
        // Interleaved (gate, up) outputs: the pairs (n0, n0 + 1) and (n0 + 2, n0 + 3) become
        // outputs (col0 + n0) / 2 and the next of a row half as wide (N and col0 are even).
        let o = m * (p.ldo / 2u) + (p.col0 + n0) / 2u;
        let g = activate4(EPILOGUE_SILU, vec4(v.x, v.z, 0.0, 0.0));
        if (n0 + 1u < p.N) { out[o] = g.x * v.y; }
        if (n0 + 3u < p.N) { out[o + 1u] = g.y * v.w; }
        return;
    }
    let i = m * p.ldo + p.col0 + n0;
    if (EPILOGUE == EPILOGUE_RESIDUAL) {
        for (var j = 0u; j < 4u; j++) {
            if (n0 + j < p.N) { v[j] += out[i + j]; }
        }
    } else {
        v = activate4(EPILOGUE, v);
    }
    for (var j = 0u; j < 4u; j++) {
        if (n0 + j < p.N) { out[i + j] = v[j]; }
    }
}
