// matmul_texture and gemv_texture with inputs shared across a subgroup (linear.wgsl and
// matmul_texture.wgsl are prepended; built only on adapters with the SUBGROUP feature and
// subgroups of at least 8 lanes).
// Each invocation computes a 4 x 4 block of outputs as matmul_texture does; the 8 lanes of a
// workgroup share its 4 rows. Per block of 32 K, lane l fetches input texel l of each row and
// the lanes take turns broadcasting theirs, so each input texel is fetched once per workgroup
// instead of once per lane. On lavapipe a texel fetch is a gather costing ~50 cycles and a
// broadcast an extract and a splat: measured ~1.4x faster than matmul_texture at GPT-2's
// prefill shapes (wgpt bench --kernels lists both). K % 32 == 0 (the texture layout has
// K % 64 == 0).

// f32 and f16: weights of row n for K texels 2 s and 2 s + 1 of block kb (32 K), as two vec4
// (f32: two texels; f16: one).
fn pair_weights(kb: u32, s: u32, n: u32) -> mat2x4<f32> {
    var r: mat2x4<f32>;
    if (WEIGHT_FORMAT == FORMAT_F16) {
        r = w8(4u * kb + s, n);
    } else {
        r = mat2x4(w4(8u * kb + 2u * s, n), w4(8u * kb + 2u * s + 1u, n));
    }
    return r;
}

// One pair of K texels: e and o are the four rows' inputs at the first and second texel.
fn pair(
    kb: u32,
    s: u32,
    n: vec4<u32>,
    e: array<vec4<f32>, 4>,
    o: array<vec4<f32>, 4>,
    r: ptr<function, array<vec4<f32>, 4>>,
) {
    let w0 = pair_weights(kb, s, n.x);
    let w1 = pair_weights(kb, s, n.y);
    let w2 = pair_weights(kb, s, n.z);
    let w3 = pair_weights(kb, s, n.w);
    (*r)[0] += dot4(e[0], w0[0], w1[0], w2[0], w3[0]) + dot4(o[0], w0[1], w1[1], w2[1], w3[1]);
    (*r)[1] += dot4(e[1], w0[0], w1[0], w2[0], w3[0]) + dot4(o[1], w0[1], w1[1], w2[1], w3[1]);
    (*r)[2] += dot4(e[2], w0[0], w1[0], w2[0], w3[0]) + dot4(o[2], w0[1], w1[1], w2[1], w3[1]);
    (*r)[3] += dot4(e[3], w0[0], w1[0], w2[0], w3[0]) + dot4(o[3], w0[1], w1[1], w2[1], w3[1]);
}

// q8, half block h (K texels 4 h .. 4 h + 4 of block kb): one int8 texel per column serves all
// four K texels, where `pair` would fetch it twice. x0 .. x3 are the rows' inputs there.
fn quad_q8(
    kb: u32,
    h: u32,
    n: vec4<u32>,
    sc: vec4<f32>,
    x0: array<vec4<f32>, 4>,
    x1: array<vec4<f32>, 4>,
    x2: array<vec4<f32>, 4>,
    x3: array<vec4<f32>, 4>,
    r: ptr<function, array<vec4<f32>, 4>>,
) {
    let t0 = wtexel(2u * kb + h, n.x);
    let t1 = wtexel(2u * kb + h, n.y);
    let t2 = wtexel(2u * kb + h, n.z);
    let t3 = wtexel(2u * kb + h, n.w);
    q8_step(x0, vec4(t0.x, t1.x, t2.x, t3.x), sc, r);
    q8_step(x1, vec4(t0.y, t1.y, t2.y, t3.y), sc, r);
    q8_step(x2, vec4(t0.z, t1.z, t2.z, t3.z), sc, r);
    q8_step(x3, vec4(t0.w, t1.w, t2.w, t3.w), sc, r);
}

