// Sampling from rows of the logits, all on the GPU (only the chosen id and three floats come
// back): a repetition penalty over the recent tokens, temperature, then top-k, top-p and min-p
// as one threshold on the scaled logits, and an inverse-CDF draw at u (uniform in [0, 1) from the
// host's seeded generator). One workgroup per row, each with its own settings (a batched decode
// samples every sequence its own way; a session uses row 0). Every sum runs in a fixed order, so
// a seed gives the same tokens on the same adapter every time.
//   top-k: the largest t with count(s >= t) >= k (ties at the k-th value are all kept);
//   top-p: within that, the largest t whose kept mass is >= top_p of it (the smallest nucleus);
//   min-p: s >= max + ln(min_p), i.e. probability >= min_p x the top probability.
// The thresholds are found by bisection on the value range (24 halvings: finer than any gap
// between distinct f32 logits that matters for the kept set).

struct Params {
    V: u32,
    temperature: f32,
    u: f32,
    top_k: u32,        // 0 = off
    top_p: f32,        // 1 = off
    min_p: f32,        // 0 = off
    penalty: f32,      // 1 = off
    n_recent: u32,     // entries of `recent` from recent0 that are this row's window
    recent0: u32,
    sampled: u32,      // 0: the row is not sampled (a greedy row of a batch)
    _a: u32,
    _b: u32,
}

const MAX_ROWS: u32 = 64u;  // kernels::MAX_BATCH
@group(0) @binding(0) var<uniform> rows: array<Params, MAX_ROWS>;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;  // (rows, V)
// (rows, 4): token, threshold bits, log-prob bits (filtered distribution), log-prob bits (the
// model's own distribution: softmax of the penalised logits at temperature 1)
@group(0) @binding(2) var<storage, read_write> result: array<u32>;
@group(0) @binding(3) var<storage, read> recent: array<u32>;        // each row's recent token ids

const WG: u32 = 256u;
const STEPS: u32 = 24u;
var<workgroup> red: array<f32, WG>;
var<workgroup> found_lane: u32;
var<workgroup> remaining: f32;
var<workgroup> log_total: f32;

// Logit i of row r, scaled by the row's temperature. (Row r's settings are read where they are
// used, rows[r], rather than kept in a private variable: WGSL's uniformity analysis must see
// them as uniform, since they steer loops that hold barriers.)
fn scaled(r: u32, i: u32) -> f32 { return logits[r * rows[r].V + i] / rows[r].temperature; }

fn wg_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn wg_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Number of scaled logits >= t, and their softmax mass relative to exp(mx).
fn count_at_least(r: u32, lid: u32, t: f32) -> f32 {
    let p = rows[r];
    var n = 0.0;
    for (var i = lid; i < p.V; i += WG) { if (scaled(r, i) >= t) { n += 1.0; } }
    return wg_sum(lid, n);
}

fn mass_at_least(r: u32, lid: u32, t: f32, mx: f32) -> f32 {
    let p = rows[r];
    var m = 0.0;
    for (var i = lid; i < p.V; i += WG) {
        let s = scaled(r, i);
        if (s >= t) { m += exp(s - mx); }
    }
    return wg_sum(lid, m);
}

@compute @workgroup_size(WG)
fn sample(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let r = wg.x;
    let p = rows[r];
    if (p.sampled == 0u) { return; }
    let row0 = r * p.V;
    let out = r * 4u;

    // 1. Repetition penalty (CTRL / transformers): once per distinct recent token.
    if (p.penalty != 1.0) {
        for (var i = lid; i < p.n_recent; i += WG) {
            let id = recent[p.recent0 + i];
            var first = id < p.V;
            for (var j = 0u; j < i; j++) { if (recent[p.recent0 + j] == id) { first = false; } }
            if (first) {
                let l = logits[row0 + id];
                logits[row0 + id] = select(l * p.penalty, l / p.penalty, l > 0.0);
            }
        }
        storageBarrier();
        workgroupBarrier();
    }

    // 2. Range of the scaled logits.
    var hi_l = -3.4e38;
    var lo_l = 3.4e38;
    for (var i = lid; i < p.V; i += WG) {
        let s = scaled(r, i);
        hi_l = max(hi_l, s);
        lo_l = min(lo_l, s);
    }
    let mx = wg_max(lid, hi_l);
    let mn = -wg_max(lid, -lo_l);
    // The model's own normaliser (temperature 1) relative to its largest logit, mx T.
    var z1 = 0.0;
    for (var i = lid; i < p.V; i += WG) { z1 += exp(logits[row0 + i] - mx * p.temperature); }
    let log_z1 = log(wg_sum(lid, z1));

    // 3. top-k threshold.
    var t = mn;
    if (p.top_k > 0u && p.top_k < p.V) {
        var lo = mn;
        var hi = mx;
        for (var it = 0u; it < STEPS; it++) {
            let mid = 0.5 * (lo + hi);
            if (count_at_least(r, lid, mid) >= f32(p.top_k)) { lo = mid; } else { hi = mid; }
        }
        t = lo;
    }
    // 4. top-p within what top-k kept.
    if (p.top_p < 1.0) {
        let goal = p.top_p * mass_at_least(r, lid, t, mx);
        var lo = t;
        var hi = mx;
        for (var it = 0u; it < STEPS; it++) {
            let mid = 0.5 * (lo + hi);
            if (mass_at_least(r, lid, mid, mx) >= goal) { lo = mid; } else { hi = mid; }
        }
        t = lo;
    }
    // 5. min-p.
    if (p.min_p > 0.0) { t = max(t, mx + log(p.min_p)); }
    t = min(t, mx);  // the most likely token always stays

    // 6. Inverse CDF over the kept tokens; each lane sums its own contiguous span.
    let span = (p.V + WG - 1u) / WG;
    let a = min(lid * span, p.V);
    let b = min(a + span, p.V);
    var part = 0.0;
    for (var i = a; i < b; i++) {
        let s = scaled(r, i);
        if (s >= t) { part += exp(s - mx); }
    }
    red[lid] = part;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) { total += red[i]; }
        var goal = p.u * total;
        var lane = WG;
        for (var i = 0u; i < WG; i++) {
            if (red[i] > 0.0 && goal < red[i]) { lane = i; break; }
            goal -= red[i];
        }
        if (lane == WG) {
            // Rounding left the goal past the end: the last span with mass, at its end.
            for (var i = WG; i > 0u; i--) {
                if (red[i - 1u] > 0.0) { lane = i - 1u; goal = red[lane]; break; }
            }
        }
        found_lane = lane;
        remaining = goal;
        result[out + 1u] = bitcast<u32>(t);
        log_total = log(total);
    }
    workgroupBarrier();
    if (lid == found_lane) {
        var goal = remaining;
        var pick = b;
        for (var i = a; i < b; i++) {
            let s = scaled(r, i);
            if (s >= t) {
                pick = i;  // the last kept one, should rounding exhaust the goal
                let e = exp(s - mx);
                if (goal < e) { break; }
                goal -= e;
            }
        }
        result[out] = pick;
        // log-probability of the pick under the filtered distribution, and under the model's
        result[out + 2u] = bitcast<u32>(scaled(r, pick) - mx - log_total);
        result[out + 3u] = bitcast<u32>(logits[row0 + pick] - mx * p.temperature - log_z1);
    }
}
