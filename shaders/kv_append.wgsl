// Copies this step's keys and values from the fused qkv projection into the layer's KV cache, each
// row at its position in its sequence's slot (step.wgsl is prepended). The cache lives in VRAM
// for the whole session.

struct Params { C: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;            // (T, 3C): q | k | v
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;  // (slots * n_ctx, C)
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;  // (slots * n_ctx, C)

@compute @workgroup_size(64)
fn kv_append(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.C || t >= step.rows) { return; }
    let src = t * 3u * p.C;
    let dst = (slot_base(t) + position(t)) * p.C + c;
    k_cache[dst] = qkv[src + p.C + c];
    v_cache[dst] = qkv[src + 2u * p.C + c];
}

