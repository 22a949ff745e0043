// q4 weights (src/gpu/format.rs Q4): unsigned 4-bit with an f32 scale and minimum per block of
// 32 along a row, w = q scale + min (GGUF's Q4_0, Q4_1 and Q4_K repack into it exactly). A
// stored row of K weights is K / 8 words of nibbles, word j of a block holding weights
// 8 j .. 8 j + 4 in its bytes' low nibbles and 8 j + 4 .. 8 j + 8 in their high ones (a weight
// texel is one block), then a scale area of K / 128 pairs of texels (rounded up) in which row
// 4 g + j holds, in pair i, the scales then the minimums of block 4 i + j of rows
// 4 g .. 4 g + 4: the four rows a kernel invocation computes take one fetch of each per block.
// Matrices are padded to whole groups of four rows, and chunks start at one.

const Q4_BLOCK: u32 = 32u;

// Words of one stored row of k weights.
fn q4_row_words(k: u32) -> u32 {
    return k / 8u + 8u * ((k + 127u) / 128u);
}

// The word (from the start of the chunk) holding the scale of block b of row n, rows of k; its
// minimum is four words on.
fn q4_scale_word(n: u32, b: u32, k: u32) -> u32 {
    return (n - n % 4u + b % 4u) * q4_row_words(k) + k / 8u + 8u * (b / 4u) + n % 4u;
}

// The texel (along a weight texture's K axis) holding the scales of block b of the four rows of
// a group, in row n0 + b % 4 of that group; the minimums are in the next texel.
fn q4_scale_texel(b: u32, k: u32) -> u32 {
    return k / 32u + 2u * (b / 4u);
}

// The first four weights of a word (its bytes' low nibbles) and the last four (high nibbles).
fn q4_lo(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xU8(word & 0x0F0F0F0Fu));
}
fn q4_hi(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xU8((word >> 4u) & 0x0F0F0F0Fu));
}

// Weight i (0 .. 8) of a word, unscaled.
fn q4_at(word: u32, i: u32) -> f32 {
    return f32(extractBits(word, 8u * (i % 4u) + 4u * (i / 4u), 4u));
}
