// f16 weights (src/gpu/format.rs F16): IEEE halves, two per u32 word, lowest first
// (unpack2x16float: no shader-f16 feature needed). A row of K weights is K / 2 words; a weight
// texel (rgba32uint) holds eight.

// Words of one stored row of k weights.
fn f16_row_words(k: u32) -> u32 {
    return k / 2u;
}

// Weight i (0 or 1) of a word.
fn f16_at(word: u32, i: u32) -> f32 {
    let pair = unpack2x16float(word);
    return select(pair.x, pair.y, i == 1u);
}

// The eight weights of a texel as two vec4 (columns 0 and 1).
fn f16x8(t: vec4<u32>) -> mat2x4<f32> {
    return mat2x4(
        vec4(unpack2x16float(t.x), unpack2x16float(t.y)),
        vec4(unpack2x16float(t.z), unpack2x16float(t.w)),
    );
}
