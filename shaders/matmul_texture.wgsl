// Linear layers with operands in read-only storage textures (linear.wgsl is prepended): a row of
// the input texture is a row of the input, a column of the weight texture a row of the weight
// (transposed, so that lanes computing neighbouring outputs fetch neighbouring texels). An input
// texel holds four consecutive values along K, a weight texel (raw bits in rgba32uint) four
// f32, eight f16, sixteen q8 int8 or a nibble format's block of 32, per the pipeline's
// WEIGHT_FORMAT (format.wgsl; the q8 and nibble layouts are format_q8.wgsl's and
// format_nibbles.wgsl's: the four rows an invocation computes, n0 = 4 gid.x starting
// a group, take one scale fetch per block of 32 weights, two int8 texels or one nibble texel each).
// On CPU adapters (lavapipe) a storage-buffer load costs a bounds-checked scalar load per lane
// and component, while a texel load is one vectorised fetch: measured on lavapipe at GPT-2's
// shapes, these kernels are ~10x (GEMV) to ~15x (GEMM) faster than the buffer ones. The
// activations are copied into a texture before each layer (K % 64 == 0 keeps those copies'
// rows 256-byte aligned).
//   matmul_texture: each invocation a 4 x 4 block of outputs, no workgroup memory.
//   gemv_texture:   each invocation four outputs of one row; the input comes from a uniform
//                   buffer bound straight onto the activation buffer, so decode needs no copy.

@group(0) @binding(2) var a: texture_storage_2d<rgba32float, read>;  // (M rows, K / 4 texels)
@group(0) @binding(3) var w: texture_storage_2d<rgba32uint, read>;   // (K / 4, K / 8 or ~K / 14 texels, N)

// gemv_texture's input, (rows, K) as K / 4 vec4 per row (rows * K <= 16384, checked by the
// host). Bound straight onto the activation buffer, so decode copies nothing into a texture;
// llvmpipe gathers uniform loads without the per-lane loop of a storage load: measured at
// GPT-2's shapes, decode 10.4 -> 15.6 tok/s over copying the row into a texture.
@group(0) @binding(6) var<uniform> x: array<vec4<f32>, 4096>;

// Texel k of weight row n: the weight textures are transposed (gpu/mod.rs `weight_texture`),
// row n is texture column n.
fn wtexel(k: u32, n: u32) -> vec4<u32> {
    return textureLoad(w, vec2(n, k));
}

// Four f32 weights of row n, texel k4.
fn w4(k4: u32, n: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(wtexel(k4, n));
}

// Eight f16 weights of row n, texel k8, as two vec4 (columns 0 and 1).
fn w8(k8: u32, n: u32) -> mat2x4<f32> {
    return f16x8(wtexel(k8, n));
}

// The f32 scales of block b of q8 rows n0 .. n0 + 4 (n0 a multiple of 4).
fn block_scales(b: u32, n0: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(wtexel(q8_scale_texel(b, p.K), n0 + b % 4u));
}

// The two f32 (scales and minimums, or q6's half scales) of block b of nibble-format rows
// n0 .. n0 + 4 (n0 a multiple of 4).
fn qn_block_scales(b: u32, n0: u32) -> mat2x4<f32> {
    let t = qn_scale_texel(b, p.K);
    let r = n0 + b % 4u;
    return qn_pairs(wtexel(t, r), wtexel(t + qn_second() / 4u, r));
}

// The high words of block b of nibble-format row n.
fn qn_high_texel(b: u32, n: u32) -> vec2<u32> {
    if (qn_high_bits() == 1u) { return vec2(wtexel(p.K / 32u + b / 4u, n)[b % 4u], 0u); }
    if (WEIGHT_FORMAT == FORMAT_Q6) {
        let t = wtexel(p.K / 32u + b / 2u, n);
        return select(t.xy, t.zw, b % 2u == 1u);
    }
    return vec2(0u);
}

fn dot4(x: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) -> vec4<f32> {
    return vec4(dot(x, w0), dot(x, w1), dot(x, w2), dot(x, w3));
}

