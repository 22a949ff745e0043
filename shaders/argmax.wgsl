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

    // Softmax normaliser: max, then sum of exp.
    var mx = -3.4e38;
    for (var i = lid; i < p.V; i += WG) { mx = max(mx, logits[row + i]); }
    red[lid] = mx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    mx = red[0];
    workgroupBarrier();
    var z = 0.0;
    for (var i = lid; i < p.V; i += WG) { z += exp(logits[row + i] - mx); }
    red[lid] = z;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    z = red[0];
    workgroupBarrier();

    var prev_val = 3.4e38;
    var prev_idx = 0xffffffffu;
    let neg_inf = bitcast<f32>(0xff800000u);
    for (var r = 0u; r < n; r++) {
        var bv = neg_inf;
        var bi = 0xffffffffu;
        for (var i = lid; i < p.V; i += WG) {
            let v = logits[row + i];
            let after = r == 0u || v < prev_val || (v == prev_val && i > prev_idx);
            // Strided ascending: the first maximum of this lane wins; NaN compares false.
            if (after && v > bv) { bv = v; bi = i; }
        }
        best_val[lid] = bv;
        best_idx[lid] = bi;
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
        prev_val = best_val[0];
        prev_idx = best_idx[0];
        if (lid == 0u) {
            top[out + 2u * r] = select(prev_idx, 0u, prev_idx == 0xffffffffu);
            top[out + 2u * r + 1u] = bitcast<u32>(exp(prev_val - mx) / z);
        }
        workgroupBarrier();
    }
}
