// rotary.wgsl's rotation read from a row of `qkv`, which the kernel declares (its rows of
// queries, keys and values): rope.wgsl, kv_append*.wgsl and attention*.wgsl.

// Dim d of the HS-wide head starting at qkv[at], rotated for position `pos`.
fn rotated(at: u32, d: u32, hs: u32, pos: u32) -> f32 {
    let half = hs / 2u;
    let i = d % half;
    let cs = cos_sin(f32(pos) * inv_freq[i / 4u][i % 4u]);
    if (d < half) { return qkv[at + d] * cs.x - qkv[at + d + half] * cs.y; }
    return qkv[at + d] * cs.x + qkv[at + d - half] * cs.y;
}