@compute @workgroup_size(8)
fn matmul_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n0 = gid.x * 4u;
    let m0 = gid.y * 4u;
    let M = step.rows;
    if (n0 >= p.N || m0 >= M) { return; }
    // Rows and columns past the edge repeat the last one; their results are not stored.
    let nl = p.N - 1u;
    let ml = M - 1u;
    let n1 = min(n0 + 1u, nl);
    let n2 = min(n0 + 2u, nl);
    let n3 = min(n0 + 3u, nl);
    let m1 = min(m0 + 1u, ml);
    let m2 = min(m0 + 2u, ml);
    let m3 = min(m0 + 3u, ml);
    var r0 = vec4(0.0);
    var r1 = vec4(0.0);
    var r2 = vec4(0.0);
    var r3 = vec4(0.0);
    if (WEIGHT_FORMAT == FORMAT_Q8) {
        // Per block of 32 (two weight texels, eight input texels): the columns' block scales,
        // then the int8s dequantised with them. Dequantising per weight costs one multiply per
        // four multiply-adds here and keeps fewer values live than scaling per-block sums.
        for (var b = 0u; b < p.K / 32u; b++) {
            let sc = block_scales(b, n0);
            for (var h = 0u; h < 2u; h++) {
                let t0 = wtexel(2u * b + h, n0);
                let t1 = wtexel(2u * b + h, n1);
                let t2 = wtexel(2u * b + h, n2);
                let t3 = wtexel(2u * b + h, n3);
                for (var q = 0u; q < 4u; q++) {
                    let ka = 8u * b + 4u * h + q;
                    let w0 = i8x4(t0[q]) * sc.x;
                    let w1 = i8x4(t1[q]) * sc.y;
                    let w2 = i8x4(t2[q]) * sc.z;
                    let w3 = i8x4(t3[q]) * sc.w;
                    r0 += dot4(textureLoad(a, vec2(ka, m0)), w0, w1, w2, w3);
                    r1 += dot4(textureLoad(a, vec2(ka, m1)), w0, w1, w2, w3);
                    r2 += dot4(textureLoad(a, vec2(ka, m2)), w0, w1, w2, w3);
                    r3 += dot4(textureLoad(a, vec2(ka, m3)), w0, w1, w2, w3);
                }
            }
        }
    } else if (is_nibbles()) {
        // Per block of 32 (one nibble texel, eight input texels): the columns' scales and
        // minimums (q6: half scales) and high bits, then each word's values dequantised.
        for (var b = 0u; b < p.K / 32u; b++) {
            let sm = qn_block_scales(b, n0);
            let t0 = wtexel(b, n0);
            let t1 = wtexel(b, n1);
            let t2 = wtexel(b, n2);
            let t3 = wtexel(b, n3);
            let h0 = qn_high_texel(b, n0);
            let h1 = qn_high_texel(b, n1);
            let h2 = qn_high_texel(b, n2);
            let h3 = qn_high_texel(b, n3);
            for (var q = 0u; q < 8u; q++) {
                let ka = 8u * b + q;
                let j = q / 2u;
                let s0 = qn_sm(sm[0].x, sm[1].x, j);
                let s1 = qn_sm(sm[0].y, sm[1].y, j);
                let s2 = qn_sm(sm[0].z, sm[1].z, j);
                let s3 = qn_sm(sm[0].w, sm[1].w, j);
                var v0 = qn_lo(t0[j], h0, j);
                var v1 = qn_lo(t1[j], h1, j);
                var v2 = qn_lo(t2[j], h2, j);
                var v3 = qn_lo(t3[j], h3, j);
                if (q % 2u == 1u) {
                    v0 = qn_hi(t0[j], h0, j);
                    v1 = qn_hi(t1[j], h1, j);
                    v2 = qn_hi(t2[j], h2, j);
                    v3 = qn_hi(t3[j], h3, j);
                }
                let w0 = v0 * s0.x + s0.y;
                let w1 = v1 * s1.x + s1.y;
                let w2 = v2 * s2.x + s2.y;
                let w3 = v3 * s3.x + s3.y;
                r0 += dot4(textureLoad(a, vec2(ka, m0)), w0, w1, w2, w3);
                r1 += dot4(textureLoad(a, vec2(ka, m1)), w0, w1, w2, w3);
                r2 += dot4(textureLoad(a, vec2(ka, m2)), w0, w1, w2, w3);
                r3 += dot4(textureLoad(a, vec2(ka, m3)), w0, w1, w2, w3);
            }
        }
    } else if (WEIGHT_FORMAT == FORMAT_F16) {
        // One weight texel covers two input texels.
        for (var k = 0u; k < p.K / 8u; k++) {
            let w0 = w8(k, n0);
            let w1 = w8(k, n1);
            let w2 = w8(k, n2);
            let w3 = w8(k, n3);
            for (var h = 0u; h < 2u; h++) {
                let ka = 2u * k + h;
                r0 += dot4(textureLoad(a, vec2(ka, m0)), w0[h], w1[h], w2[h], w3[h]);
                r1 += dot4(textureLoad(a, vec2(ka, m1)), w0[h], w1[h], w2[h], w3[h]);
                r2 += dot4(textureLoad(a, vec2(ka, m2)), w0[h], w1[h], w2[h], w3[h]);
                r3 += dot4(textureLoad(a, vec2(ka, m3)), w0[h], w1[h], w2[h], w3[h]);
            }
        }
    } else {
        for (var k = 0u; k < p.K / 4u; k++) {
            let w0 = w4(k, n0);
            let w1 = w4(k, n1);
            let w2 = w4(k, n2);
            let w3 = w4(k, n3);
            r0 += dot4(textureLoad(a, vec2(k, m0)), w0, w1, w2, w3);
            r1 += dot4(textureLoad(a, vec2(k, m1)), w0, w1, w2, w3);
            r2 += dot4(textureLoad(a, vec2(k, m2)), w0, w1, w2, w3);
            r3 += dot4(textureLoad(a, vec2(k, m3)), w0, w1, w2, w3);
        }
    }
    let r = array<vec4<f32>, 4>(r0, r1, r2, r3);
    let b = bias4(n0);
    for (var i = 0u; i < 4u; i++) {
        if (m0 + i < M) { store4(m0 + i, n0, r[i], b); }
    }
}

