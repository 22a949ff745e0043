// gemv with the cross-lane reduction done by subgroup operations: matmul.wgsl's gemv_partial,
// then subgroupAdd within each subgroup and one workgroup-memory step across subgroups (their
// size varies by adapter: 4 to 128). Compiled after linear.wgsl and matmul.wgsl, only on
// adapters with the SUBGROUP feature; gemv is the fallback.

var<workgroup> subgroup_sums: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn gemv_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let n0 = wg.x * 4u;
    let m = wg.y;
    if (n0 >= p.N || m >= step.rows) { return; }
    let s = subgroupAdd(gemv_partial(m, n0, lane));
    if (sg_lane == 0u) { subgroup_sums[sg] = s; }
    workgroupBarrier();
    if (lane == 0u) {
        var total = vec4(0.0);
        for (var i = 0u; i < n_sg; i++) { total += subgroup_sums[i]; }
        gemv_store(m, n0, total);
    }
}
