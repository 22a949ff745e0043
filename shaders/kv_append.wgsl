// Copies this step's keys and values from the fused qkv projection into the layer's KV cache, each
// row at its position in its sequence's slot (step.wgsl and rotary.wgsl are prepended); with
// ROPE, the keys rotated on the way. The cache lives in VRAM for the whole session.

struct Params { Q: u32, KV: u32, HS: u32, _b: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;            // (T, Q + 2 KV): q | k | v
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;  // (slots * n_ctx, KV)
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;  // (slots * n_ctx, KV)
@group(0) @binding(5) var<uniform> inv_freq: array<vec4<f32>, 32>;  // (HS / 2) with ROPE

@compute @workgroup_size(64)
fn kv_append(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.KV || t >= step.rows) { return; }
    let src = t * (p.Q + 2u * p.KV) + p.Q;
    let dst = (slot_base(t) + position(t)) * p.KV + c;
    var k = qkv[src + c];
    if (ROPE) {
        let d = c % p.HS;
        k = rotated(src + c - d, d, p.HS, position(t));
    }
    k_cache[dst] = k;
    v_cache[dst] = qkv[src + p.KV + c];
}
