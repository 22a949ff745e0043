//! The library's one error type. Every message names the thing that is wrong and what to do about it.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in wgpt. User data (files, prompts, options) never panics: it lands here.
///
/// Messages speak of the library's own API (fields, types, methods); a front end that takes
/// flags maps them (the `wgpt` binary names its flags, see `src/bin/wgpt.rs`). Match on the
/// variants rather than on the text: new variants may be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model-folder file (`config.json`, a weights shard, the shard index) cannot be read or
    /// mapped, or the folder has no weights file at all.
    #[error("{path}: {source}. Check the path: it must name a Hugging Face model folder")]
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

    /// `config.json` names a `model_type` other than the supported families.
    #[error(
        "{path}: unsupported model_type {found:?}; wgpt supports: {supported}. \
         Use a model folder of a supported family"
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

    /// A GGUF file is malformed, truncated or holds what wgpt does not read.
    #[error("{path}: {msg}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        msg: String,
    },

    /// A chat template does not parse, or fails while rendering (its own `raise_exception`
    /// included).
    #[error("{path}: chat template: {msg}")]
    ChatTemplate {
        /// tokenizer_config.json or chat_template.jinja.
        path: PathBuf,
        /// The reason, with the template's line.
        msg: String,
    },

    /// The `tokenizers` crate failed to encode text or decode ids.
    #[error("tokenizer: {0}")]
    Encode(String),

    /// A caller-supplied argument is invalid in a way no other variant names (bad batch
    /// options, a session context out of range, an encoder folder given to a decoder loader, ...).
    #[error("{0}")]
    Input(String),

    /// An option is out of its range: `option` names the field (`"Sampling::temperature"`,
    /// `"GenerateOptions::max_tokens"`, `"LoadOptions::dtype"`, `"bench::Options::repeat"`, ...).
    #[error("{option} = {value} is invalid: {expected}")]
    InvalidOption {
        /// The field, as `Type::field`.
        option: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: String,
    },

    /// The prompt has no tokens.
    #[error("the prompt is empty: a step needs at least one token")]
    EmptyPrompt,

    /// The prompt plus the tokens to generate do not fit the context, checked before any work.
    #[error(
        "the prompt ({prompt_tokens} tokens) plus max_tokens = {max_tokens} needs {needed} \
         positions, the context holds {n_ctx}; lower max_tokens to at most {max_fit}, shorten the \
         prompt, or set GenerateOptions::context_shift",
        needed = prompt_tokens + max_tokens.saturating_sub(1),
        max_fit = (n_ctx + 1).saturating_sub(*prompt_tokens)
    )]
    PromptTooLong {
        /// Tokens in the prompt (with those already in the session's cache).
        prompt_tokens: usize,
        /// Tokens asked for.
        max_tokens: usize,
        /// Positions the session's KV cache holds.
        n_ctx: usize,
    },

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (vocab_size = {vocab_size})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// V.
        vocab_size: usize,
    },

    /// A session method was called in the wrong state: `Session::wait` with no step in flight,
    /// or a new step (or a fork) while one is still in flight.
    #[error("{0}")]
    SessionState(&'static str),

    /// The weight dtype asked for cannot store this model's matrices (q8 needs widths that are
    /// multiples of its block).
    #[error("{dtype} weights need {what}; use f16 or f32 weights (LoadOptions::dtype)")]
    DtypeUnsupported {
        /// The dtype asked for (`"q8"`).
        dtype: &'static str,
        /// What the model's shapes lack.
        what: String,
    },

    /// A Hugging Face hub id (`ORG/NAME`) is not in the local cache (nothing is downloaded).
    #[error(
        "model {id:?} is not in the Hugging Face cache (searched {searched}); download it with \
         `huggingface-cli download {id}` (or `hf download {id}`), or give the path of a model folder"
    )]
    NotInHubCache {
        /// The hub id asked for.
        id: String,
        /// The cache folders searched, `; `-separated.
        searched: String,
    },

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

    /// The adapter asked for (an index or a name substring) matches none of the enumerated
    /// adapters.
    #[error("adapter {wanted:?} matches no adapter; available: {available}")]
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
         (LoadOptions::dtype), fewer sessions at once, or another adapter"
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

/// `text` parsed as JSON into `T`; a parse error names `path`, the file it came from.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn option(option: &'static str, value: impl ToString, expected: &str) -> Self {
        Error::InvalidOption {
            option,
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    pub(crate) fn tensor(name: &str, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.to_string(),
            msg: msg.into(),
        }
    }
}
