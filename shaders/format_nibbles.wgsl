// The nibble formats (src/gpu/format.rs Nibbles): q4, q5 and q6, blocks of 32 along a row. A
// stored row of K weights is K / 8 words of nibbles (the low four bits of every weight; word j of
// a block holds weights 8 j .. 8 j + 4 in its bytes' low nibbles and 8 j + 4 .. 8 j + 8 in their
// high ones, so a weight texel is one block), then a plane of high bits padded to whole texels
// (q5: a word a block, bit i of weight i; q6: two words a block, two bits a weight, weights 0-15
// in the first), then a scale area of K / 128 pairs of texels (rounded up) in which row
// 4 g + j holds, in pair i, two f32 of block 4 i + j for each of rows 4 g .. 4 g + 4 (the four
// rows a kernel invocation computes take one fetch of each per block): q4 and q5 a scale s and a
// minimum m, w = v s + m; q6 the scales of the block's halves of 16, w = (v - 32) s. q4h and
// q5h hold the pair as two f16 in one word: a scale area of K / 128 single texels.
// GGUF's Q4_0/Q4_1 (q4h), Q4_K, Q5_0/Q5_1 (q5h), Q5_K and Q6_K repack into them exactly. Matrices
// are padded to whole groups of four rows, and chunks start at one.

const Q4_BLOCK: u32 = 32u;

// Whether the pipeline's weights are in a nibble format.
fn is_nibbles() -> bool {
    return WEIGHT_FORMAT == FORMAT_Q4 || WEIGHT_FORMAT == FORMAT_Q5 || WEIGHT_FORMAT == FORMAT_Q6
        || WEIGHT_FORMAT == FORMAT_Q4H || WEIGHT_FORMAT == FORMAT_Q5H;
}

// Whether a block's two values are f16 in one word (q4h, q5h), not two f32.
fn qn_half() -> bool {
    return WEIGHT_FORMAT == FORMAT_Q4H || WEIGHT_FORMAT == FORMAT_Q5H;
}

// Bits above the nibble.
fn qn_high_bits() -> u32 {
    let five = WEIGHT_FORMAT == FORMAT_Q5 || WEIGHT_FORMAT == FORMAT_Q5H;
    return select(select(0u, 1u, five), 2u, WEIGHT_FORMAT == FORMAT_Q6);
}

// Words of the scale area per 128 weights of a row: a texel of f16 pairs or two of f32.
fn qn_scale_words() -> u32 {
    return select(8u, 4u, qn_half());
}

// Words from a block's first scale word to its second (0: one word holds both).
fn qn_second() -> u32 {
    return select(4u, 0u, qn_half());
}

// A block's two values from its first scale word and its second.
fn qn_pair(first: u32, second: u32) -> vec2<f32> {
    if (qn_half()) { return unpack2x16float(first); }
    return vec2(bitcast<f32>(first), bitcast<f32>(second));
}

// Four rows' two values (columns 0 and 1) from their scale texel and, for f32, the next.
fn qn_pairs(first: vec4<u32>, second: vec4<u32>) -> mat2x4<f32> {
    if (qn_half()) {
        let a = unpack2x16float(first.x);
        let b = unpack2x16float(first.y);
        let c = unpack2x16float(first.z);
        let d = unpack2x16float(first.w);
        return mat2x4(vec4(a.x, b.x, c.x, d.x), vec4(a.y, b.y, c.y, d.y));
    }
    return mat2x4(bitcast<vec4<f32>>(first), bitcast<vec4<f32>>(second));
}

// Words of the high-bit plane of a row of k weights (whole texels).
fn qn_high_words(k: u32) -> u32 {
    return 4u * ((k * qn_high_bits() + 127u) / 128u);
}

// Words of one stored row of k weights.
fn qn_row_words(k: u32) -> u32 {
    return k / 8u + qn_high_words(k) + qn_scale_words() * ((k + 127u) / 128u);
}