// One K texel of q8: words[j] holds column j's four int8 there, sc[j] its block scale.
fn q8_step(x: array<vec4<f32>, 4>, words: vec4<u32>, sc: vec4<f32>, r: ptr<function, array<vec4<f32>, 4>>) {
    let w0 = i8x4(words.x) * sc.x;
    let w1 = i8x4(words.y) * sc.y;
    let w2 = i8x4(words.z) * sc.z;
    let w3 = i8x4(words.w) * sc.w;
    (*r)[0] += dot4(x[0], w0, w1, w2, w3);
    (*r)[1] += dot4(x[1], w0, w1, w2, w3);
    (*r)[2] += dot4(x[2], w0, w1, w2, w3);
    (*r)[3] += dot4(x[3], w0, w1, w2, w3);
}

// Nibble formats, word j of block kb: xl and xh are the rows' inputs at K texels 2 j and
// 2 j + 1 of the block, words[c] column c's word j, h its high words, sm the columns' two f32.
fn qn_step(
    xl: array<vec4<f32>, 4>,
    xh: array<vec4<f32>, 4>,
    words: vec4<u32>,
    h: array<vec2<u32>, 4>,
    j: u32,
    sm: mat2x4<f32>,
    r: ptr<function, array<vec4<f32>, 4>>,
) {
    let s0 = qn_sm(sm[0].x, sm[1].x, j);
    let s1 = qn_sm(sm[0].y, sm[1].y, j);
    let s2 = qn_sm(sm[0].z, sm[1].z, j);
    let s3 = qn_sm(sm[0].w, sm[1].w, j);
    let l0 = qn_lo(words.x, h[0], j) * s0.x + s0.y;
    let l1 = qn_lo(words.y, h[1], j) * s1.x + s1.y;
    let l2 = qn_lo(words.z, h[2], j) * s2.x + s2.y;
    let l3 = qn_lo(words.w, h[3], j) * s3.x + s3.y;
    let h0 = qn_hi(words.x, h[0], j) * s0.x + s0.y;
    let h1 = qn_hi(words.y, h[1], j) * s1.x + s1.y;
    let h2 = qn_hi(words.z, h[2], j) * s2.x + s2.y;
    let h3 = qn_hi(words.w, h[3], j) * s3.x + s3.y;
    (*r)[0] += dot4(xl[0], l0, l1, l2, l3) + dot4(xh[0], h0, h1, h2, h3);
    (*r)[1] += dot4(xl[1], l0, l1, l2, l3) + dot4(xh[1], h0, h1, h2, h3);
    (*r)[2] += dot4(xl[2], l0, l1, l2, l3) + dot4(xh[2], h0, h1, h2, h3);
    (*r)[3] += dot4(xl[3], l0, l1, l2, l3) + dot4(xh[3], h0, h1, h2, h3);
}

