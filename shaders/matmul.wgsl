// Linear layers with operands in storage buffers (linear.wgsl is prepended: uniforms, bias,
// output, epilogues).
//   matmul: prefill (many rows). Register-blocked and tiled: a workgroup of 8 x 8 invocations
//           computes a 32 x 32 output tile, each invocation a 4 x 4 block; 32-wide slices of K
//           of both operands are staged in workgroup memory.
//   gemv:   decode (a few rows): a workgroup per four outputs of a row, its lanes splitting K
//           (see below). At one row the tiled matmul wastes 31/32 of its work; this does none.

@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;     // (M, K), M = step.rows
@group(0) @binding(3) var<storage, read> w: array<u32>;           // (N, K) f32, f16, q8 or nibble-format words

// Weights are raw words in the pipeline's WEIGHT_FORMAT (format.wgsl and the format_*.wgsl
// decoders): f32 bits, f16 pairs, q8 int8s with their block scales, or a nibble format's values with their
// block scales (format_nibbles.wgsl). Computed in f32 either
// way.

// Words of one stored weight row.
fn row_words() -> u32 {
    if (WEIGHT_FORMAT == FORMAT_Q8) { return q8_row_words(p.K); }
    if (is_nibbles()) { return qn_row_words(p.K); }
    if (WEIGHT_FORMAT == FORMAT_F16) { return f16_row_words(p.K); }
    return p.K;
}

// Weights 4 k4 .. 4 k4 + 4 of row n, as f32.
fn w4(n: u32, k4: u32) -> vec4<f32> {
    let rw = n * row_words();
    if (WEIGHT_FORMAT == FORMAT_Q8) {
        return i8x4(w[rw + k4]) * bitcast<f32>(w[q8_scale_word(n, k4 / 8u, p.K)]);
    }
    if (is_nibbles()) {
        // Word k4 / 2 holds weights 4 k4 .. 4 k4 + 4 in its low nibbles when k4 is even.
        let b = k4 / 8u;
        let j = k4 % 8u / 2u;
        let word = w[rw + k4 / 2u];
        let h = high_words(rw, b);
        let v = select(qn_hi(word, h, j), qn_lo(word, h, j), k4 % 2u == 0u);
        let s = qn_scale_word(n, b, p.K);
        let pair = qn_pair(w[s], w[s + qn_second()]);
        let sm = qn_sm(pair.x, pair.y, j);
        return v * sm.x + sm.y;
    }
    if (WEIGHT_FORMAT == FORMAT_F16) {
        let j = rw + 2u * k4;
        return vec4(unpack2x16float(w[j]), unpack2x16float(w[j + 1u]));
    }
    let j = rw + 4u * k4;
    return bitcast<vec4<f32>>(vec4(w[j], w[j + 1u], w[j + 2u], w[j + 3u]));
}

// The high words of block b of the row starting at word rw (nibble formats).
fn high_words(rw: u32, b: u32) -> vec2<u32> {
    let i = rw + qn_high_word(b, p.K);
    return vec2(w[i], w[i + select(0u, 1u, WEIGHT_FORMAT == FORMAT_Q6)]);
}

const TILE: u32 = 32u;   // output rows and columns per workgroup
const BK4: u32 = 8u;     // vec4s of K per stage (32 floats)
var<workgroup> a_tile: array<array<vec4<f32>, BK4>, TILE>;  // [m][k4]
var<workgroup> w_tile: array<array<vec4<f32>, BK4>, TILE>;  // [n][k4]

@compute @workgroup_size(8, 8)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let M = step.rows;
    let K4 = p.K / 4u;
    let m_base = wg.y * TILE;
    let n_base = wg.x * TILE;
    var acc: array<vec4<f32>, 4>;  // acc[i][j]: row 4*lid.y + i, column 4*lid.x + j
    for (var k0 = 0u; k0 < K4; k0 += BK4) {
        // 64 invocations stage 32 rows x 8 vec4 of each operand, 4 each; zeros past the edges.
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 64u;
            let r = e / BK4;
            let k = k0 + e % BK4;
            var av = vec4(0.0);
            if (m_base + r < M && k < K4) { av = a[(m_base + r) * K4 + k]; }
            a_tile[r][e % BK4] = av;
            var wv = vec4(0.0);
            if (n_base + r < p.N && k < K4) { wv = w4(n_base + r, k); }
            w_tile[r][e % BK4] = wv;
        }
        workgroupBarrier();
        for (var c = 0u; c < BK4; c++) {
            let w0 = w_tile[lid.x * 4u][c];
            let w1 = w_tile[lid.x * 4u + 1u][c];
            let w2 = w_tile[lid.x * 4u + 2u][c];
            let w3 = w_tile[lid.x * 4u + 3u][c];
            for (var i = 0u; i < 4u; i++) {
                let x = a_tile[lid.y * 4u + i][c];
                acc[i] += vec4(dot(x, w0), dot(x, w1), dot(x, w2), dot(x, w3));
            }
        }
        workgroupBarrier();
    }
    let n0 = n_base + lid.x * 4u;
    let b = bias4(n0);
    for (var i = 0u; i < 4u; i++) {
        let m = m_base + lid.y * 4u + i;
        if (m < M && n0 < p.N) { store4(m, n0, acc[i], b); }
    }
}