// gemv_texture with q8 weights: rows n0 .. n3 dotted with input row `row` (vec4 index). Per block
// of 32 (two texels of int8) the four rows' int8 dot products, then their block scales once.
// One output per row is accumulated (not a vec4 per row as for f32 and f16): fewer live values.
fn gemv_q8(row: u32, n0: u32, n1: u32, n2: u32, n3: u32) -> vec4<f32> {
    var acc = vec4(0.0);
    for (var b = 0u; b < p.K / 32u; b++) {
        var d = vec4(0.0);
        for (var h = 0u; h < 2u; h++) {
            let xi = row + 8u * b + 4u * h;
            let xa = x[xi];
            let xb = x[xi + 1u];
            let xc = x[xi + 2u];
            let xd = x[xi + 3u];
            let t0 = wtexel(2u * b + h, n0);
            d.x += dot(xa, i8x4(t0.x)) + dot(xb, i8x4(t0.y)) + dot(xc, i8x4(t0.z)) + dot(xd, i8x4(t0.w));
            let t1 = wtexel(2u * b + h, n1);
            d.y += dot(xa, i8x4(t1.x)) + dot(xb, i8x4(t1.y)) + dot(xc, i8x4(t1.z)) + dot(xd, i8x4(t1.w));
            let t2 = wtexel(2u * b + h, n2);
            d.z += dot(xa, i8x4(t2.x)) + dot(xb, i8x4(t2.y)) + dot(xc, i8x4(t2.z)) + dot(xd, i8x4(t2.w));
            let t3 = wtexel(2u * b + h, n3);
            d.w += dot(xa, i8x4(t3.x)) + dot(xb, i8x4(t3.y)) + dot(xc, i8x4(t3.z)) + dot(xd, i8x4(t3.w));
        }
        acc += d * block_scales(b, n0);
    }
    return acc;
}

// Block b of nibble-format weight row n dotted with inputs xs (the block's eight input
// texels), unscaled: the first half's (words 0-1) and the second's (2-3).
fn qn_block_dot(b: u32, n: u32, xs: array<vec4<f32>, 8>) -> vec2<f32> {
    let t = wtexel(b, n);
    let h = qn_high_texel(b, n);
    let lo = dot(xs[0], qn_lo(t.x, h, 0u)) + dot(xs[1], qn_hi(t.x, h, 0u))
        + dot(xs[2], qn_lo(t.y, h, 1u)) + dot(xs[3], qn_hi(t.y, h, 1u));
    let hi = dot(xs[4], qn_lo(t.z, h, 2u)) + dot(xs[5], qn_hi(t.z, h, 2u))
        + dot(xs[6], qn_lo(t.w, h, 3u)) + dot(xs[7], qn_hi(t.w, h, 3u));
    return vec2(lo, hi);
}