@compute @workgroup_size(8)
fn matmul_texture_subgroup(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    // No early return: every lane takes part in the broadcasts. Rows and columns past the edge
    // read whatever the texture gives there and are not stored.
    let n0 = gid.x * 4u;
    let m0 = gid.y * 4u;
    let M = step.rows;
    let n = vec4(n0) + vec4(0u, 1u, 2u, 3u);
    let m = vec4(m0) + vec4(0u, 1u, 2u, 3u);
    let lane = sg_lane % 8u;
    var r = array<vec4<f32>, 4>();
    for (var kb = 0u; kb < p.K / 32u; kb++) {
        let a0 = textureLoad(a, vec2(8u * kb + lane, m.x));
        let a1 = textureLoad(a, vec2(8u * kb + lane, m.y));
        let a2 = textureLoad(a, vec2(8u * kb + lane, m.z));
        let a3 = textureLoad(a, vec2(8u * kb + lane, m.w));
        // xl: the four rows' inputs at K texel l of the block, broadcast from lane l.
        let x0 = array(subgroupBroadcast(a0, 0u), subgroupBroadcast(a1, 0u), subgroupBroadcast(a2, 0u), subgroupBroadcast(a3, 0u));
        let x1 = array(subgroupBroadcast(a0, 1u), subgroupBroadcast(a1, 1u), subgroupBroadcast(a2, 1u), subgroupBroadcast(a3, 1u));
        let x2 = array(subgroupBroadcast(a0, 2u), subgroupBroadcast(a1, 2u), subgroupBroadcast(a2, 2u), subgroupBroadcast(a3, 2u));
        let x3 = array(subgroupBroadcast(a0, 3u), subgroupBroadcast(a1, 3u), subgroupBroadcast(a2, 3u), subgroupBroadcast(a3, 3u));
        let x4 = array(subgroupBroadcast(a0, 4u), subgroupBroadcast(a1, 4u), subgroupBroadcast(a2, 4u), subgroupBroadcast(a3, 4u));
        let x5 = array(subgroupBroadcast(a0, 5u), subgroupBroadcast(a1, 5u), subgroupBroadcast(a2, 5u), subgroupBroadcast(a3, 5u));
        let x6 = array(subgroupBroadcast(a0, 6u), subgroupBroadcast(a1, 6u), subgroupBroadcast(a2, 6u), subgroupBroadcast(a3, 6u));
        let x7 = array(subgroupBroadcast(a0, 7u), subgroupBroadcast(a1, 7u), subgroupBroadcast(a2, 7u), subgroupBroadcast(a3, 7u));
        if (WEIGHT_FORMAT == FORMAT_Q8) {
            // The four columns' scales of this block (n0 starts a group of four stored rows).
            let sc = block_scales(kb, n0);
            quad_q8(kb, 0u, n, sc, x0, x1, x2, x3, &r);
            quad_q8(kb, 1u, n, sc, x4, x5, x6, x7, &r);
        } else if (is_nibbles()) {
            // One texel per column holds the block's nibbles.
            let sm = qn_block_scales(kb, n0);
            let t0 = wtexel(kb, n.x);
            let t1 = wtexel(kb, n.y);
            let t2 = wtexel(kb, n.z);
            let t3 = wtexel(kb, n.w);
            let h = array(qn_high_texel(kb, n.x), qn_high_texel(kb, n.y), qn_high_texel(kb, n.z), qn_high_texel(kb, n.w));
            qn_step(x0, x1, vec4(t0.x, t1.x, t2.x, t3.x), h, 0u, sm, &r);
            qn_step(x2, x3, vec4(t0.y, t1.y, t2.y, t3.y), h, 1u, sm, &r);
            qn_step(x4, x5, vec4(t0.z, t1.z, t2.z, t3.z), h, 2u, sm, &r);
            qn_step(x6, x7, vec4(t0.w, t1.w, t2.w, t3.w), h, 3u, sm, &r);
        } else {
            pair(kb, 0u, n, x0, x1, &r);
            pair(kb, 1u, n, x2, x3, &r);
            pair(kb, 2u, n, x4, x5, &r);
            pair(kb, 3u, n, x6, x7, &r);
        }
    }
    let b = bias4(n0);
    for (var i = 0u; i < 4u; i++) {
        if (m0 + i < M) { store4(m0 + i, n0, r[i], b); }
    }
}

// gemv_texture with the input shared across the subgroup. gemv_texture's lanes each load every
// input vec4 from the uniform buffer, and on lavapipe a uniform load whose index varies with the
// loop is a gather per component (only constant indices become one scalar load). Here, per block
// of 32 K, lane l loads vec4 l of the block and the lanes broadcast theirs in turn: one gather
// per block instead of eight. (Arrays are indexed by constants only: a variable index makes a
// CPU adapter spill the array to memory.)

// Block kb of f16 weight row n dotted with the block's inputs xs: four partial sums.
fn gemv_block(kb: u32, n: u32, xs: array<vec4<f32>, 8>) -> vec4<f32> {
    let w0 = w8(4u * kb, n);
    let w1 = w8(4u * kb + 1u, n);
    let w2 = w8(4u * kb + 2u, n);
    let w3 = w8(4u * kb + 3u, n);
    return xs[0] * w0[0] + xs[1] * w0[1] + xs[2] * w1[0] + xs[3] * w1[1]
        + xs[4] * w2[0] + xs[5] * w2[1] + xs[6] * w3[0] + xs[7] * w3[1];
}

// Block kb of q8 weight row n dotted with the block's inputs xs, before its scale.
fn gemv_block_q8(kb: u32, n: u32, xs: array<vec4<f32>, 8>) -> f32 {
    let t0 = wtexel(2u * kb, n);
    let t1 = wtexel(2u * kb + 1u, n);
    return dot(xs[0], i8x4(t0.x)) + dot(xs[1], i8x4(t0.y)) + dot(xs[2], i8x4(t0.z))
        + dot(xs[3], i8x4(t0.w)) + dot(xs[4], i8x4(t1.x)) + dot(xs[5], i8x4(t1.y))
        + dot(xs[6], i8x4(t1.z)) + dot(xs[7], i8x4(t1.w));
}

