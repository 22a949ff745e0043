// Rotary position embeddings on a step's queries and keys, in place, as transformers applies
// them (`rotate_half`): in each of the NH query heads and NKV key heads of a qkv row, dims i and
// i + HS/2 turn by the angle position × inv_freq[i]. One invocation per (pair, row).
// step.wgsl is prepended.

struct Params { NH: u32, NKV: u32, HS: u32, _a: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;    // (HS / 2)
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;   // (T, (NH + 2 NKV) HS)

// 2π in three parts (Cody-Waite; HI has 8 significant bits, so k HI is exact for k < 2^16,
// angles up to 4e5): cos and sin see |x| <= π, where every backend's builtins are accurate; the f32 angle itself is the
// one transformers computes (position × inv_freq, one rounding).
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_MID: f32 = 1.9353071693331003e-3;
const TWO_PI_LO: f32 = 1.0253131677018246e-11;

// (cos, sin) of `a`.
fn cos_sin(a: f32) -> vec2<f32> {
    let k = round(a * 0.15915494309189535);
    let x = ((a - k * TWO_PI_HI) - k * TWO_PI_MID) - k * TWO_PI_LO;
    return vec2(cos(x), sin(x));
}

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.HS / 2u;
    let head = gid.x / half;
    let i = gid.x % half;
    let t = gid.y;
    if (head >= p.NH + p.NKV || t >= step.rows) { return; }
    let cs = cos_sin(f32(position(t)) * inv_freq[i]);
    let at = t * (p.NH + 2u * p.NKV) * p.HS + head * p.HS + i;
    let x1 = qkv[at];
    let x2 = qkv[at + half];
    qkv[at] = x1 * cs.x - x2 * cs.y;
    qkv[at + half] = x2 * cs.x + x1 * cs.y;
}
