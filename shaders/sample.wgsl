// Temperature sampling from row 0 of the logits by inverse CDF: softmax(logits / temperature),
// then the first index whose cumulative probability exceeds u * total, u uniform in [0, 1) from
// the host's seeded generator. Sums run in a fixed order, so a seed gives the same tokens on the
// same adapter every time.

struct Params { V: u32, temperature: f32, u: f32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // (rows, V), row 0 is read
@group(0) @binding(2) var<storage, read_write> token: array<u32>;  // (1)

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;
var<workgroup> found_lane: u32;
var<workgroup> remaining: f32;

@compute @workgroup_size(WG)
fn sample(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    // 1. max, for a stable softmax
    var mx = -3.4e38;
    for (var i = lid; i < p.V; i += WG) { mx = max(mx, logits[i]); }
    red[lid] = mx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    mx = red[0];
    workgroupBarrier();

    // 2. each lane sums exp over its own contiguous span, so spans are in vocabulary order
    let span = (p.V + WG - 1u) / WG;
    let lo = min(lid * span, p.V);
    let hi = min(lo + span, p.V);
    var part = 0.0;
    for (var i = lo; i < hi; i++) { part += exp((logits[i] - mx) / p.temperature); }
    red[lid] = part;
    workgroupBarrier();

    // 3. one lane walks the span sums to find the span holding the target
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) { total += red[i]; }
        var goal = p.u * total;
        var lane = WG - 1u;
        for (var i = 0u; i < WG; i++) {
            if (goal < red[i]) { lane = i; break; }
            goal -= red[i];
        }
        // rounding can leave the target past the last non-empty span: take that span's end
        if (lane == WG - 1u && red[lane] == 0.0) {
            for (var i = WG; i > 0u; i--) {
                if (red[i - 1u] > 0.0) { lane = i - 1u; goal = red[lane]; break; }
            }
        }
        found_lane = lane;
        remaining = goal;
    }
    workgroupBarrier();

    // 4. that lane walks its span
    if (lid == found_lane) {
        var goal = remaining;
        var pick = max(lo, hi - 1u);
        for (var i = lo; i < hi; i++) {
            let e = exp((logits[i] - mx) / p.temperature);
            if (goal < e) { pick = i; break; }
            goal -= e;
        }
        token[0] = pick;
    }
}
