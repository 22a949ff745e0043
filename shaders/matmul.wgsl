// out[m, col0 + n] = sum_k a[m, k] * w[n, k] + bias[col0 + n]
// w is (N, K), output-major like torch.nn.Linear (the loader transposes GPT-2's Conv1D), so both
// operands are read along K. Tiled: each workgroup computes a 16x16 output tile, staging 16x16
// tiles of a and w in workgroup memory.

struct Step { rows: u32, row0: u32, pos0: u32, _pad: u32 }
struct Params { K: u32, N: u32, ldo: u32, col0: u32, has_bias: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> a: array<f32>;          // (M, K), M = step.rows
@group(0) @binding(3) var<storage, read> w: array<f32>;          // (N, K)
@group(0) @binding(4) var<storage, read> bias: array<f32>;       // (col0 + N)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (M, ldo)

const TS: u32 = 16u;
var<workgroup> a_tile: array<array<f32, TS>, TS>;  // [m][k]
var<workgroup> w_tile: array<array<f32, TS>, TS>;  // [n][k]

@compute @workgroup_size(TS, TS)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let M = step.rows;
    let m0 = wg.y * TS;
    let n0 = wg.x * TS;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.K; k0 += TS) {
        let k = k0 + lid.x;
        let am = m0 + lid.y;
        var av = 0.0;
        if (am < M && k < p.K) { av = a[am * p.K + k]; }
        a_tile[lid.y][lid.x] = av;
        let wn = n0 + lid.y;
        var wv = 0.0;
        if (wn < p.N && k < p.K) { wv = w[wn * p.K + k]; }
        w_tile[lid.y][lid.x] = wv;
        workgroupBarrier();
        for (var kk = 0u; kk < TS; kk++) {
            acc += a_tile[lid.y][kk] * w_tile[lid.x][kk];
        }
        workgroupBarrier();
    }
    let m = m0 + lid.y;
    let n = n0 + lid.x;
    if (m < M && n < p.N) {
        if (p.has_bias != 0u) { acc += bias[p.col0 + n]; }
        out[m * p.ldo + p.col0 + n] = acc;
    }
}
