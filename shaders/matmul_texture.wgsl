// Linear layers with operands in read-only storage textures (linear.wgsl is prepended): each
// texel holds four consecutive values along K, a row of the texture is a row of the matrix.
// On CPU adapters (lavapipe) a storage-buffer load costs a bounds-checked scalar load per lane
// and component, while a texel load is one vectorised fetch: measured on lavapipe at GPT-2's
// shapes, these kernels are ~10x (GEMV) to ~15x (GEMM) faster than the buffer ones. The
// activations are copied into a texture before each layer (K % 64 == 0 keeps those copies'
// rows 256-byte aligned).
//   matmul_texture: each invocation a 4 x 4 block of outputs, no workgroup memory.
//   gemv_texture:   each invocation four outputs of one row.

@group(0) @binding(2) var a: texture_storage_2d<rgba32float, read>;  // (M rows, K / 4 texels)
@group(0) @binding(3) var w: texture_storage_2d<rgba32float, read>;  // (N rows, K / 4 texels)

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
    for (var k = 0u; k < p.K / 4u; k++) {
        let w0 = textureLoad(w, vec2(k, n0));
        let w1 = textureLoad(w, vec2(k, n1));
        let w2 = textureLoad(w, vec2(k, n2));
        let w3 = textureLoad(w, vec2(k, n3));
        r0 += dot4(textureLoad(a, vec2(k, m0)), w0, w1, w2, w3);
        r1 += dot4(textureLoad(a, vec2(k, m1)), w0, w1, w2, w3);
        r2 += dot4(textureLoad(a, vec2(k, m2)), w0, w1, w2, w3);
        r3 += dot4(textureLoad(a, vec2(k, m3)), w0, w1, w2, w3);
    }
    let r = array<vec4<f32>, 4>(r0, r1, r2, r3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            if (m0 + i < M && n0 + j < p.N) { store(m0 + i, n0 + j, r[i][j]); }
        }
    }
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
    var c0 = vec4(0.0);
    var c1 = vec4(0.0);
    var c2 = vec4(0.0);
    var c3 = vec4(0.0);
    for (var k = 0u; k < p.K / 4u; k++) {
        let x = textureLoad(a, vec2(k, m));
        c0 += x * textureLoad(w, vec2(k, n0));
        c1 += x * textureLoad(w, vec2(k, n1));
        c2 += x * textureLoad(w, vec2(k, n2));
        c3 += x * textureLoad(w, vec2(k, n3));
    }
    let one = vec4(1.0);
    let s = vec4(dot(c0, one), dot(c1, one), dot(c2, one), dot(c3, one));
    for (var j = 0u; j < 4u; j++) {
        if (n0 + j < p.N) { store(m, n0 + j, s[j]); }
    }
}
