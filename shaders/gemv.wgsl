// out[m, col0 + n] = sum_k a[m, k] * w[n, k] + bias[col0 + n], for decode (a few rows).
// Same bindings as matmul.wgsl. No workgroup memory or barriers: each invocation computes four
// adjacent outputs of one row, streaming the four weight rows along K as vec4 while the
// activation row stays in cache. At one row the tiled matmul wastes 31/32 of its work; this
// does none.

struct Step { rows: u32, row0: u32, pos0: u32, _pad: u32 }
struct Params { K: u32, N: u32, ldo: u32, col0: u32, has_bias: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;     // (M, K)
@group(0) @binding(3) var<storage, read> w: array<u32>;           // (N, K) f32 or f16 words
@group(0) @binding(4) var<storage, read> bias: array<f32>;        // (col0 + N)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;   // (M, ldo)

// Weights are raw words: f32 bits, or two IEEE halves per word when WEIGHT_F16 (set per model
// at pipeline creation). Either way they are computed in f32.
override WEIGHT_F16: bool = false;

// Weights i .. i + 4 (i a multiple of 4) as f32.
fn w4(i: u32) -> vec4<f32> {
    if (WEIGHT_F16) {
        let j = i / 2u;
        return vec4(unpack2x16float(w[j]), unpack2x16float(w[j + 1u]));
    }
    return bitcast<vec4<f32>>(vec4(w[i], w[i + 1u], w[i + 2u], w[i + 3u]));
}

@compute @workgroup_size(64)
fn gemv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n0 = gid.x * 4u;
    let m = gid.y;
    if (n0 >= p.N || m >= step.rows) { return; }
    let K4 = p.K / 4u;
    let ar = m * K4;
    // Rows past N repeat the last one; their results are not stored.
    let r0 = n0 * p.K;
    let r1 = min(n0 + 1u, p.N - 1u) * p.K;
    let r2 = min(n0 + 2u, p.N - 1u) * p.K;
    let r3 = min(n0 + 3u, p.N - 1u) * p.K;
    var c0 = vec4(0.0);
    var c1 = vec4(0.0);
    var c2 = vec4(0.0);
    var c3 = vec4(0.0);
    for (var k = 0u; k < K4; k++) {
        let x = a[ar + k];
        c0 += x * w4(r0 + 4u * k);
        c1 += x * w4(r1 + 4u * k);
        c2 += x * w4(r2 + 4u * k);
        c3 += x * w4(r3 + 4u * k);
    }
    let one = vec4(1.0);
    let s = vec4(dot(c0, one), dot(c1, one), dot(c2, one), dot(c3, one));
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if (n < p.N) {
            var v = s[j];
            if (p.has_bias != 0u) { v += bias[p.col0 + n]; }
            out[m * p.ldo + p.col0 + n] = v;
        }
    }
}
