// The N largest logits of a row (one workgroup per row) with their probabilities under the model's own distribution
// (softmax at temperature 1): N = 1 is greedy decoding (only the chosen id comes back), larger N
// the candidates `wgpt generate --top N` shows. N rounds of a workgroup argmax, each over what
// comes after the previous winner in the order (value descending, id ascending): ties go to the
// lowest id as in torch.argmax, and NaN never wins.

struct Params { V: u32, N: u32, _a: u32, _b: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;     // (rows, V)
@group(0) @binding(2) var<storage, read_write> top: array<u32>;  // (rows, 2N): id, probability bits

const WG: u32 = 256u;
const MAX_N: u32 = 64u;  // kernels::MAX_TOP
var<workgroup> best_val: array<f32, WG>;
var<workgroup> best_idx: array<u32, WG>;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn argmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let n = min(p.N, MAX_N);
    let row = wg.x * p.V;
    let out = wg.x * 2u * n;

    // Round 0 and the softmax normaliser in one pass and one reduction: per lane the running
    // maximum, its first index and the sum of exp(logit - maximum), rescaled as the maximum
    // grows (on lavapipe each pass over V and each reduction's barriers cost about as much as
    // the whole of a small kernel). NaN never becomes the maximum but poisons the sum, as the
    // two-pass form did; -inf logits add exp(-inf) = 0.
    var mx = -3.4e38;
    var mi = 0xffffffffu;
    var z = 0.0;
    for (var i = lid; i < p.V; i += WG) {
        let v = logits[row + i];
        if (v > mx) {
            z = z * exp(mx - v) + 1.0;
            mx = v;
            mi = i;
        } else {
            z += exp(v - mx);
        }
    }
    best_val[lid] = mx;
    best_idx[lid] = mi;
    red[lid] = z;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let m1 = best_val[lid];
            let m2 = best_val[lid + s];
            let m = max(m1, m2);
            red[lid] = red[lid] * exp(m1 - m) + red[lid + s] * exp(m2 - m);
            let oi = best_idx[lid + s];
            if (m2 > m1 || (m2 == m1 && oi < best_idx[lid])) {
                best_val[lid] = m2;
                best_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    mx = best_val[0];
    z = red[0];
    var prev_val = mx;
    var prev_idx = best_idx[0];
    if (lid == 0u) {
        top[out] = select(prev_idx, 0u, prev_idx == 0xffffffffu);
        top[out + 1u] = bitcast<u32>(1.0 / z);
    }
    workgroupBarrier();

    let neg_inf = bitcast<f32>(0xff800000u);
    for (var r = 1u; r < n; r++) {
        var bv = neg_inf;
        var bi = 0xffffffffu;
        for (var i = lid; i < p.V; i += WG) {
            let v = logits[row + i];
            let after = v < prev_val || (v == prev_val && i > prev_idx);
            // Strided ascending: the first maximum of this lane wins; NaN compares false.
            if (after && v > bv) { bv = v; bi = i; }
        }
        workgroup_best(lid, bv, bi);
        prev_val = best_val[0];
        prev_idx = best_idx[0];
        if (lid == 0u) {
            top[out + 2u * r] = select(prev_idx, 0u, prev_idx == 0xffffffffu);
            top[out + 2u * r + 1u] = bitcast<u32>(exp(prev_val - mx) / z);
        }
        workgroupBarrier();
    }
}

// The workgroup's largest v, the lowest index i among equals, into best_val[0] and best_idx[0]
// (NaN never wins: it compares false).
fn workgroup_best(lid: u32, v: f32, i: u32) {
    best_val[lid] = v;
    best_idx[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = best_val[lid + s];
            let oi = best_idx[lid + s];
            if (ov > best_val[lid] || (ov == best_val[lid] && oi < best_idx[lid])) {
                best_val[lid] = ov;
                best_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
}

@group(0) @binding(3) var<storage, read> partials: array<vec2<u32>>;  // (V): value bits, index

// Greedy decoding's argmax from the head's per-workgroup candidates (matmul_texture_subgroup.wgsl's
// gemv_texture_argmax): here V counts the candidates. Writes the winning id only (greedy reads
// nothing else). One SIMD-wide workgroup and one barrier: that path serves CPU adapters, where a
// 256-lane workgroup's barriers cost ~0.7 ms (lavapipe runs the lanes 8 at a time and switches
// between the groups at every barrier).
const PARTIAL_LANES: u32 = 8u;

@compute @workgroup_size(PARTIAL_LANES)
fn argmax_partials(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.V; i += PARTIAL_LANES) {
        let c = partials[i];
        let v = bitcast<f32>(c.x);
        if (v > bv || (v == bv && c.y < bi)) { bv = v; bi = c.y; }
    }
    best_val[lid] = bv;
    best_idx[lid] = bi;
    workgroupBarrier();
    if (lid == 0u) {
        for (var l = 1u; l < PARTIAL_LANES; l++) {
            let ov = best_val[l];
            let oi = best_idx[l];
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        top[0] = select(bi, 0u, bi == 0xffffffffu);
    }
}
