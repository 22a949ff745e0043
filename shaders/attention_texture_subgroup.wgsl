// attention_texture for multi-row steps of one sequence (a prefill), where the adapter has
// subgroups of at least 8 lanes (attention_texture.wgsl, its bindings and HS, is prepended).
// A workgroup takes a tile of 8 consecutive queries of one head and walks the keys in blocks of
// 8: lane l scores key j0 + l against each of the tile's queries (broadcast from the lane that
// loaded it), so every key texel a lane fetches serves all 8 queries, where
// attention_texture_rows' lanes (one query each) all fetch the same key texel; then, per query,
// the block's softmax is one vector exp and two subgroup reductions, and each lane adds the
// block's values, weighted by the broadcast probabilities, into its texels of the 8 queries'
// outputs (lane l: texels l and l + 8 of the head; HS 32 or 64: the fully unrolled loops of
// HS 128 took lavapipe ~25 s to compile). Keys past a query's position score NEG: probability 0.
//   attention_texture_tile: causal, rows 0 .. step.rows at positions pos0 + t of slot step.slot.

const TILE: u32 = 8u;
const MAX_TILE_HT: u32 = 2u;   // HS / 32 texels per lane
const MAX_TILE_HS4: u32 = 16u;  // HS / 4 texels per head

// The tile's running softmax: per query, its max, its sum, and this lane's texels of its output.
struct TileState {
    m: array<f32, TILE>,
    l: array<f32, TILE>,
    acc: array<array<vec4<f32>, MAX_TILE_HT>, TILE>,
}

// A block of keys: this lane's key j, and the tile's first row and last row.
struct Block { j: u32, t0: u32, last: u32 }

// Query r of the tile against the block's keys (this lane's k) and values (vb).
fn tile_query(
    r: u32,
    b: Block,
    qa: ptr<function, array<array<vec4<f32>, MAX_TILE_HS4>, TILE>>,
    k: ptr<function, array<vec4<f32>, MAX_TILE_HS4>>,
    vb: ptr<function, array<array<vec4<f32>, MAX_TILE_HT>, 8>>,
    st: ptr<function, TileState>,
) {
    var s = 0.0;
    for (var d = 0u; d < HS / 4u; d++) { s += dot((*qa)[r][d], (*k)[d]); }
    s = select(NEG, s, b.j <= position(min(b.t0 + r, b.last)));
    let mc = online_max((*st).m[r], subgroupMax(s));
    let pj = exp(s - mc.x);
    (*st).l[r] = (*st).l[r] * mc.y + subgroupAdd(pj);
    (*st).m[r] = mc.x;
    // Query r's output texels, rescaled, plus the block's values.
    let pb = lanes8_f32(pj);
    for (var i = 0u; i < HS / 32u; i++) {
        var a = (*st).acc[r][i] * mc.y;
        for (var jj = 0u; jj < 8u; jj++) { a += pb[jj] * (*vb)[jj][i]; }
        (*st).acc[r][i] = a;
    }
}

@compute @workgroup_size(8)
fn attention_texture_tile(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let lane = sg_lane % 8u;
    let t0 = wg.x * TILE;
    let h = wg.y;
    let hs4 = HS / 4u;
    let ht = HS / 32u;
    let xh = h / (p.NH / p.NKV) * hs4;  // its key head's first texel in a cache row
    let base = slot_base(0u);
    // Lane l loads query t0 + l (scaled; rows past the step repeat the last one).
    let tq = min(t0 + lane, step.rows - 1u);
    let qrow = tq * qkv_stride() + h * HS;
    var q: array<vec4<f32>, MAX_TILE_HS4>;
    for (var d = 0u; d < hs4; d++) { q[d] = query_texel(qrow, d, position(tq)) * p.scale; }
    // Every lane holds the whole tile's queries: qa[r] is query t0 + r, from lane r. Every
    // array index here is a constant once the driver unrolls the loops: an index it cannot
    // resolve becomes a ladder over the whole array (on lavapipe, slow to compile and to run).
    var qa: array<array<vec4<f32>, MAX_TILE_HS4>, TILE>;
    for (var d = 0u; d < hs4; d++) {
        let b = lanes8(q[d]);
        qa[0][d] = b[0];
        qa[1][d] = b[1];
        qa[2][d] = b[2];
        qa[3][d] = b[3];
        qa[4][d] = b[4];
        qa[5][d] = b[5];
        qa[6][d] = b[6];
        qa[7][d] = b[7];
    }
    // Per query of the tile (every lane holds all 8): running max, sum, and this lane's texels
    // of its output.
    var state: TileState;
    state.m = array(NEG, NEG, NEG, NEG, NEG, NEG, NEG, NEG);
    // Keys 0 ..= the last query's position; the first block holds key 0, which every query
    // sees, so every running max is finite after it.
    let last = min(t0 + TILE, step.rows) - 1u;
    let n = position(last) + 1u;
    for (var j0 = 0u; j0 < n; j0 += 8u) {
        let j = j0 + lane;
        let row = base + min(j, n - 1u);
        var k: array<vec4<f32>, MAX_TILE_HS4>;
        for (var d = 0u; d < hs4; d++) { k[d] = textureLoad(k_cache, vec2(xh + d, row)); }
        // This lane's texels of the block's 8 values.
        var vb: array<array<vec4<f32>, MAX_TILE_HT>, 8>;
        for (var jj = 0u; jj < 8u; jj++) {
            let vrow = base + min(j0 + jj, n - 1u);
            for (var i = 0u; i < ht; i++) {
                vb[jj][i] = textureLoad(v_cache, vec2(xh + lane + 8u * i, vrow));
            }
        }
        // Query by query with constant indices (the calls inline, so the driver keeps the
        // arrays in registers; a loop over r indexed them at run time: no faster than
        // attention_texture_rows).
        let a = Block(j, t0, last);
        tile_query(0u, a, &qa, &k, &vb, &state);
        tile_query(1u, a, &qa, &k, &vb, &state);
        tile_query(2u, a, &qa, &k, &vb, &state);
        tile_query(3u, a, &qa, &k, &vb, &state);
        tile_query(4u, a, &qa, &k, &vb, &state);
        tile_query(5u, a, &qa, &k, &vb, &state);
        tile_query(6u, a, &qa, &k, &vb, &state);
        tile_query(7u, a, &qa, &k, &vb, &state);
    }
    // Queries past the step computed the last row's output again: they store the same values.
    for (var r = 0u; r < TILE; r++) {
        let t = min(t0 + r, last);
        let orow = (t * p.NH + h) * HS;
        for (var i = 0u; i < ht; i++) {
            let y = state.acc[r][i] / state.l[r];
            let o = orow + 4u * (lane + 8u * i);
            out[o] = y.x;
            out[o + 1u] = y.y;
            out[o + 2u] = y.z;
            out[o + 3u] = y.w;
        }
    }
}
