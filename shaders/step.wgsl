// The per-step uniform of the kernels that place rows in sequences (embed, kv_append, attention;
// prepended to each by the kernel registry), and where each row of a step sits.
// A step is either T tokens of one sequence, at positions pos0 .. pos0 + T of cache slot `slot`,
// or (batch != 0) a batched decode: one token of each of B sequences, row r at position pos[r]
// of slot slots[r]. A slot is slot_rows (n_ctx) rows of the KV cache.

struct Step {
    rows: u32,
    row0: u32,
    pos0: u32,
    slot: u32,
    batch: u32,
    slot_rows: u32,
    _a: u32,
    _b: u32,
    pos: array<vec4<u32>, 16>,    // (B <= 64) batched positions
    slots: array<vec4<u32>, 16>,  // (B <= 64) batched rows' KV-cache slots
}

@group(0) @binding(0) var<uniform> step: Step;

// Row r's position in its sequence.
fn position(r: u32) -> u32 {
    if (step.batch != 0u) { return step.pos[r / 4u][r % 4u]; }
    return step.pos0 + r;
}

// The KV-cache row of row r's sequence at position 0.
fn slot_base(r: u32) -> u32 {
    if (step.batch != 0u) { return step.slots[r / 4u][r % 4u] * step.slot_rows; }
    return step.slot * step.slot_rows;
}