// The word (from the start of the chunk) holding the first f32 of block b of row n, rows of k;
// the second is qn_second() words on.
fn qn_scale_word(n: u32, b: u32, k: u32) -> u32 {
    let area = k / 8u + qn_high_words(k) + qn_scale_words() * (b / 4u);
    return (n - n % 4u + b % 4u) * qn_row_words(k) + area + n % 4u;
}

// The texel (along a weight texture's K axis) holding the first f32 of block b of the four rows
// of a group, in row n0 + b % 4 of that group; the second f32 are in the next texel (q4h, q5h:
// one texel holds both).
fn qn_scale_texel(b: u32, k: u32) -> u32 {
    return k / 32u + qn_high_words(k) / 4u + qn_scale_words() / 4u * (b / 4u);
}

// The word (within its row) of block b's high bits (q5), or the first of its two (q6).
fn qn_high_word(b: u32, k: u32) -> u32 {
    return k / 8u + qn_high_bits() * b;
}

// The first four weights of a word (its bytes' low nibbles) and the last four (high nibbles).
fn q4_lo(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xU8(word & 0x0F0F0F0Fu));
}
fn q4_hi(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xU8((word >> 4u) & 0x0F0F0F0Fu));
}

// The high parts (times 16) of weights i0 .. i0 + 4 of a block (i0 a multiple of 4) from its
// high words h (q5: h.x; q6: h.x for weights 0-15, h.y for 16-31), less q6's offset of 32.
fn qn_high4(h: vec2<u32>, i0: u32) -> vec4<f32> {
    if (qn_high_bits() == 1u) {
        let bits = (vec4(h.x) >> (vec4(i0) + vec4(0u, 1u, 2u, 3u))) & vec4(1u);
        return vec4<f32>(bits) * 16.0;
    }
    if (WEIGHT_FORMAT == FORMAT_Q6) {
        let word = select(h.x, h.y, i0 >= 16u);
        let bits = (vec4(word) >> (vec4(2u * (i0 % 16u)) + vec4(0u, 2u, 4u, 6u))) & vec4(3u);
        return vec4<f32>(bits) * 16.0 - 32.0;
    }
    return vec4(0.0);
}

// Unscaled values of weights 8 j .. 8 j + 4 (lo) and 8 j + 4 .. 8 j + 8 (hi) of a block, from
// its nibble word j and high words h.
fn qn_lo(word: u32, h: vec2<u32>, j: u32) -> vec4<f32> {
    return q4_lo(word) + qn_high4(h, 8u * j);
}
fn qn_hi(word: u32, h: vec2<u32>, j: u32) -> vec4<f32> {
    return q4_hi(word) + qn_high4(h, 8u * j + 4u);
}

// Unscaled value i (0 .. 32) of a block whose nibble word for it is `word`.
fn qn_at(word: u32, h: vec2<u32>, i: u32) -> f32 {
    let nibble = f32(extractBits(word, 8u * (i % 4u) + 4u * (i % 8u / 4u), 4u));
    return nibble + qn_high4(h, i - i % 4u)[i % 4u];
}

// The scale and minimum applying to nibble word j of a block whose two f32 are (a, b): q4 and
// q5 (a, b); q6 the half's scale and 0.
fn qn_sm(a: f32, b: f32, j: u32) -> vec2<f32> {
    if (WEIGHT_FORMAT == FORMAT_Q6) { return vec2(select(a, b, j >= 2u), 0.0); }
    return vec2(a, b);
}

// Four columns' block results from their dot products with the block's first (words 0-1) and
// second (2-3) halves of unscaled values, the sum of the block's inputs, and the columns' two
// f32 (sm[0], sm[1]): q4 and q5 s (lo + hi) + m sum(x); q6 s0 lo + s1 hi.
fn qn_combine(lo: vec4<f32>, hi: vec4<f32>, sx: f32, sm: mat2x4<f32>) -> vec4<f32> {
    if (WEIGHT_FORMAT == FORMAT_Q6) { return lo * sm[0] + hi * sm[1]; }
    return (lo + hi) * sm[0] + sx * sm[1];
}
