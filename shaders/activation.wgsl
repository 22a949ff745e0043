// The feed-forward activations, shared by the linear layers' fused epilogues (linear.wgsl) and
// the unfused elementwise kernels (elementwise.wgsl), which the kernel registry prepends it to.
// Codes are gpu/kernels.rs `Epilogue`'s.

const EPILOGUE_STORE: u32 = 0u;
const EPILOGUE_GELU: u32 = 1u;
const EPILOGUE_RESIDUAL: u32 = 2u;
const EPILOGUE_RELU: u32 = 3u;
const EPILOGUE_GELU_ERF: u32 = 4u;
const EPILOGUE_SILU: u32 = 5u;
// A linear layer whose outputs are interleaved (gate, up) pairs, storing silu(gate) * up
// (linear.wgsl's store4).
const EPILOGUE_GATED_SILU: u32 = 6u;
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

// GELU as GPT-2 computes it (transformers' gelu_new, the tanh approximation).
fn gelu(x: f32) -> f32 {
    // tanh saturates to +-1 in f32 beyond |u| = 9; clamping keeps drivers that build tanh from
    // exp() away from inf/inf = NaN.
    let u = clamp(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x), -10.0, 10.0);
    return 0.5 * x * (1.0 + tanh(u));
}

// erf(x), Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7, below f32's resolution of erf's
// values near 1 (WGSL has no erf builtin). Odd, so computed on |x|.
fn erf(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-z * z));
}

// GELU as BERT computes it (transformers' "gelu", PyTorch's exact form): 0.5 x (1 + erf(x / sqrt 2)).
fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf(x * 0.7071067811865476));
}

// Activation `code` (an EPILOGUE_* activation; anything else is the identity) of x.
fn activate4(code: u32, x: vec4<f32>) -> vec4<f32> {
    switch code {
        case EPILOGUE_GELU: { return vec4(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w)); }
        case EPILOGUE_GELU_ERF: { return vec4(gelu_erf(x.x), gelu_erf(x.y), gelu_erf(x.z), gelu_erf(x.w)); }
        case EPILOGUE_RELU: { return max(x, vec4(0.0)); }
        // x / (1 + e^-x); exp overflows to inf for x < -88, giving the right limit 0.
        case EPILOGUE_SILU: { return x / (1.0 + exp(-x)); }
        default: { return x; }
    }
}
