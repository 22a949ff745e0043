// Fills a buffer with pseudo-random values in [center - scale, center + scale), for benchmark
// weights generated on the GPU: any adapter can be benchmarked without a checkpoint, and no
// gigabytes cross the bus.

struct Params { n: u32, seed: u32, scale: f32, center: f32, row_words: u32, q_words: u32, q_rows: u32, _a: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;  // (n) words

// Words in the WEIGHT_FORMAT (format.wgsl, prepended): f32, two halves per word (f16), or q8
// rows of row_words words: q_words of random int8 (four per word, in [-127, 127]), then block
// scales of scale / 127 (so weights span +-scale, centre ignored). With q_rows != 0 the rows are
// a transposed weight texture's: the first q_rows rows int8, the rest scales. The nibble formats
// likewise, with random value planes and their pairs of f32.

// PCG hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

@compute @workgroup_size(256)
fn fill_random(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) { return; }
    let r = pcg(i ^ pcg(p.seed));
    if (WEIGHT_FORMAT == FORMAT_Q8) {
        let int8 = select(i % p.row_words < p.q_words, i / p.row_words < p.q_rows, p.q_rows != 0u);
        if (int8) {
            // The hash's four bytes, each mod 255, less 127.
            let b = (vec4(r) >> vec4(0u, 8u, 16u, 24u)) & vec4(0xffu);
            out[i] = pack4xI8(vec4<i32>(b % vec4(255u)) - vec4(127));
        } else {
            out[i] = bitcast<u32>(p.scale / 127.0);
        }
        return;
    }
    let half = WEIGHT_FORMAT == FORMAT_Q4H || WEIGHT_FORMAT == FORMAT_Q5H;
    if (WEIGHT_FORMAT == FORMAT_Q4 || WEIGHT_FORMAT == FORMAT_Q5 || WEIGHT_FORMAT == FORMAT_Q6 || half) {
        // Nibble and high-bit planes: any word. Scale area: pairs of texels, q4 and q5 scales
        // (so weights span +-scale) then minimums, q6 two texels of half scales; q4h and q5h
        // one texel of (scale, minimum) f16 pairs.
        let values = select(i % p.row_words < p.q_words, i / p.row_words < p.q_rows, p.q_rows != 0u);
        let area = select(i % p.row_words - p.q_words, (i / p.row_words - p.q_rows) * 4u, p.q_rows != 0u);
        let top = select(15.0, 31.0, WEIGHT_FORMAT == FORMAT_Q5 || WEIGHT_FORMAT == FORMAT_Q5H);
        if (values) {
            out[i] = r;
        } else if (half) {
            out[i] = pack2x16float(vec2(2.0 * p.scale / top, -p.scale));
        } else if (WEIGHT_FORMAT == FORMAT_Q6) {
            out[i] = bitcast<u32>(p.scale / 32.0);
        } else {
            out[i] = bitcast<u32>(select(-p.scale, 2.0 * p.scale / top, area / 4u % 2u == 0u));
        }
        return;
    }
    let v = p.center + p.scale * (f32(r >> 8u) / 16777216.0 * 2.0 - 1.0);
    if (WEIGHT_FORMAT == FORMAT_F16) {
        let v2 = p.center + p.scale * (f32(pcg(r) >> 8u) / 16777216.0 * 2.0 - 1.0);
        out[i] = pack2x16float(vec2(v, v2));
    } else {
        out[i] = bitcast<u32>(v);
    }
}
