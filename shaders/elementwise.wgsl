// What a linear layer's epilogue does, as its own dispatch: for plans with the `epilogue` fusion
// off (plan/rules.rs), which run every graph op as its own kernel. One invocation per value of
// a (rows, width) activation; rows = step.rows (step.wgsl), width from the parameters.

struct Params { width: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> inp: array<f32>;         // (rows, width)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // (rows, width)

// The activation `activate` applies (an EPILOGUE_* code of activation.wgsl).
override ACT: u32 = 0u;

// out += inp: the residual add.
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let r = gid.y;
    if (i >= p.width || r >= step.rows) { return; }
    let at = r * p.width + i;
    out[at] += inp[at];
}

// out = act(gate) * up, from inp's rows of interleaved pairs (gate i, up i) (rows, 2 width): a
// gated feed-forward's hidden layer (Llama's SwiGLU).
@compute @workgroup_size(64)
fn gate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let r = gid.y;
    if (i >= p.width || r >= step.rows) { return; }
    let at = 2u * (r * p.width + i);
    out[r * p.width + i] = activate4(ACT, vec4(inp[at])).x * inp[at + 1u];
}

// out = act(out).
@compute @workgroup_size(64)
fn activate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let r = gid.y;
    if (i >= p.width || r >= step.rows) { return; }
    let at = r * p.width + i;
    out[at] = activate4(ACT, vec4(out[at])).x;
}
