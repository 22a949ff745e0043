// Token + learned position embedding: x[t] = wte[tokens[t]] + wpe[position(t)] (step.wgsl is
// prepended).
// The token table may be split into row chunks (see gpu/tensor.rs); one dispatch per chunk,
// each writing only the rows whose token falls in its range.

struct Params { C: u32, tok0: u32, tok_rows: u32, _pad: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;   // (T)
@group(0) @binding(3) var<storage, read> wte: array<u32>;      // (tok_rows, C): rows tok0.. of (V, C), f32 or f16 words
@group(0) @binding(4) var<storage, read> wpe: array<f32>;      // (n_ctx, C)
@group(0) @binding(5) var<storage, read_write> x: array<f32>;  // (T, C)

// The token table is stored like the head's weights (it is the head when tied): f32 bits, or
// two halves per word when WEIGHT_F16.
override WEIGHT_F16: bool = false;

fn wte_at(i: u32) -> f32 {
    if (WEIGHT_F16) {
        let pair = unpack2x16float(wte[i / 2u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(wte[i]);
}

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.C || t >= step.rows) { return; }
    let tok = tokens[t];
    if (tok < p.tok0 || tok >= p.tok0 + p.tok_rows) { return; }
    x[t * p.C + c] = wte_at((tok - p.tok0) * p.C + c) + wpe[position(t) * p.C + c];
}
