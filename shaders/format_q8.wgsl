// q8 weights (src/gpu/format.rs Q8): symmetric int8 with one f32 scale per block of 32 along a
// row (like llama.cpp's Q8_0). A stored row of K weights is its K int8 (four per u32 word,
// lowest byte first; K / 16 texels in a weight texture), then a scale area of K / 128 texels
// (four words each, rounded up) in which row 4 g + j holds, in texel i, the scales of block
// 4 i + j of rows 4 g .. 4 g + 4: the four rows a kernel invocation computes take one scale
// fetch per block. Matrices are padded to whole groups of four rows, and chunks start at one.

const Q8_BLOCK: u32 = 32u;

// Words of one stored row of k weights.
fn q8_row_words(k: u32) -> u32 {
    return k / 4u + 4u * ((k + 127u) / 128u);
}

// The word (from the start of the chunk) holding the scale of block b of row n, rows of k.
fn q8_scale_word(n: u32, b: u32, k: u32) -> u32 {
    return (n - n % 4u + b % 4u) * q8_row_words(k) + k / 4u + 4u * (b / 4u) + n % 4u;
}

// The texel (along a weight texture's K axis) holding the scales of block b of the four rows
// of a group, in row n0 + b % 4 of that group (n0 a multiple of 4), rows of k.
fn q8_scale_texel(b: u32, k: u32) -> u32 {
    return k / 16u + b / 4u;
}

// Four signed bytes of a word (lowest byte first) as f32.
fn i8x4(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xI8(word));
}

// Byte i of a word as a signed value.
fn i8_at(word: u32, i: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(word), 8u * i, 8u));
}
