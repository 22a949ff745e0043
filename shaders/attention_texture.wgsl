// Attention for the texture layout (CPU adapters): the KV cache lives in rgba32float textures
// (n_ctx rows, NKV HS / 4 texels; texel = four consecutive dims), written by kv_append_texture and
// read here. On lavapipe a texel load is one vectorised fetch where a buffer load is a per-lane
// scalar loop, and barriers are costly; so here there are neither buffers for K, V nor barriers:
// each invocation owns one (head, query) and runs the online softmax over its keys alone, with
// its query and accumulator in registers (HS % 4 == 0, HS <= 256). step.wgsl and rotary.wgsl
// are prepended: with ROPE, the causal entry rotates its query as it loads it.
//   attention_texture:               causal: query t sees keys 0 ..= position(t) of its
//                                    sequence's cache slot.
//   attention_texture_bidirectional: encoders, sequences packed in the step's rows: query t sees
//                                    the rows spans[t].x .. spans[t].x + spans[t].y of its own
//                                    sequence (the key padding mask, as row ranges).
// and their T5 forms, attention_texture_biased and attention_texture_bidirectional_biased, which
// add a relative position bias to each score (as attention.wgsl's; T5 scales nothing); and T5's
// cross-attention,
//   attention_texture_cross:         query t (alone in its row of `qkv`, NH HS wide) sees every
//                                    key of the source, rows spans[0].x .. + spans[0].y.

// Query head h reads key/value head h / (NH / NKV) (grouped-query attention).

struct Params { NH: u32, NKV: u32, HS: u32, scale: f32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;                       // (T, (NH + 2 NKV) HS)
@group(0) @binding(3) var k_cache: texture_storage_2d<rgba32float, read>;        // (n_ctx, NKV HS / 4)
@group(0) @binding(4) var v_cache: texture_storage_2d<rgba32float, read>;        // (n_ctx, NKV HS / 4)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;                 // (T, NH HS)
@group(0) @binding(7) var<storage, read> spans: array<vec2<u32>>;               // (T) bidirectional, (1) cross
@group(0) @binding(6) var<uniform> inv_freq: array<vec4<f32>, 32>;  // (HS / 2) with ROPE

// The head size, fixed when the pipeline is built for one model (0: read p.HS at run time).
// A constant bound lets the driver unroll the loops over the head and keep q and acc in
// registers: on lavapipe 3-5x faster than the run-time bound (wgpt bench --kernels).
override HS: u32 = 0u;

const MAX_HS4: u32 = 64u;
const WG: u32 = 8u;

// T5's relative position bias: attention.wgsl's PositionBias (t5::attention_bias), bound by
// the _biased entry points only. Their workgroup (WG heads of one query) first copies each
// head's bias by distance into `dbias`, one barrier, so the shared attend() reads workgroup
// memory and the other entry points keep their bindings. Distances up to R = 129
// (max_distance 128, every T5 checkpoint's).
struct PositionBias { r: u32, nh: u32, w0: u32, _a: u32, data: array<vec4<f32>, 4095> }
@group(0) @binding(8) var<uniform> pbias: PositionBias;
const MAX_DISTANCES: u32 = 259u;  // 2R + 1
var<workgroup> dbias: array<f32, 2072>;  // (WG, MAX_DISTANCES)

// Which bias attend() adds: none, or row `row` of dbias by the distance from position qpos.
struct Bias { on: bool, row: u32, qpos: u32, r: u32 }
const NO_BIAS = Bias(false, 0u, 0u, 0u);

fn bias_entry(i: u32) -> f32 { return pbias.data[i / 4u][i % 4u]; }

// Copies the bias by distance of heads h0 .. h0 + WG into dbias (workgroup-uniform h0).
fn load_bias(h0: u32, lid: u32) {
    let n = 2u * pbias.r + 1u;
    for (var i = lid; i < WG * n; i += WG) {
        let h = h0 + i / n;
        if (h < pbias.nh && i / n < WG) {
            let bucket = u32(bias_entry(i % n));
            dbias[(i / n) * MAX_DISTANCES + i % n] = bias_entry(pbias.w0 + bucket * pbias.nh + h);
        }
    }
    workgroupBarrier();
}

fn head_size() -> u32 { return select(p.HS, HS, HS != 0u); }

// Floats per row of `qkv`: queries, keys and values side by side.
fn qkv_stride() -> u32 { return (p.NH + 2u * p.NKV) * head_size(); }

// Texel d of the query at qkv[qrow], rotated for position `pos` with ROPE.
fn query_texel(qrow: u32, d: u32, pos: u32) -> vec4<f32> {
    if (ROPE) {
        let hs = head_size();
        return vec4(rotated(qrow, 4u * d, hs, pos), rotated(qrow, 4u * d + 1u, hs, pos),
                    rotated(qrow, 4u * d + 2u, hs, pos), rotated(qrow, 4u * d + 3u, hs, pos));
    }
    let i = qrow + 4u * d;
    return vec4(qkv[i], qkv[i + 1u], qkv[i + 2u], qkv[i + 3u]);
}

// Query t of head h (its row `q_stride` floats from the last) over cache rows
// base .. base + n_keys.
fn attend(h: u32, t: u32, base: u32, n_keys: u32, bias: Bias, q_stride: u32) {
    let hs4 = head_size() / 4u;
    let x0 = h / (p.NH / p.NKV) * hs4;  // its key head's first texel column
    let qrow = t * q_stride + h * head_size();
    var q: array<vec4<f32>, MAX_HS4>;
    var acc: array<vec4<f32>, MAX_HS4>;
    for (var d = 0u; d < hs4; d++) {
        q[d] = query_texel(qrow, d, position(t)) * p.scale;
        acc[d] = vec4(0.0);
    }
    var m = NEG;
    var l = 0.0;
    for (var jj = 0u; jj < n_keys; jj++) {
        let j = base + jj;
        var s = 0.0;
        for (var d = 0u; d < hs4; d++) { s += dot(q[d], textureLoad(k_cache, vec2(x0 + d, j))); }
        if (bias.on) {
            let r = i32(bias.r);
            s += dbias[bias.row * MAX_DISTANCES + u32(clamp(i32(jj) - i32(bias.qpos), -r, r) + r)];
        }
        let mc = online_max(m, s);
        let m_new = mc.x;
        let corr = mc.y;
        let pj = exp(s - m_new);
        l = l * corr + pj;
        for (var d = 0u; d < hs4; d++) {
            acc[d] = acc[d] * corr + pj * textureLoad(v_cache, vec2(x0 + d, j));
        }
        m = m_new;
    }
    let orow = (t * p.NH + h) * head_size();
    for (var d = 0u; d < hs4; d++) {
        let y = acc[d] / l;
        out[orow + 4u * d] = y.x;
        out[orow + 4u * d + 1u] = y.y;
        out[orow + 4u * d + 2u] = y.z;
        out[orow + 4u * d + 3u] = y.w;
    }
}

@compute @workgroup_size(WG)
fn attention_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = gid.x;
    let t = gid.y;
    if (h >= p.NH || t >= step.rows) { return; }
    attend(h, t, slot_base(t), position(t) + 1u, NO_BIAS, qkv_stride());
}

