// The sinusoidal position table (XGLM's, from tensor2tensor): row r is position r + offset;
// column i < C/2 holds sin(pos f_i), column C/2 + i cos(pos f_i). Run once at load.
// f32 sin() of arguments in the thousands loses ~1e-4 to the argument's rounding alone, so the
// angle is kept exact and reduced by hand: f_i arrives as hi + lo with hi on 12 significant
// bits (pos * hi is exact for pos < 4096), the reduction by pi/2 is Cody-Waite with three parts
// whose products with the quadrant count are exact, and sin / cos on [-pi/4, pi/4] are
// minimax polynomials (Cephes' sinf / cosf). Within 3e-7 of the f64 formula.

struct Params { C: u32, rows: u32, offset: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> freq: array<vec2<f32>>;   // (C/2): f_i = hi + lo
@group(0) @binding(2) var<storage, read_write> table: array<f32>;  // (rows, C)

const PIO2_1: f32 = 1.5703125;
const PIO2_2: f32 = 4.837512969970703e-4;
const PIO2_3: f32 = 7.549790126404332e-8;
const TWO_OVER_PI: f32 = 0.6366197723675814;

fn sin_poly(x: f32) -> f32 {
    let z = x * x;
    return x + x * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
}

fn cos_poly(x: f32) -> f32 {
    let z = x * x;
    return 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
}

@compute @workgroup_size(64)
fn sinusoid(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.C / 2u;
    let i = gid.x;
    let row = gid.y;
    if (i >= half || row >= p.rows) { return; }
    let pos = f32(row + p.offset);
    let f = freq[i];
    let hi = pos * f.x;  // exact
    let lo = pos * f.y;  // up to ~0.5 rad at position 2048: it counts for the quadrant
    let k = round((hi + lo) * TWO_OVER_PI);
    let r = (((hi - k * PIO2_1) - k * PIO2_2) + lo) - k * PIO2_3;
    let s = sin_poly(r);
    let c = cos_poly(r);
    // sin and cos of r + k pi/2.
    var sv: f32;
    var cv: f32;
    switch (i32(k) & 3) {
        case 0: { sv = s; cv = c; }
        case 1: { sv = c; cv = -s; }
        case 2: { sv = -s; cv = -c; }
        default: { sv = -c; cv = s; }
    }
    table[row * p.C + i] = sv;
    table[row * p.C + half + i] = cv;
}
