// Greedy choice: the index of the largest logit of row 0, on the GPU so that only 4 bytes come
// back. Ties go to the lowest index, as torch.argmax does. NaN never wins.

struct Params { V: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // (rows, V), row 0 is read
@group(0) @binding(2) var<storage, read_write> token: array<u32>;  // (1)

const WG: u32 = 256u;
var<workgroup> best_val: array<f32, WG>;
var<workgroup> best_idx: array<u32, WG>;

@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.V; i += WG) {
        let v = logits[i];
        if (v > bv) { bv = v; bi = i; }  // strided ascending: first max of this lane wins
    }
    best_val[lid] = bv;
    best_idx[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = best_val[lid + s];
            let oi = best_idx[lid + s];
            if (ov > best_val[lid] || (ov == best_val[lid] && oi < best_idx[lid])) {
                best_val[lid] = ov;
                best_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) { token[0] = select(best_idx[0], 0u, best_idx[0] == 0xffffffffu); }
}
