// kv_append for the texture layout: this step's keys and values from qkv into the KV-cache
// textures (slots * n_ctx rows, KV / 4 texels) that attention_texture reads (step.wgsl and
// rotary.wgsl are prepended); with ROPE, the keys rotated on the way.

struct Params { Q: u32, KV: u32, HS: u32, _b: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;                     // (T, Q + 2 KV)
@group(0) @binding(3) var k_cache: texture_storage_2d<rgba32float, write>;     // (n_ctx, KV / 4)
@group(0) @binding(4) var v_cache: texture_storage_2d<rgba32float, write>;     // (n_ctx, KV / 4)
@group(0) @binding(5) var<uniform> inv_freq: array<vec4<f32>, 32>;  // (HS / 2) with ROPE

@compute @workgroup_size(64)
fn kv_append_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c4 = gid.x;
    let t = gid.y;
    if (c4 * 4u >= p.KV || t >= step.rows) { return; }
    let k = t * (p.Q + 2u * p.KV) + p.Q + 4u * c4;
    let v = k + p.KV;
    let row = vec2(c4, slot_base(t) + position(t));
    var key = vec4(qkv[k], qkv[k + 1u], qkv[k + 2u], qkv[k + 3u]);
    if (ROPE) {
        // HS % 4 == 0: the texel's four dims are in one head.
        let d = (4u * c4) % p.HS;
        let head = k - d;
        let pos = position(t);
        key = vec4(rotated(head, d, p.HS, pos), rotated(head, d + 1u, p.HS, pos),
                   rotated(head, d + 2u, p.HS, pos), rotated(head, d + 3u, p.HS, pos));
    }
    textureStore(k_cache, row, key);
    textureStore(v_cache, row, vec4(qkv[v], qkv[v + 1u], qkv[v + 2u], qkv[v + 3u]));
}
