//! The library's one error type. Every message names the thing that is wrong and what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong in wgpt. User data (files, prompts, options) never panics: it lands here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model-folder file (`config.json`, a weights shard, the shard index) cannot be read or
    /// mapped, or the folder has no weights file at all.
    #[error("{path}: {source}. Check the path: --model must name a Hugging Face model folder")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// `config.json` or `model.safetensors.index.json` is not valid JSON of the expected shape.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A config or shard index parses but is unusable: a required field is missing or zero,
    /// the shapes are inconsistent, a shard name is not a plain file name, or `weight_map` is empty.
    #[error("{path}: {msg}")]
    Config {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// `config.json` names a `model_type` other than the supported families (GPT-2).
    #[error(
        "{path}: unsupported model_type {found:?}; wgpt supports: {supported}. \
         Point --model at a folder of a supported family"
    )]
    UnsupportedModel {
        /// The `config.json` read.
        path: PathBuf,
        /// Its `model_type`.
        found: String,
        /// The supported `model_type`s, comma-separated.
        supported: String,
    },

    /// A weights shard's safetensors header cannot be parsed (truncated or corrupt file).
    #[error("{path}: not a valid safetensors file ({msg}). Is it truncated? Download it again")]
    Safetensors {
        /// The shard file.
        path: PathBuf,
        /// The safetensors crate's message.
        msg: String,
    },

    /// A named weight tensor is missing, duplicated across shards, has an unsupported dtype, or
    /// its shape or byte size does not match what the config implies.
    #[error("tensor {name:?} {msg}")]
    Tensor {
        /// The tensor's name in the checkpoint, e.g. `h.0.attn.c_attn.weight`.
        name: String,
        /// What is wrong with it.
        msg: String,
    },

    /// `tokenizer.json` is missing or the `tokenizers` crate rejects it.
    #[error("{path}: cannot load tokenizer: {msg}")]
    Tokenizer {
        /// The tokenizer file, or `<memory>` for [`Tokenizer::from_bytes`](crate::Tokenizer::from_bytes).
        path: PathBuf,
        /// The reason.
        msg: String,
    },

    /// The `tokenizers` crate failed to encode text or decode ids.
    #[error("tokenizer: {0}")]
    Encode(String),

    /// A caller-supplied argument is invalid: an empty prompt, a token id `>= V`, bad sampling
    /// or batch options, a method called in the wrong state (e.g. no step in flight).
    #[error("{0}")]
    Input(String),

    /// A step would write past the model's context window: the positions already cached plus
    /// the step's tokens exceed `n_positions`.
    #[error(
        "the context is full: {needed} positions needed, the model has n_positions = {n_ctx}. \
         Use a shorter prompt or fewer new tokens"
    )]
    ContextFull {
        /// Positions the request needs (already cached plus new).
        needed: usize,
        /// The model's context length, `n_positions`.
        n_ctx: usize,
    },

    /// wgpu finds no GPU adapter on any backend.
    #[error(
        "no GPU adapter found{detail}. On Linux without a GPU install Mesa's software Vulkan driver: \
             apt-get install mesa-vulkan-drivers libvulkan1"
    )]
    NoAdapter {
        /// wgpu's reason in parentheses with a leading space, or empty.
        detail: String,
    },

    /// `--adapter` (an index or a name substring) matches none of the enumerated adapters.
    #[error(
        "--adapter {wanted:?} matches no adapter; available: {available}. Run `wgpt info` to list them"
    )]
    AdapterNotFound {
        /// The index or name fragment asked for.
        wanted: String,
        /// The adapters found, as `index: name (backend)` separated by `; `.
        available: String,
    },

    /// The adapter refuses to create a device (`request_device` failed).
    #[error("cannot open the GPU device: {0}")]
    Device(String),

    /// The device's limits are below what wgpt needs, or a buffer the model needs (a weight
    /// row, one layer's KV cache, a row of logits, a batch's scratch) exceeds the largest
    /// binding or texture it allows.
    #[error("the adapter is too small for this model: {0}")]
    Limits(String),

    /// wgpu reported an error at run time: a validation error (a buffer beyond the adapter's
    /// `max_buffer_size`, say), a failed poll, or a buffer that could not be mapped for upload
    /// or readback.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// The GPU ran out of memory allocating weights, a KV cache or scratch buffers.
    #[error(
        "out of GPU memory: {0}. Try a smaller context (Session::with_context), f16 or q8 weights \
         (--dtype f16|q8), fewer sessions at once, or another adapter (--adapter)"
    )]
    OutOfMemory(String),

    /// The device was lost (driver reset, GPU removed, or `Device::destroy`): nothing on it can
    /// run again. Drop the [`Engine`](crate::Engine) and everything made on it, and open a new one.
    #[error(
        "the GPU device was lost ({0}); drop this Engine and every model and session on it, \
         then open a new one"
    )]
    DeviceLost(String),
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