// With NORM the input is the residual stream x and the layer norm before this layer is fused
// in: its gain and bias were folded into the weights and bias at load (W' = W diag(gain),
// b' = b + W bias: loader.rs's LnFold), so out = W' (x - mean) / std + b'
// = rstd (W' x - mean rowsum(W')) + b', with rowsum(W') computed at load by this kernel itself
// (on a row of ones) and the row's mean and variance summed by the lanes from the input vec4s
// they load anyway. Decode then needs no layernorm dispatch before the qkv and MLP
// projections. f32 sums of K terms; var = E[x^2] - mean^2 in f32 loses ~log2(1 + mean^2 / var)
// bits, negligible for a residual stream whose mean is small next to its spread.
override NORM: bool = false;
// With NORM, the fused norm is an RMSNorm (Llama's): out = W (gain x) / rms(x) + b, no mean;
// the gain scales the input as the lanes load it (binding 9 holds it), so packed weights (a
// GGUF file's) need no folding. f16, q8 and q4 only: the f32 path reads x unscaled.
override RMS: bool = false;

@group(0) @binding(9) var<storage, read> rowsum: array<f32>;  // NORM: (col0 + N) row sums; RMS: (K) gain

// The RMSNorm gain of input vec4 t.
fn gain4(t: u32) -> vec4<f32> {
    return vec4(rowsum[4u * t], rowsum[4u * t + 1u], rowsum[4u * t + 2u], rowsum[4u * t + 3u]);
}

// rstd (sums - mean rowsum) for outputs n0 .. n0 + 4, from the lanes' partial sum s1 and sum of
// squares s2 of the row (every lane must call it: subgroup sums).
fn norm4(n0: u32, sums: vec4<f32>, s1: f32, s2: f32) -> vec4<f32> {
    let k = f32(p.K);
    if (RMS) { return inverseSqrt(subgroupAdd(s2) / k + p.ln_eps) * sums; }
    let mean = subgroupAdd(s1) / k;
    let var_ = max(subgroupAdd(s2) / k - mean * mean, 0.0);
    let rstd = inverseSqrt(var_ + p.ln_eps);
    var rs = vec4(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (n0 + j < p.N) { rs[j] = rowsum[p.col0 + n0 + j]; }
    }
    return rstd * (sums - mean * rs);
}

// The four outputs n0 .. n0 + 4 of row m before the bias, the lanes sharing the input as
// described above (f16, q8). Every lane of the workgroup must call it (the broadcasts).
fn gemv_sums(n0: u32, m: u32, lane: u32) -> vec4<f32> {
    // Columns past N repeat the last one; their results are not stored.
    let n = min(vec4(n0) + vec4(0u, 1u, 2u, 3u), vec4(p.N - 1u));
    let row = m * (p.K / 4u);
    let one = vec4(1.0);
    // This lane's share of the row's sum and sum of squares (NORM).
    var s1 = 0.0;
    var s2 = 0.0;
    // f32 weights take gemv_texture's loop, each lane loading the input itself: sharing the
    // input made f32 decode on lavapipe 15-20% slower (p50 per token, alternated runs at GPT-2's
    // shape; likely register spills: eight fetched texels per column next to the broadcast
    // inputs), where q8 gained 20% and f16 a little.
    if (WEIGHT_FORMAT == FORMAT_F32) {
        if (NORM) {
            for (var kb = 0u; kb < p.K / 32u; kb++) {
                let xl = x[row + 8u * kb + lane];
                s1 += dot(xl, one);
                s2 += dot(xl, xl);
            }
            return norm4(n0, gemv_f32(row, n), s1, s2);
        }
        return gemv_f32(row, n);
    }
    // f16: per column a vec4 of partial sums; q8 and nibble formats: the four columns' sums.
    var r0 = vec4(0.0);
    var r1 = vec4(0.0);
    var r2 = vec4(0.0);
    var r3 = vec4(0.0);
    for (var kb = 0u; kb < p.K / 32u; kb++) {
        var xl = x[row + 8u * kb + lane];
        if (NORM) {
            s1 += dot(xl, one);
            s2 += dot(xl, xl);
        }
        if (NORM && RMS) { xl *= gain4(8u * kb + lane); }
        let xs = lanes8(xl);
        if (WEIGHT_FORMAT == FORMAT_Q8) {
            let d = vec4(
                gemv_block_q8(kb, n.x, xs),
                gemv_block_q8(kb, n.y, xs),
                gemv_block_q8(kb, n.z, xs),
                gemv_block_q8(kb, n.w, xs),
            );
            r0 += d * block_scales(kb, n0);
        } else if (is_nibbles()) {
            r0 += qn_block4(kb, n, n0, xs);
        } else {
            r0 += gemv_block(kb, n.x, xs);
            r1 += gemv_block(kb, n.y, xs);
            r2 += gemv_block(kb, n.z, xs);
            r3 += gemv_block(kb, n.w, xs);
        }
    }
    var sums = r0;
    if (WEIGHT_FORMAT != FORMAT_Q8 && !is_nibbles()) { sums = vec4(dot(r0, one), dot(r1, one), dot(r2, one), dot(r3, one)); }
    if (NORM) { return norm4(n0, sums, s1, s2); }
    return sums;
}