// attention_texture for steps of several rows: a workgroup's WG invocations are WG consecutive
// queries of one head, so every lane works whatever NH is (by heads, SmolLM2's 9 left 7 of 16
// idle); they read the same key rows.
@compute @workgroup_size(WG)
fn attention_texture_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    let h = gid.y;
    if (h >= p.NH || t >= step.rows) { return; }
    attend(h, t, slot_base(t), position(t) + 1u, NO_BIAS, qkv_stride());
}

@compute @workgroup_size(WG)
fn attention_texture_biased(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let h = wg.x * WG + lid3.x;
    let t = wg.y;
    if (t >= step.rows) { return; }
    load_bias(wg.x * WG, lid3.x);
    if (h >= p.NH) { return; }
    let bias = Bias(true, lid3.x, position(t), pbias.r);
    attend(h, t, slot_base(t), position(t) + 1u, bias, qkv_stride());
}

@compute @workgroup_size(WG)
fn attention_texture_bidirectional(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = gid.x;
    let t = gid.y;
    if (h >= p.NH || t >= step.rows) { return; }
    let span = spans[t];
    attend(h, t, span.x, span.y, NO_BIAS, qkv_stride());
}

@compute @workgroup_size(WG)
fn attention_texture_bidirectional_biased(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let h = wg.x * WG + lid3.x;
    let t = wg.y;
    if (t >= step.rows) { return; }
    load_bias(wg.x * WG, lid3.x);
    if (h >= p.NH) { return; }
    let span = spans[t];
    let bias = Bias(true, lid3.x, t - span.x, pbias.r);
    attend(h, t, span.x, span.y, bias, qkv_stride());
}

@compute @workgroup_size(WG)
fn attention_texture_cross(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = gid.x;
    let t = gid.y;
    if (h >= p.NH || t >= step.rows) { return; }
    let src = spans[0];
    attend(h, t, src.x, src.y, NO_BIAS, p.NH * head_size());
}
