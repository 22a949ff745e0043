//! The small default model of `assets/default` (a 4.3 M-parameter GPT-2 trained on the Rust
//! documentation; see `assets/README.md`), embedded in the binary with `include_bytes!` so that
//! `wgpt generate --prompt ...` works with no download and no model folder, wherever the binary
//! was installed. Behind the `default-model` feature (on by default; ~17.4 MB of the binary).
//!
//! ```
//! # fn main() -> wgpt::Result<()> {
//! let model = wgpt::default_model::load(wgpt::Engine::new(None)?, &Default::default())?;
//! let tokenizer = wgpt::default_model::tokenizer()?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::loader::Checkpoint;
use crate::{Config, Engine, LoadOptions, Model, Result, Tokenizer};

/// How the embedded model is named in messages (where a folder's path would be).
pub const NAME: &str = "<embedded default model>";
/// `assets/default/config.json`.
pub const CONFIG_JSON: &str = include_str!("../assets/default/config.json");
/// `assets/default/model.safetensors` (f32).
pub static WEIGHTS: &[u8] = include_bytes!("../assets/default/model.safetensors");
/// `assets/default/tokenizer.json`.
pub static TOKENIZER_JSON: &[u8] = include_bytes!("../assets/default/tokenizer.json");

/// The embedded model's hyper-parameters.
pub fn config() -> Result<Config> {
    Config::from_json(CONFIG_JSON, Path::new(NAME))
}

/// The embedded weights as a [`Checkpoint`], read in place (no copy).
pub fn checkpoint() -> Result<Checkpoint> {
    Checkpoint::from_static(NAME, WEIGHTS)
}

/// The embedded model's tokenizer.
pub fn tokenizer() -> Result<Tokenizer> {
    Tokenizer::from_bytes(TOKENIZER_JSON)
}

/// Uploads the embedded model's weights, as [`Model::load`] does a folder's.
pub fn load(gpu: Arc<Engine>, opts: &LoadOptions) -> Result<Model> {
    Model::from_checkpoint(gpu, config()?, &checkpoint()?, opts)
}
