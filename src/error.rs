//! The library's one error type. Every message names the thing that is wrong and what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong in wgpt. User data (files, prompts, options) never panics: it lands here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}. Check the path: --model must name a Hugging Face model folder")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error(
        "{path}: unsupported model_type {found:?}; wgpt supports: {supported}. \
         Point --model at a folder of a supported family"
    )]
    UnsupportedModel {
        path: PathBuf,
        found: String,
        supported: String,
    },

    #[error("{path}: not a valid safetensors file ({msg}). Is it truncated? Download it again")]
    Safetensors { path: PathBuf, msg: String },

    #[error("tensor {name:?} {msg}")]
    Tensor { name: String, msg: String },

    #[error("{path}: cannot load tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("tokenizer: {0}")]
    Encode(String),

    #[error("{0}")]
    Input(String),

    #[error(
        "the context is full: {needed} positions needed, the model has n_positions = {n_ctx}. \
         Use a shorter prompt or fewer new tokens"
    )]
    ContextFull { needed: usize, n_ctx: usize },

    #[error(
        "no GPU adapter found{detail}. On Linux without a GPU install Mesa's software Vulkan driver: \
             apt-get install mesa-vulkan-drivers libvulkan1"
    )]
    NoAdapter { detail: String },

    #[error(
        "--adapter {wanted:?} matches no adapter; available: {available}. Run `wgpt info` to list them"
    )]
    AdapterNotFound { wanted: String, available: String },

    #[error("cannot open the GPU device: {0}")]
    Device(String),

    #[error("the adapter is too small for this model: {0}")]
    Limits(String),

    #[error("GPU error: {0}")]
    Gpu(String),
}

/// `Result` with wgpt's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tensor(name: &str, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.to_string(),
            msg: msg.into(),
        }
    }
}
