// Sentence embeddings from an encoder's last hidden states, as sentence-transformers pools them:
// one workgroup per sequence (sequences packed in the rows of x), reducing its rows
// spans[s].x .. spans[s].x + spans[s].y to one vector: their mean, their elementwise max, or
// the first ([CLS]) row; then, with `normalize`, divided by its L2 norm (floored at 1e-12 as
// torch.nn.functional.normalize does). Padding never enters: a sequence's span is its tokens.

struct Params { C: u32, mode: u32, normalize: u32, _a: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;              // (T, C) hidden states
@group(0) @binding(2) var<storage, read> spans: array<vec2<u32>>;    // (B) first row, length
@group(0) @binding(3) var<storage, read_write> out: array<f32>;      // (B, C)

const POOL_MEAN: u32 = 0u;
const POOL_MAX: u32 = 1u;
const POOL_CLS: u32 = 2u;
const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let s = wg.x;
    let lid = lid3.x;
    let first = spans[s].x;
    let n = spans[s].y;
    let dst = s * p.C;
    var sq = 0.0;
    for (var c = lid; c < p.C; c += WG) {
        var v = x[first * p.C + c];
        if (p.mode == POOL_MEAN) {
            for (var r = 1u; r < n; r++) { v += x[(first + r) * p.C + c]; }
            v /= f32(n);
        } else if (p.mode == POOL_MAX) {
            for (var r = 1u; r < n; r++) { v = max(v, x[(first + r) * p.C + c]); }
        }
        out[dst + c] = v;
        sq += v * v;
    }
    if (p.normalize == 0u) { return; }
    // Sum of squares over the workgroup (each invocation keeps its own columns' values in `out`).
    red[lid] = sq;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    let inv = 1.0 / max(sqrt(red[0]), 1e-12);
    for (var c = lid; c < p.C; c += WG) { out[dst + c] *= inv; }
}