@compute @workgroup_size(8)
fn gemv_texture_subgroup(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    // No early return: every lane takes part in the broadcasts.
    let n0 = gid.x * 4u;
    let sums = gemv_sums(n0, gid.y, sg_lane % 8u);
    if (n0 < p.N) { store4(gid.y, n0, sums, bias4(n0)); }
}

// gemv_texture_kv's KV cache, (slots * n_ctx rows, NKV HS / 4 texels), as attention_texture
// reads it.
@group(0) @binding(7) var k_cache: texture_storage_2d<rgba32float, write>;
@group(0) @binding(8) var v_cache: texture_storage_2d<rgba32float, write>;

// gemv_texture_subgroup for the attention's qkv projection (N = kv_c + 2 kv_w over all weight
// chunks, both multiples of 4, chunks starting at multiples of 4): outputs kv_c .. kv_c + kv_w
// (the key) and the kv_w after them (the value) also go into the KV cache at the row's position,
// where kv_append_texture would copy them: on lavapipe a dispatch costs ~0.1 ms, and decode ran
// 12 of them per token for that copy.
@compute @workgroup_size(8)
fn gemv_texture_kv(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let n0 = gid.x * 4u;
    let m = gid.y;
    let sums = gemv_sums(n0, m, sg_lane % 8u);
    if (n0 >= p.N) { return; }
    let b = bias4(n0);
    store4(m, n0, sums, b);
    // Four outputs are one cache texel: a multiple of 4 past kv_c, all in the key or the value.
    let col = p.col0 + n0;
    if (col >= p.kv_c) {
        let j = col - p.kv_c;
        let at = vec2((j % p.kv_w) / 4u, slot_base(m) + position(m));
        if (j < p.kv_w) {
            textureStore(k_cache, at, sums + b);
        } else {
            textureStore(v_cache, at, sums + b);
        }
    }
}

// gemv_texture_argmax's candidates: per workgroup (32 outputs) its largest output's bits and
// index, the first of equals ((col0 + N) / 32 entries over all weight chunks, col0 % 32 == 0).
@group(0) @binding(10) var<storage, read_write> partials: array<vec2<u32>>;

