// Rotary position embeddings (transformers' `rotate_half` layout): in each query and key head,
// dims i and i + HS/2 turn by the angle position × inv_freq[i]. Prepended to rope.wgsl, and to
// kv_append*.wgsl and attention*.wgsl, which rotate as they read with ROPE (the rope_attend
// fusion). The kernel declares `qkv` (its rows of queries, keys, values) and the uniform
// `inv_freq` (HS / 2 <= 128 frequencies, four per vec4: a uniform, so the attention stays within
// the four storage buffers wgpt asks of an adapter).

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

// Dim d of the HS-wide head starting at qkv[at], rotated for position `pos`.
fn rotated(at: u32, d: u32, hs: u32, pos: u32) -> f32 {
    let half = hs / 2u;
    let i = d % half;
    let cs = cos_sin(f32(pos) * inv_freq[i / 4u][i % 4u]);
    if (d < half) { return qkv[at + d] * cs.x - qkv[at + d + half] * cs.y; }
    return qkv[at + d] * cs.x + qkv[at + d - half] * cs.y;
}
