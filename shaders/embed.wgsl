// Token + position embedding: x[t] = scale * wte[tokens[t]] + wpe[position(t)], wpe learned or the
// sinusoidal table (step.wgsl is prepended). Either term can be left out (`tokens`, `positions`):
// OPT models with a word_embed_proj_dim embed tokens at width E, project them, and add positions
// at width C apart.
// The token table may be split into row chunks (see gpu/tensor.rs); one dispatch per chunk,
// each writing only the rows whose token falls in its range. In the texture layout a tied table
// is held once, as the head's weight textures, and embed_texture reads it there.

struct Params { C: u32, tok0: u32, tok_rows: u32, scale: f32, tokens: u32, positions: u32, _a: u32, _b: u32 }

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;   // (T)
@group(0) @binding(3) var<storage, read> wte: array<u32>;      // (tok_rows, C): rows tok0.. of (V, C), f32, f16, q8 or nibble-format words
@group(0) @binding(4) var<storage, read> wpe: array<f32>;      // (n_ctx, C)
@group(0) @binding(5) var<storage, read_write> x: array<f32>;  // (T, C)

// The token table is stored like the head's weights (it is the head when tied), in the
// pipeline's WEIGHT_FORMAT (format.wgsl; each chunk starts a q8 row group).

// Element c of row r.
fn wte_at(r: u32, c: u32) -> f32 {
    if (WEIGHT_FORMAT == FORMAT_Q8) {
        let q = i8_at(wte[r * q8_row_words(p.C) + c / 4u], c % 4u);
        return q * bitcast<f32>(wte[q8_scale_word(r, c / Q8_BLOCK, p.C)]);
    }
    if (is_nibbles()) {
        let rw = r * qn_row_words(p.C);
        let b = c / Q4_BLOCK;
        let i = c % Q4_BLOCK;
        let hw = rw + qn_high_word(b, p.C);
        let v = qn_at(wte[rw + c / 8u], vec2(wte[hw], wte[hw + select(0u, 1u, WEIGHT_FORMAT == FORMAT_Q6)]), i);
        let s = qn_scale_word(r, b, p.C);
        let pair = qn_pair(wte[s], wte[s + qn_second()]);
        let sm = qn_sm(pair.x, pair.y, i / 8u);
        return v * sm.x + sm.y;
    }
    let i = r * p.C + c;
    if (WEIGHT_FORMAT == FORMAT_F16) {
        return f16_at(wte[i / 2u], i % 2u);
    }
    return bitcast<f32>(wte[i]);
}

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.C || t >= step.rows) { return; }
    var v = 0.0;
    if (p.tokens != 0u) {
        let tok = tokens[t];
        if (tok < p.tok0 || tok >= p.tok0 + p.tok_rows) { return; }
        v = p.scale * wte_at(tok - p.tok0, c);
    }
    if (p.positions != 0u) { v += wpe[position(t) * p.C + c]; }
    x[t * p.C + c] = v;
}

// A tied token table held only as the head's weight textures (texture layout: weight row r is
// texture column r, in the texels of matmul_texture.wgsl's layout): one dispatch per texture.
@group(0) @binding(7) var wte_tex: texture_storage_2d<rgba32uint, read>;  // (tok_rows, texels per row)

// Element c of row r of wte_tex: the texel holding it, then its word, as wte_at reads words.
fn wte_texel_at(r: u32, c: u32) -> f32 {
    if (WEIGHT_FORMAT == FORMAT_Q8) {
        let q = i8_at(textureLoad(wte_tex, vec2(r, c / 16u))[c % 16u / 4u], c % 4u);
        let b = c / Q8_BLOCK;
        let s = textureLoad(wte_tex, vec2(r - r % 4u + b % 4u, q8_scale_texel(b, p.C)));
        return q * bitcast<f32>(s[r % 4u]);
    }
    if (is_nibbles()) {
        let b = c / Q4_BLOCK;
        let i = c % Q4_BLOCK;
        var h = vec2(0u);
        if (qn_high_bits() == 1u) { h.x = textureLoad(wte_tex, vec2(r, p.C / 32u + b / 4u))[b % 4u]; }
        if (WEIGHT_FORMAT == FORMAT_Q6) {
            let t = textureLoad(wte_tex, vec2(r, p.C / 32u + b / 2u));
            h = select(t.xy, t.zw, b % 2u == 1u);
        }
        let v = qn_at(textureLoad(wte_tex, vec2(r, b))[i / 8u], h, i);
        let row = r - r % 4u + b % 4u;
        let t = qn_scale_texel(b, p.C);
        let first = textureLoad(wte_tex, vec2(row, t))[r % 4u];
        let pair = qn_pair(first, textureLoad(wte_tex, vec2(row, t + qn_second() / 4u))[r % 4u]);
        let sm = qn_sm(pair.x, pair.y, i / 8u);
        return v * sm.x + sm.y;
    }
    if (WEIGHT_FORMAT == FORMAT_F16) {
        return f16_at(textureLoad(wte_tex, vec2(r, c / 8u))[c % 8u / 2u], c % 2u);
    }
    return bitcast<f32>(textureLoad(wte_tex, vec2(r, c / 4u))[c % 4u]);
}

@compute @workgroup_size(64)
fn embed_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.C || t >= step.rows) { return; }
    let tok = tokens[t];
    if (tok < p.tok0 || tok >= p.tok0 + p.tok_rows) { return; }
    var v = p.scale * wte_texel_at(tok - p.tok0, c);
    if (p.positions != 0u) { v += wpe[position(t) * p.C + c]; }
    x[t * p.C + c] = v;
}

// Encoders: several sequences packed one after another in the step's rows. spans[t] = (first row
// of row t's sequence, its length), so row t sits at position t - spans[t].x; wpe may hold a
// constant row folded in (BERT's token-type embedding of type 0).
@group(0) @binding(6) var<storage, read> spans: array<vec2<u32>>;  // (T)

@compute @workgroup_size(64)
fn embed_packed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.C || t >= step.rows) { return; }
    let tok = tokens[t];
    if (tok < p.tok0 || tok >= p.tok0 + p.tok_rows) { return; }
    x[t * p.C + c] = p.scale * wte_at(tok - p.tok0, c) + wpe[(t - spans[t].x) * p.C + c];
}
