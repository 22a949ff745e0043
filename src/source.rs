//! Where a decoder model comes from: a Hugging Face folder on disk, or the small default model
//! embedded in the binary (feature `default-model`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::gguf::Gguf;
use crate::loader::{self, Checkpoint};
use crate::{Config, Engine, Error, LoadOptions, Model, Result, Tokenizer};

/// A decoder model to load: a folder, or the embedded default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face folder: `config.json`, `model.safetensors` (or shards), `tokenizer.json`.
    Dir(PathBuf),
    /// A GGUF file (`*.gguf`): weights, config, tokenizer and chat template in one.
    Gguf(PathBuf),
    /// `assets/default`, embedded in the binary (see [`crate::default_model`]).
    #[cfg(feature = "default-model")]
    Embedded,
}

impl ModelSource {
    /// `dir` if given (checked to be a decoder folder), else the default model: the embedded one
    /// with the `default-model` feature, or `assets/default` in the source tree without it.
    pub fn from_arg(dir: Option<&Path>) -> Result<Self> {
        match dir {
            Some(dir) => Self::dir(dir),
            #[cfg(feature = "default-model")]
            None => Ok(ModelSource::Embedded),
            #[cfg(not(feature = "default-model"))]
            None => Self::dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default")),
        }
    }

    /// A decoder folder or GGUF file (or a hub id, `ORG/NAME`, resolved in the local Hugging Face cache:
    /// [`crate::hub`]), refused with a clear message when it is missing or holds an encoder.
    pub fn dir(dir: &Path) -> Result<Self> {
        if crate::gguf::is_gguf_path(dir) {
            return Ok(ModelSource::Gguf(dir.to_path_buf()));
        }
        let dir = &crate::hub::model_dir(dir)?;
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            ));
        }
        if crate::encoder::is_encoder_dir(dir) {
            return Err(Error::Input(format!(
                "{} holds an encoder (BERT), which makes embeddings, not text: use `wgpt embed` or `wgpt similarity`",
                dir.display()
            )));
        }
        Ok(ModelSource::Dir(dir.to_path_buf()))
    }

    /// The folder's path, or the embedded model's name.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(d) | ModelSource::Gguf(d) => d.display().to_string(),
            #[cfg(feature = "default-model")]
            ModelSource::Embedded => crate::default_model::NAME.to_string(),
        }
    }

    /// The model's `config.json`, parsed and checked.
    pub fn config(&self) -> Result<Config> {
        match self {
            ModelSource::Dir(d) => Config::from_file(&d.join(loader::CONFIG_FILE)),
            ModelSource::Gguf(f) => Gguf::open(f)?.config(),
            #[cfg(feature = "default-model")]
            ModelSource::Embedded => crate::default_model::config(),
        }
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            ModelSource::Dir(d) => Tokenizer::from_dir(d),
            ModelSource::Gguf(f) => Tokenizer::from_gguf(&Gguf::open(f)?),
            #[cfg(feature = "default-model")]
            ModelSource::Embedded => crate::default_model::tokenizer(),
        }
    }

    /// The model's chat template, if it ships one (the embedded model does not).
    pub fn chat_template(&self) -> Result<Option<crate::ChatTemplate>> {
        match self {
            ModelSource::Dir(d) => crate::ChatTemplate::from_dir(d),
            ModelSource::Gguf(f) => crate::ChatTemplate::from_gguf(&Gguf::open(f)?),
            #[cfg(feature = "default-model")]
            ModelSource::Embedded => Ok(None),
        }
    }

    /// The weights, opened (mapped or in place); a GGUF file has no safetensors checkpoint
    /// (the CPU reference reads [`crate::gguf::Gguf::dequantize`] instead).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        match self {
            ModelSource::Dir(d) => Checkpoint::open(d),
            ModelSource::Gguf(f) => Err(Error::Input(format!(
                "{} is a GGUF file, which has no safetensors checkpoint",
                f.display()
            ))),
            #[cfg(feature = "default-model")]
            ModelSource::Embedded => crate::default_model::checkpoint(),
        }
    }

    /// The weights opened (a mapped checkpoint or GGUF file, its headers checked), to upload
    /// later with [`Opened::upload`]: an app can report a bad file before it opens a window.
    pub fn open(&self) -> Result<Opened> {
        match self {
            ModelSource::Gguf(f) => Ok(Opened::Gguf(Gguf::open(f)?)),
            _ => Ok(Opened::Checkpoint(self.checkpoint()?)),
        }
    }

    /// Bytes the weights take on disk (the safetensors files, the GGUF file, or the embedded
    /// bytes).
    pub fn checkpoint_bytes(&self) -> u64 {
        match self {
            ModelSource::Dir(d) => std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum(),
            ModelSource::Gguf(f) => std::fs::metadata(f).map_or(0, |m| m.len()),
            #[cfg(feature = "default-model")]
            ModelSource::Embedded => crate::default_model::WEIGHTS.len() as u64,
        }
    }

    /// Uploads the weights (as [`Model::load`]).
    pub fn load(&self, gpu: Arc<Engine>, opts: &LoadOptions) -> Result<Model> {
        match self {
            ModelSource::Dir(d) | ModelSource::Gguf(d) => Model::load(gpu, d, opts),
            #[cfg(feature = "default-model")]
            ModelSource::Embedded => crate::default_model::load(gpu, opts),
        }
    }
}

/// A model's weights, opened but not uploaded ([`ModelSource::open`]).
pub enum Opened {
    /// A safetensors checkpoint (a folder's, or the embedded model's).
    Checkpoint(Checkpoint),
    /// A GGUF file.
    Gguf(Gguf),
}

impl Opened {
    /// Uploads the weights to `gpu`, checked against `config` (a GGUF file's own).
    pub fn upload(&self, gpu: Arc<Engine>, config: Config, opts: &LoadOptions) -> Result<Model> {
        match self {
            Opened::Checkpoint(c) => Model::from_checkpoint(gpu, config, c, opts),
            Opened::Gguf(g) => Model::from_gguf(gpu, g, opts),
        }
    }
}
