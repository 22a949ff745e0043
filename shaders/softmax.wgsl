// The online softmax (flash attention's), shared by attention.wgsl, attention_texture.wgsl and
// matmul_texture_subgroup.wgsl's gemv_texture_attention: scores arrive a key or a block of keys
// at a time; a running maximum m and a running sum of exp(s - m) (and of the weighted values)
// are kept, and sums taken under an older maximum are rescaled when it grows.

// Below any real score, yet finite: exp(NEG - x) is a clean 0 where -inf could give NaN.
const NEG: f32 = -3.0e38;

// The running maximum once scores up to `block_max` have arrived, and the factor that rescales
// sums taken under the old maximum m: (max(m, block_max), exp(m - new maximum)).
fn online_max(m: f32, block_max: f32) -> vec2<f32> {
    let m_new = max(m, block_max);
    return vec2(m_new, exp(m - m_new));
}
