// Rotary position embeddings on a step's queries and keys, in place (rotary.wgsl, prepended
// with step.wgsl, has the rotation): the NH query heads and NKV key heads of each qkv row.
// One invocation per (pair, row), rotating dims i and i + HS/2 of one head.

struct Params { NH: u32, NKV: u32, HS: u32, _a: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<uniform> inv_freq: array<vec4<f32>, 32>;  // (HS / 2)
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;   // (T, (NH + 2 NKV) HS)

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.HS / 2u;
    let head = gid.x / half;
    let i = gid.x % half;
    let t = gid.y;
    if (head >= p.NH + p.NKV || t >= step.rows) { return; }
    let at = t * (p.NH + 2u * p.NKV) * p.HS + head * p.HS;
    let x1 = rotated(at, i, p.HS, position(t));
    let x2 = rotated(at, i + half, p.HS, position(t));
    qkv[at + i] = x1;
    qkv[at + i + half] = x2;
}
