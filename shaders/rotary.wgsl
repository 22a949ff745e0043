// Rotary position embeddings (transformers' `rotate_half` layout): in each query and key head,
// dims i and i + HS/2 turn by the angle position × inv_freq[i]. Prepended to rope.wgsl, to
// kv_append*.wgsl and attention*.wgsl, which rotate as they read with ROPE (the rope_attend
// fusion; rotary_qkv.wgsl after it), and to matmul_texture_subgroup.wgsl, whose fused decode
// attention rotates what it computes (qkv_attend). The kernel declares the uniform `inv_freq`
// (HS / 2 <= 128 frequencies, four per vec4: a uniform, so the attention stays within the four
// storage buffers wgpt asks of an adapter).

// The kernels that read q or k rotate them first (rope_attend); rope.wgsl ignores it.
override ROPE: bool = false;

// 2π in three parts (Cody-Waite; HI has 8 significant bits, so k HI is exact for k < 2^16,
// angles up to 4e5): cos and sin see |x| <= π, where every backend's builtins are accurate; the
// f32 angle itself is the one transformers computes (position × inv_freq, one rounding).
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_MID: f32 = 1.9353071693331003e-3;
const TWO_PI_LO: f32 = 1.0253131677018246e-11;

// (cos, sin) of `a`.
fn cos_sin(a: f32) -> vec2<f32> {
    let k = round(a * 0.15915494309189535);
    let x = ((a - k * TWO_PI_HI) - k * TWO_PI_MID) - k * TWO_PI_LO;
    return vec2(cos(x), sin(x));
}

// (cos, sin) of dims d0 .. d0 + 4 (d0 % 4 == 0, d0 + 4 <= HS / 2) at position `pos`, as columns.
fn cos_sin4(d0: u32, pos: u32) -> mat2x4<f32> {
    let a = f32(pos) * inv_freq[d0 / 4u];
    let c0 = cos_sin(a.x);
    let c1 = cos_sin(a.y);
    let c2 = cos_sin(a.z);
    let c3 = cos_sin(a.w);
    return mat2x4(vec4(c0.x, c1.x, c2.x, c3.x), vec4(c0.y, c1.y, c2.y, c3.y));
}