// gemv_texture_subgroup for a step's head (plain store epilogue): each workgroup also leaves its
// largest logit and that logit's index in `partials`, so that greedy decoding's argmax
// (argmax.wgsl's argmax_partials) reads V / 32 candidates instead of V logits, in one 8-lane
// workgroup: the 256-lane argmax over V took ~0.7 ms per GPT-2 token on lavapipe, most of it its
// barriers. Ties go to the lowest index and NaN never wins, as in argmax. One row.
@compute @workgroup_size(8)
fn gemv_texture_argmax(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let n0 = gid.x * 4u;
    let b = bias4(n0);
    let v = gemv_sums(n0, gid.y, sg_lane % 8u) + b;
    if (n0 < p.N) { store4(gid.y, n0, v, vec4(0.0)); }
    // This lane's largest output (v past N is not stored and not a candidate).
    var best = -3.4e38;
    var at = 0xffffffffu;
    if (n0 < p.N && v.x > best) { best = v.x; at = n0; }
    if (n0 + 1u < p.N && v.y > best) { best = v.y; at = n0 + 1u; }
    if (n0 + 2u < p.N && v.z > best) { best = v.z; at = n0 + 2u; }
    if (n0 + 3u < p.N && v.w > best) { best = v.w; at = n0 + 3u; }
    let top = subgroupMax(best);
    let first = subgroupMin(select(0xffffffffu, at, best == top));
    if (sg_lane % 8u == 0u) {
        partials[p.col0 / 32u + wg.x] = vec2(bitcast<u32>(top), select(p.col0 + first, first, first == 0xffffffffu));
    }
}

// gemv_texture_attention: decode's qkv projection and the causal attention after it, in one
// dispatch of one 8-lane workgroup per query head (on lavapipe each dispatch costs ~0.1 ms of
// hand-off between its threads; this saves two per layer). The workgroup computes its head's
// query and its key head's key and value (3 HS outputs of the projection, 32 per pass: lane l
// holds texels l, l + 8, ... of each, HS % 32 == 0; the NH / NKV query heads of a key head each
// compute that key and value, the first of them stores them), with ROPE rotates the query and
// key (HS % 64 == 0: dims i and i + HS / 2 are in one lane's texels i / 4 and i / 4 + HS / 8),
// and stores them in qkv; then it attends over the cached keys 0 .. pos and this step's own key
// with an online softmax, cached keys in blocks of 8: lane l scores key j0 + l with the whole
// query (broadcast to every lane once), so a block's softmax is one vector exp and two subgroup
// reductions; then each lane adds the block's values, weighted by the broadcast probabilities,
// to its texels of the accumulator. The cache textures are read-only here (one dispatch cannot
// read and write a texture): gemv_texture_append, the attention's output projection, appends
// this step's key and value from qkv afterwards. One row (not batched), weights in one texture
// chunk (N = kv_c + 2 kv_w).
@group(0) @binding(11) var k_past: texture_storage_2d<rgba32float, read>;  // (slots * n_ctx, NKV HS / 4)
@group(0) @binding(12) var v_past: texture_storage_2d<rgba32float, read>;  // (slots * n_ctx, NKV HS / 4)
@group(0) @binding(13) var<storage, read_write> att_y: array<vec4<f32>>;  // (1, NH HS)
@group(0) @binding(15) var<uniform> inv_freq: array<vec4<f32>, 32>;      // (HS / 2) with ROPE

// The head size, fixed per model (a constant bound unrolls the per-lane loops, keeping the
// arrays' indices constant); HS / 32 texels per lane, at most MAX_HT.
override HS: u32 = 64u;
const MAX_HT: u32 = 8u;

// Rotates pairs (a[i], a[i + HS / 64]) of a lane's texels, dims d .. d + 4 and their partners
// HS / 2 on (d = 32 i + 4 lane), for position `pos`: rotary.wgsl's rotation.
fn rotate_lane(a: ptr<function, array<vec4<f32>, MAX_HT>>, lane: u32, pos: u32) {
    let half = HS / 64u;
    for (var i = 0u; i < half; i++) {
        let cs = cos_sin4(32u * i + 4u * lane, pos);
        let x = (*a)[i];
        let y = (*a)[i + half];
        (*a)[i] = x * cs[0] - y * cs[1];
        (*a)[i + half] = y * cs[0] + x * cs[1];
    }
}