// The sum of a block's inputs, which each row's minimum multiplies.
fn sum8(xs: array<vec4<f32>, 8>) -> f32 {
    return dot(xs[0] + xs[1] + xs[2] + xs[3] + xs[4] + xs[5] + xs[6] + xs[7], vec4(1.0));
}

// Four columns' block kb results from inputs xs (nibble formats): their halves' dot products
// scaled by qn_combine.
fn qn_block4(kb: u32, n: vec4<u32>, n0: u32, xs: array<vec4<f32>, 8>) -> vec4<f32> {
    let d0 = qn_block_dot(kb, n.x, xs);
    let d1 = qn_block_dot(kb, n.y, xs);
    let d2 = qn_block_dot(kb, n.z, xs);
    let d3 = qn_block_dot(kb, n.w, xs);
    let lo = vec4(d0.x, d1.x, d2.x, d3.x);
    let hi = vec4(d0.y, d1.y, d2.y, d3.y);
    return qn_combine(lo, hi, sum8(xs), qn_block_scales(kb, n0));
}

// gemv_texture with nibble-format weights: per block of 32 the four rows' results (qn_block4).
fn gemv_qn(row: u32, n0: u32, n1: u32, n2: u32, n3: u32) -> vec4<f32> {
    var acc = vec4(0.0);
    for (var b = 0u; b < p.K / 32u; b++) {
        let i = row + 8u * b;
        let xs = array(x[i], x[i + 1u], x[i + 2u], x[i + 3u], x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]);
        acc += qn_block4(b, vec4(n0, n1, n2, n3), n0, xs);
    }
    return acc;
}

@compute @workgroup_size(8)
fn gemv_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n0 = gid.x * 4u;
    let m = gid.y;
    if (n0 >= p.N || m >= step.rows) { return; }
    let nl = p.N - 1u;
    let n1 = min(n0 + 1u, nl);
    let n2 = min(n0 + 2u, nl);
    let n3 = min(n0 + 3u, nl);
    let row = m * (p.K / 4u);
    if (WEIGHT_FORMAT == FORMAT_Q8) {
        store4(m, n0, gemv_q8(row, n0, n1, n2, n3), bias4(n0));
        return;
    }
    if (is_nibbles()) {
        store4(m, n0, gemv_qn(row, n0, n1, n2, n3), bias4(n0));
        return;
    }
    if (WEIGHT_FORMAT != FORMAT_F16) {
        store4(m, n0, gemv_f32(row, vec4(n0, n1, n2, n3)), bias4(n0));
        return;
    }
    var c0 = vec4(0.0);
    var c1 = vec4(0.0);
    var c2 = vec4(0.0);
    var c3 = vec4(0.0);
    for (var k = 0u; k < p.K / 8u; k++) {
        let x0 = x[row + 2u * k];
        let x1 = x[row + 2u * k + 1u];
        let w0 = w8(k, n0);
        let w1 = w8(k, n1);
        let w2 = w8(k, n2);
        let w3 = w8(k, n3);
        c0 += x0 * w0[0] + x1 * w0[1];
        c1 += x0 * w1[0] + x1 * w1[1];
        c2 += x0 * w2[0] + x1 * w2[1];
        c3 += x0 * w3[0] + x1 * w3[1];
    }
    let one = vec4(1.0);
    let s = vec4(dot(c0, one), dot(c1, one), dot(c2, one), dot(c3, one));
    store4(m, n0, s, bias4(n0));
}

// gemv_texture with f32 weights: columns n dotted with input row `row` (vec4 index).
fn gemv_f32(row: u32, n: vec4<u32>) -> vec4<f32> {
    var c0 = vec4(0.0);
    var c1 = vec4(0.0);
    var c2 = vec4(0.0);
    var c3 = vec4(0.0);
    for (var k = 0u; k < p.K / 4u; k++) {
        let xk = x[row + k];
        c0 += xk * w4(k, n.x);
        c1 += xk * w4(k, n.y);
        c2 += xk * w4(k, n.z);
        c3 += xk * w4(k, n.w);
    }
    let one = vec4(1.0);
    return vec4(dot(c0, one), dot(c1, one), dot(c2, one), dot(c3, one));
}
