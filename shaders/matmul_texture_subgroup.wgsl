// matmul_texture with inputs shared across a subgroup (linear.wgsl and matmul_texture.wgsl are
// prepended; built only on adapters with the SUBGROUP feature and subgroups of at least 8 lanes).
// Each invocation computes a 4 x 4 block of outputs as matmul_texture does; the 8 lanes of a
// workgroup share its 4 rows. Per block of 32 K, lane l fetches input texel l of each row and
// the lanes take turns broadcasting theirs, so each input texel is fetched once per workgroup
// instead of once per lane. On lavapipe a texel fetch is a gather costing ~50 cycles and a
// broadcast an extract and a splat: measured 1.4x faster than matmul_texture at GPT-2's prefill
// shapes (wgpt bench --kernels). K % 32 == 0 (the texture layout has K % 64 == 0).

// Weights of row n for K texels 2 s and 2 s + 1 of block kb (32 K), as two vec4 (f32: two
// texels; f16: one; q8: half of one, times the row's block scale).
fn pair_weights(kb: u32, s: u32, n: u32, scale: f32) -> mat2x4<f32> {
    // One return, no early ones: the branches on override constants then fold away entirely.
    var r: mat2x4<f32>;
    if (WEIGHT_Q8) {
        let t = wtexel(2u * kb + s / 2u, n);
        let h = 2u * (s % 2u);
        r = mat2x4(i8x4(t[h]) * scale, i8x4(t[h + 1u]) * scale);
    } else if (WEIGHT_F16) {
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
    sc: vec4<f32>,
    e: array<vec4<f32>, 4>,
    o: array<vec4<f32>, 4>,
    r: ptr<function, array<vec4<f32>, 4>>,
) {
    let w0 = pair_weights(kb, s, n.x, sc.x);
    let w1 = pair_weights(kb, s, n.y, sc.y);
    let w2 = pair_weights(kb, s, n.z, sc.z);
    let w3 = pair_weights(kb, s, n.w, sc.w);
    (*r)[0] += dot4(e[0], w0[0], w1[0], w2[0], w3[0]) + dot4(o[0], w0[1], w1[1], w2[1], w3[1]);
    (*r)[1] += dot4(e[1], w0[0], w1[0], w2[0], w3[0]) + dot4(o[1], w0[1], w1[1], w2[1], w3[1]);
    (*r)[2] += dot4(e[2], w0[0], w1[0], w2[0], w3[0]) + dot4(o[2], w0[1], w1[1], w2[1], w3[1]);
    (*r)[3] += dot4(e[3], w0[0], w1[0], w2[0], w3[0]) + dot4(o[3], w0[1], w1[1], w2[1], w3[1]);
}

@compute @workgroup_size(8)
fn matmul_texture_subgroup(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    // No early return: every lane takes part in the broadcasts. Rows and columns past the edge
    // repeat the last one and are not stored.
    let n0 = gid.x * 4u;
    let m0 = gid.y * 4u;
    let M = step.rows;
    let nl = p.N - 1u;
    let ml = M - 1u;
    let n = vec4(n0) + vec4(0u, 1u, 2u, 3u);
    let m = vec4(m0) + vec4(0u, 1u, 2u, 3u);
    let lane = sg_lane % 8u;
    var r = array<vec4<f32>, 4>();
    for (var kb = 0u; kb < p.K / 32u; kb++) {
        let a0 = textureLoad(a, vec2(8u * kb + lane, m.x));
        let a1 = textureLoad(a, vec2(8u * kb + lane, m.y));
        let a2 = textureLoad(a, vec2(8u * kb + lane, m.z));
        let a3 = textureLoad(a, vec2(8u * kb + lane, m.w));
        // q8: the four rows' scales of this block (n0 starts a group of four stored rows).
        var sc = vec4(1.0);
        if (WEIGHT_Q8) { sc = block_scales(kb, n0); }
        // Pair s covers K texels 2 s and 2 s + 1 of the block: lanes 2 s and 2 s + 1's inputs.
        pair(kb, 0u, n, sc, array(subgroupBroadcast(a0, 0u), subgroupBroadcast(a1, 0u), subgroupBroadcast(a2, 0u), subgroupBroadcast(a3, 0u)),
             array(subgroupBroadcast(a0, 1u), subgroupBroadcast(a1, 1u), subgroupBroadcast(a2, 1u), subgroupBroadcast(a3, 1u)), &r);
        pair(kb, 1u, n, sc, array(subgroupBroadcast(a0, 2u), subgroupBroadcast(a1, 2u), subgroupBroadcast(a2, 2u), subgroupBroadcast(a3, 2u)),
             array(subgroupBroadcast(a0, 3u), subgroupBroadcast(a1, 3u), subgroupBroadcast(a2, 3u), subgroupBroadcast(a3, 3u)), &r);
        pair(kb, 2u, n, sc, array(subgroupBroadcast(a0, 4u), subgroupBroadcast(a1, 4u), subgroupBroadcast(a2, 4u), subgroupBroadcast(a3, 4u)),
             array(subgroupBroadcast(a0, 5u), subgroupBroadcast(a1, 5u), subgroupBroadcast(a2, 5u), subgroupBroadcast(a3, 5u)), &r);
        pair(kb, 3u, n, sc, array(subgroupBroadcast(a0, 6u), subgroupBroadcast(a1, 6u), subgroupBroadcast(a2, 6u), subgroupBroadcast(a3, 6u)),
             array(subgroupBroadcast(a0, 7u), subgroupBroadcast(a1, 7u), subgroupBroadcast(a2, 7u), subgroupBroadcast(a3, 7u)), &r);
    }
    let b = bias4(n0);
    for (var i = 0u; i < 4u; i++) {
        if (m0 + i < M) { store4(m0 + i, n0, r[i], b); }
    }
}