@compute @workgroup_size(8)
fn gemv_texture_attention(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let h = wg.x;
    let lane = sg_lane % 8u;
    let ht = HS / 32u;
    let scale = inverseSqrt(f32(HS));
    // The key head of query head h, and whether h is the first of its NH / NKV query heads.
    let group = p.kv_c / p.kv_w;
    let g = h / group;
    let first = h % group == 0u;
    // This lane's texels of the head's query, key and value, and where they go in qkv.
    var q: array<vec4<f32>, MAX_HT>;
    var k: array<vec4<f32>, MAX_HT>;
    var v: array<vec4<f32>, MAX_HT>;
    for (var i = 0u; i < ht; i++) {
        let o = 32u * i + 4u * lane;
        let nq = h * HS + o;
        let nk = p.kv_c + g * HS + o;
        let nv = nk + p.kv_w;
        q[i] = gemv_sums(nq, 0u, lane) + bias4(nq);
        k[i] = gemv_sums(nk, 0u, lane) + bias4(nk);
        v[i] = gemv_sums(nv, 0u, lane) + bias4(nv);
    }
    if (ROPE) {
        rotate_lane(&q, lane, position(0u));
        rotate_lane(&k, lane, position(0u));
    }
    for (var i = 0u; i < ht; i++) {
        let o = 32u * i + 4u * lane;
        store4(0u, h * HS + o, q[i], vec4(0.0));
        if (first) {
            store4(0u, p.kv_c + g * HS + o, k[i], vec4(0.0));
            store4(0u, p.kv_c + p.kv_w + g * HS + o, v[i], vec4(0.0));
        }
        q[i] *= scale;
    }
    // The whole query in every lane: texel 8 i + l of the head from lane l.
    var qf: array<vec4<f32>, 64>;
    for (var i = 0u; i < ht; i++) {
        let b = lanes8(q[i]);
        for (var src = 0u; src < 8u; src++) { qf[8u * i + src] = b[src]; }
    }
    // The online softmax starts from this step's own key.
    var s0 = 0.0;
    for (var i = 0u; i < ht; i++) { s0 += dot(q[i], k[i]); }
    var m = subgroupAdd(s0);
    var l = 1.0;
    var acc = v;
    let xh = g * (HS / 4u);  // the key head's first texel in a cache row
    let x0 = xh + lane;      // this lane's
    let base = slot_base(0u);
    let n = position(0u);    // cached keys
    for (var j0 = 0u; j0 < n; j0 += 8u) {
        // Lanes past the last key score a repeat of it as NEG: probability 0.
        let row = base + min(j0 + lane, n - 1u);
        var s = 0.0;
        for (var d = 0u; d < HS / 4u; d++) { s += dot(qf[d], textureLoad(k_past, vec2(xh + d, row))); }
        s = select(NEG, s, j0 + lane < n);
        let mc = online_max(m, subgroupMax(s));
        let m_new = mc.x;
        let corr = mc.y;
        let pj = exp(s - m_new);
        l = l * corr + subgroupAdd(pj);
        let pb = lanes8_f32(pj);
        for (var i = 0u; i < ht; i++) {
            var a = acc[i] * corr;
            for (var jj = 0u; jj < 8u; jj++) {
                let r = base + min(j0 + jj, n - 1u);
                a += pb[jj] * textureLoad(v_past, vec2(x0 + 8u * i, r));
            }
            acc[i] = a;
        }
        m = m_new;
    }
    let y0 = h * (HS / 4u) + lane;  // this lane's first texel of the head's output
    for (var i = 0u; i < ht; i++) { att_y[y0 + 8u * i] = acc[i] / l; }
}

// gemv_texture_subgroup for the attention's output projection after gemv_texture_attention
// (residual epilogue): invocation i < kv_w / 4 also copies texel i of this step's key and value
// from qkv into the KV cache at the row's position. One row; N >= kv_w in one weight chunk.
@group(0) @binding(14) var<storage, read> qkv_row: array<vec4<f32>>;  // (1, kv_c + 2 kv_w)

@compute @workgroup_size(8)
fn gemv_texture_append(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let n0 = gid.x * 4u;
    let sums = gemv_sums(n0, 0u, sg_lane % 8u);
    if (n0 < p.N) { store4(0u, n0, sums, bias4(n0)); }
    let k4 = p.kv_c / 4u + gid.x;
    if (gid.x < p.kv_w / 4u) {
        let at = vec2(gid.x, slot_base(0u) + position(0u));
        textureStore(k_cache, at, qkv_row[k4]);
        textureStore(v_cache, at, qkv_row[k4 + p.kv_w / 4u]);
    }
}
