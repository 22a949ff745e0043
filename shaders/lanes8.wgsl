// Every lane's value in every lane, for kernels whose 8-lane workgroups share values by
// subgroup broadcasts (lanes 0 ..= 7 of their subgroup): a broadcast from a constant lane is
// one vector permute on lavapipe, where a shuffle by a run-time lane is a loop over the lanes.
// Every lane must call them.

// Lane l's v at index l.
fn lanes8(v: vec4<f32>) -> array<vec4<f32>, 8> {
    return array(
        subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u),
        subgroupBroadcast(v, 3u), subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
        subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
    );
}

// Lane l's x at index l.
fn lanes8_f32(x: f32) -> array<f32, 8> {
    return array(
        subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u), subgroupBroadcast(x, 2u),
        subgroupBroadcast(x, 3u), subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u),
        subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u),
    );
}
