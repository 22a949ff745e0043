#![warn(missing_docs)]
//! # wgpt: transformer inference on the GPU through wgpu
//!
//! The whole forward pass runs as hand-written WGSL compute kernels (`shaders/`), on Vulkan,
//! Metal, DirectX 12 or OpenGL, on any vendor's GPU. Data flow for one step of T tokens:
//!
//! ```text
//! tokens (T) ─ embed ─> x (T, C) ─┬─ for each of L blocks ─────────────────────────────┐
//!   wte + wpe                     │ x += c_proj(attention(kv_append(c_attn(ln_1(x)))))  │
//!                                 │ x += mlp_proj(gelu(c_fc(ln_2(x))))                  │
//!                                 └─────────────────────────────────────────────────────┘
//!                                   ln_f(x[last]) @ wteᵀ ─> logits (V) ─ argmax / sample ─> id
//! ```
//!
//! That is GPT-2's block; the Llama family's reads `x += o_proj(attention(rope(qkv(rms_norm(x)))));
//! x += down(silu(gate(h)) * up(h)), h = rms_norm(x)`, with fewer key heads than query heads.
//! Each model family is described once in model terms ([`families`], as a [`graph`]); one
//! planner ([`plan`]) lowers it to kernels for the adapter, with every fusion a named rule that
//! can be switched off ([`Fusions`], `WGPT_FUSE`). See `docs/ARCHITECTURE.md`.
//!
//! Weights ([`Model`]) are uploaded once; a [`Session`] owns the KV cache (in VRAM) and scratch
//! buffers, and records each step into one command encoder; only the chosen token id (4 bytes)
//! comes back in generation.
//!
//! ```
//! # fn main() -> wgpt::Result<()> {
//! let gpu = wgpt::Engine::new(None)?;
//! let dir = std::path::Path::new("assets/default");
//! let model = wgpt::Model::load(gpu, dir, &Default::default())?;
//! let tokenizer = wgpt::Tokenizer::from_dir(dir)?;
//! let mut session = wgpt::Session::new(&model)?;
//! let ids = tokenizer.encode("The borrow checker")?;
//! let opts = wgpt::GenerateOptions { max_tokens: 20, ..Default::default() };
//! let out = wgpt::generate_ids(&mut session, Some(&tokenizer), &ids, &opts, |t| print!("{}", t.piece))?;
//! println!("\n{:.1} tokens/s", out.decode_tok_s());
//! # Ok(()) }
//! ```

/// Declares internal modules: crate-private, except with the `internals` feature (the tests,
/// fuzz targets and kernel benchmarks), where they are public but hidden from the docs and not
/// a stable API.
macro_rules! internal_mods {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        #[allow(dead_code)]
        pub(crate) mod $name;
    )*};
}

pub mod bench;
pub mod chat;
pub mod config;
#[cfg(feature = "default-model")]
pub mod default_model;
pub mod encoder;
pub mod error;
pub mod families;
pub mod gguf;
pub mod gpu;
pub mod graph;
pub mod hub;
pub mod plan;
pub mod runtime;
pub mod source;
pub mod t5;
pub mod tokenizer;

// The checkpoint reader and the CPU twins; the fuzz entry points exist only for the fuzz
// targets and their corpus replay.
internal_mods!(loader, reference);
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod fuzz;

pub use chat::{ChatTemplate, Message};
pub use config::Config;
pub use encoder::{Embeddings, EncoderModel};
pub use error::{Error, Result};
pub use gpu::Engine;
pub use gpu::tensor::WeightDtype;
pub use loader::Checkpoint;
pub use plan::{Fusions, Rule};
pub use runtime::generate::{
    GenerateOptions, Generation, Generator, OwnedGenerator, StopReason, TextOutput, TokenEvent,
    generate_ids,
};
pub use runtime::sampler::Sampling;
pub use runtime::{
    Batch, BatchRow, BatchToken, LoadOptions, Model, Pick, Progress, Session, WeightLayout,
};
pub use source::{ModelSource, Opened};
pub use tokenizer::Tokenizer;