// gemv: one workgroup per four adjacent outputs (a q8 row group) of one input row. Its 64
// lanes split K, lane l taking vec4 l, l + 64, ... of all four weight rows, so neighbouring
// lanes read neighbouring 16 bytes (coalesced on GPUs) and even a 768-wide layer keeps 192
// workgroups busy; the four partial sums are then reduced across the lanes: here in workgroup
// memory, in gemv_subgroup.wgsl with subgroup operations where the adapter has them.
const GEMV_LANES: u32 = 64u;
var<workgroup> partial: array<vec4<f32>, GEMV_LANES>;

// This lane's share of the dot products of input row m with weight rows n0 .. n0 + 3 (rows past
// N repeat the last one; their results are never stored).
fn gemv_partial(m: u32, n0: u32, lane: u32) -> vec4<f32> {
    let K4 = p.K / 4u;
    let ar = m * K4;
    let n1 = min(n0 + 1u, p.N - 1u);
    let n2 = min(n0 + 2u, p.N - 1u);
    let n3 = min(n0 + 3u, p.N - 1u);
    let one = vec4(1.0);
    var c = vec4(0.0);
    if (WEIGHT_FORMAT == FORMAT_Q8) {
        // Per block of 32: the int8 dot products, then the four rows' scales (one vec4: n0
        // starts a row group).
        let rw = row_words();
        for (var b = lane; b < K4 / 8u; b += GEMV_LANES) {
            var d0 = vec4(0.0);
            var d1 = vec4(0.0);
            var d2 = vec4(0.0);
            var d3 = vec4(0.0);
            for (var k = 8u * b; k < 8u * b + 8u; k++) {
                let x = a[ar + k];
                d0 += x * i8x4(w[n0 * rw + k]);
                d1 += x * i8x4(w[n1 * rw + k]);
                d2 += x * i8x4(w[n2 * rw + k]);
                d3 += x * i8x4(w[n3 * rw + k]);
            }
            let s = q8_scale_word(n0, b, p.K);
            let scales = vec4(
                bitcast<f32>(w[s]),
                bitcast<f32>(w[s + 1u]),
                bitcast<f32>(w[s + 2u]),
                bitcast<f32>(w[s + 3u]),
            );
            c += vec4(dot(d0, one), dot(d1, one), dot(d2, one), dot(d3, one)) * scales;
        }
    } else if (is_nibbles()) {
        // Per block of 32 (four nibble words a row): the unscaled values' dot products with
        // each half of the block's inputs and the inputs' sum, then qn_combine scales them with
        // the four rows' f32 pairs (sum_k x (v s + m) = s (x . v) + m sum(x) for q4 and q5).
        let rw = row_words();
        for (var b = lane; b < K4 / 8u; b += GEMV_LANES) {
            let h0 = high_words(n0 * rw, b);
            let h1 = high_words(n1 * rw, b);
            let h2 = high_words(n2 * rw, b);
            let h3 = high_words(n3 * rw, b);
            var lo = vec4(0.0);
            var hi = vec4(0.0);
            var sx = vec4(0.0);
            for (var j = 0u; j < 4u; j++) {
                let xl = a[ar + 8u * b + 2u * j];
                let xh = a[ar + 8u * b + 2u * j + 1u];
                sx += xl + xh;
                let w0 = w[n0 * rw + 4u * b + j];
                let w1 = w[n1 * rw + 4u * b + j];
                let w2 = w[n2 * rw + 4u * b + j];
                let w3 = w[n3 * rw + 4u * b + j];
                let d = vec4(
                    dot(xl, qn_lo(w0, h0, j)) + dot(xh, qn_hi(w0, h0, j)),
                    dot(xl, qn_lo(w1, h1, j)) + dot(xh, qn_hi(w1, h1, j)),
                    dot(xl, qn_lo(w2, h2, j)) + dot(xh, qn_hi(w2, h2, j)),
                    dot(xl, qn_lo(w3, h3, j)) + dot(xh, qn_hi(w3, h3, j)),
                );
                if (j < 2u) { lo += d; } else { hi += d; }
            }
            let s = qn_scale_word(n0, b, p.K);
            let t = s + qn_second();
            let sm = qn_pairs(vec4(w[s], w[s + 1u], w[s + 2u], w[s + 3u]), vec4(w[t], w[t + 1u], w[t + 2u], w[t + 3u]));
            c += qn_combine(lo, hi, dot(sx, one), sm);
        }
    } else {
        for (var k = lane; k < K4; k += GEMV_LANES) {
            let x = a[ar + k];
            c += vec4(dot(x, w4(n0, k)), dot(x, w4(n1, k)), dot(x, w4(n2, k)), dot(x, w4(n3, k)));
        }
    }
    return c;
}

// Stores the four sums (those inside N).
fn gemv_store(m: u32, n0: u32, s: vec4<f32>) {
    store4(m, n0, s, bias4(n0));
}

@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let n0 = wg.x * 4u;
    let m = wg.y;
    // Whole workgroups leave together: the barriers below stay in uniform control flow.
    if (n0 >= p.N || m >= step.rows) { return; }
    partial[lane] = gemv_partial(m, n0, lane);
    workgroupBarrier();
    for (var s = GEMV_LANES / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) { partial[lane] += partial[lane + s]; }
        workgroupBarrier();
    }
    if (lane == 0u) { gemv_store(m, n0, partial[0]); }
}
