// Multi-head self-attention, flash style: keys are visited in blocks of 64 with an online
// softmax (running max m, running sum l, rescaled accumulator), so no T x T score matrix exists.
// One workgroup per (head, query). Each invocation scores one key of a block and owns up to 4
// output dims (head size <= 256). step.wgsl and rotary.wgsl are prepended: with ROPE, the
// causal entry rotates its query as it loads it (its keys were rotated into the cache). Two entry points:
//   attention:               causal (decoders): query t sits at position(t) and sees keys
//                            0 ..= position(t) of its sequence's slot of the KV cache.
//   attention_bidirectional: encoders: sequences packed in the step's rows; query t sees every key
//                            of its own sequence, rows spans[t].x .. spans[t].x + spans[t].y, and
//                            none of the others (the key padding mask, as row ranges).
// and their T5 forms, attention_biased and attention_bidirectional_biased, which add a relative
// position bias to each score (T5 scales nothing: p.scale = 1); and T5's cross-attention,
//   attention_cross:         query t (alone in its row of `qkv`, NH HS wide) sees every key of
//                            the source, cache rows spans[0].x .. spans[0].x + spans[0].y.

// Grouped-query attention: query head h reads key/value head h / (NH / NKV).

struct Params { NH: u32, NKV: u32, HS: u32, scale: f32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;        // (T, (NH + 2 NKV) HS)
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;    // (n_ctx, NKV HS)
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;    // (n_ctx, NKV HS)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (T, NH HS)
@group(0) @binding(7) var<storage, read> spans: array<vec2<u32>>;  // (T) bidirectional, (1) cross
@group(0) @binding(6) var<uniform> inv_freq: array<vec4<f32>, 32>;  // (HS / 2) with ROPE

// The head size, fixed when the pipeline is built for one model (0: read p.HS at run time); a
// constant bound lets the driver unroll the loops over the head.
override HS: u32 = 0u;

const BLOCK: u32 = 64u;
const DIMS_PER_INVOCATION: u32 = 4u;

var<workgroup> q: array<f32, 256>;     // (HS) this head's query, pre-scaled by 1/sqrt(HS)
var<workgroup> probs: array<f32, BLOCK>;

// T5's relative position bias, filled by the host (t5::attention_bias): the bucket of each
// key-query distance d clamped to [-R, R] at data[d + R], then the learned (buckets, NH) table
// from data[w0]. Bound only by the _biased entry points; each workgroup copies its head's bias
// by distance into `dbias` first, so the shared attend() reads workgroup memory, not the binding.
struct PositionBias { r: u32, nh: u32, w0: u32, _a: u32, data: array<vec4<f32>, 4095> }
@group(0) @binding(8) var<uniform> pbias: PositionBias;
const MAX_DISTANCES: u32 = 259u;  // 2R + 1 for R <= 129 (max_distance 128, every T5's)
var<workgroup> dbias: array<f32, MAX_DISTANCES>;

// Which bias attend() adds: none, or dbias by the distance from query position qpos.
struct Bias { on: bool, qpos: u32, r: u32 }
const NO_BIAS = Bias(false, 0u, 0u);

fn bias_entry(i: u32) -> f32 { return pbias.data[i / 4u][i % 4u]; }

// Copies head h's bias by distance into dbias (workgroup-uniform arguments).
fn load_bias(h: u32, lid: u32) {
    let n = 2u * pbias.r + 1u;
    for (var i = lid; i < n; i += BLOCK) {
        let bucket = u32(bias_entry(i));
        dbias[i] = bias_entry(pbias.w0 + bucket * pbias.nh + h);
    }
    workgroupBarrier();
}

fn head_size() -> u32 { return select(p.HS, HS, HS != 0u); }

// Floats per row of `qkv`: queries, keys and values side by side.
fn qkv_stride() -> u32 { return (p.NH + 2u * p.NKV) * head_size(); }

// Query t of head h (its row `q_stride` floats from the last) over cache rows
// base .. base + n_keys (workgroup-uniform arguments).
fn attend(h: u32, t: u32, lid: u32, base: u32, n_keys: u32, bias: Bias, q_stride: u32) {
    let HS = head_size();
    let hoff = h * HS;
    let kv_w = p.NKV * HS;
    let koff = h / (p.NH / p.NKV) * HS;

    let qrow = t * q_stride + hoff;
    for (var d = lid; d < HS; d += BLOCK) {
        var x = qkv[qrow + d];
        if (ROPE) { x = rotated(qrow, d, HS, position(t)); }
        q[d] = x * p.scale;
    }
    workgroupBarrier();

    var m = NEG;
    var l = 0.0;
    var acc = array<f32, DIMS_PER_INVOCATION>(0.0, 0.0, 0.0, 0.0);
    for (var j0 = 0u; j0 < n_keys; j0 += BLOCK) {
        let j = j0 + lid;
        var s = NEG;
        if (j < n_keys) {
            s = 0.0;
            let krow = (base + j) * kv_w + koff;
            for (var d = 0u; d < HS; d++) { s += q[d] * k_cache[krow + d]; }
            if (bias.on) {
                let r = i32(bias.r);
                s += dbias[u32(clamp(i32(j) - i32(bias.qpos), -r, r) + r)];
            }
        }
        probs[lid] = s;
        workgroupBarrier();
        let nb = min(BLOCK, n_keys - j0);
        var block_max = NEG;
        for (var i = 0u; i < nb; i++) { block_max = max(block_max, probs[i]); }
        let mc = online_max(m, block_max);
        let m_new = mc.x;
        let corr = mc.y;
        workgroupBarrier();
        probs[lid] = exp(s - m_new);
        workgroupBarrier();
        l *= corr;
        for (var di = 0u; di < DIMS_PER_INVOCATION; di++) { acc[di] *= corr; }
        for (var i = 0u; i < nb; i++) {
            let pr = probs[i];
            l += pr;
            let vrow = (base + j0 + i) * kv_w + koff;
            for (var di = 0u; di < DIMS_PER_INVOCATION; di++) {
                let d = lid + di * BLOCK;
                if (d < HS) { acc[di] += pr * v_cache[vrow + d]; }
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var di = 0u; di < DIMS_PER_INVOCATION; di++) {
        let d = lid + di * BLOCK;
        if (d < HS) { out[t * p.NH * HS + hoff + d] = acc[di] / l; }
    }
}

@compute @workgroup_size(BLOCK)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let t = wg.y;
    if (t >= step.rows) { return; }
    attend(wg.x, t, lid3.x, slot_base(t), position(t) + 1u, NO_BIAS, qkv_stride());
}

@compute @workgroup_size(BLOCK)
fn attention_biased(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let t = wg.y;
    if (t >= step.rows) { return; }
    load_bias(wg.x, lid3.x);
    let bias = Bias(true, position(t), pbias.r);
    attend(wg.x, t, lid3.x, slot_base(t), position(t) + 1u, bias, qkv_stride());
}

@compute @workgroup_size(BLOCK)
fn attention_bidirectional(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let t = wg.y;
    if (t >= step.rows) { return; }
    let span = spans[t];
    attend(wg.x, t, lid3.x, span.x, span.y, NO_BIAS, qkv_stride());
}

@compute @workgroup_size(BLOCK)
fn attention_bidirectional_biased(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let t = wg.y;
    if (t >= step.rows) { return; }
    load_bias(wg.x, lid3.x);
    let span = spans[t];
    let bias = Bias(true, t - span.x, pbias.r);
    attend(wg.x, t, lid3.x, span.x, span.y, bias, qkv_stride());
}

@compute @workgroup_size(BLOCK)
fn attention_cross(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let t = wg.y;
    if (t >= step.rows) { return; }
    let src = spans[0];
    attend(wg.x, t, lid3.x, src.x, src.y, NO_BIAS, p.NH * head_size());
}
