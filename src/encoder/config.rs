//! An encoder folder's settings: `config.json` (BERT hyper-parameters) and the
//! sentence-transformers files around it (`modules.json`, the pooling module's `config.json`,
//! `sentence_bert_config.json`).

use std::path::Path;

use serde::Deserialize;

use crate::gpu::kernels::{Epilogue, PoolMode};
use crate::{Error, Result};

/// Encoder families wgpt can run (listed in the error for any other `model_type`).
pub const SUPPORTED_ENCODER_TYPES: &[&str] = &["bert"];

/// BERT hyper-parameters. Letters as for the decoder: C = `hidden_size`, NH = `num_heads`,
/// HS = C / NH, L = `num_layers`, V = `vocab_size`.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// V: rows of the word embedding.
    pub vocab_size: usize,
    /// C: hidden (residual stream) width.
    pub hidden_size: usize,
    /// L: number of transformer blocks.
    pub num_layers: usize,
    /// NH: attention heads per block.
    pub num_heads: usize,
    /// Width of the MLP hidden layer.
    pub intermediate_size: usize,
    /// Rows of the position embedding: the longest sequence the model can read.
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding (type 0 is the only one single sentences use).
    pub type_vocab_size: usize,
    /// Epsilon added to the variance in every layer norm (`layer_norm_eps`, 1e-12 by default).
    pub layer_norm_eps: f32,
    /// The MLP's activation as a linear-layer epilogue: `gelu` is the erf form
    /// ([`Epilogue::GeluErf`]); `gelu_new` / `gelu_pytorch_tanh` the tanh form ([`Epilogue::Gelu`]).
    pub activation: Epilogue,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
}

impl EncoderConfig {
    /// all-MiniLM-L6-v2's shape (6 layers, C = 384, 12 heads): the figures in the README.
    pub fn minilm_l6() -> Self {
        EncoderConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_layers: 6,
            num_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            activation: Epilogue::GeluErf,
        }
    }

    /// HS = C / NH.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = crate::error::parse_json(text, path)?;
        let bad = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let model_type = raw.model_type.ok_or_else(|| {
            bad("no \"model_type\" field; is this a Hugging Face config.json?".into())
        })?;
        if !SUPPORTED_ENCODER_TYPES.contains(&model_type.as_str()) {
            let hint = if crate::config::SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
                " (a decoder: use `wgpt generate` for it)"
            } else {
                ""
            };
            return Err(Error::UnsupportedModel {
                path: path.to_path_buf(),
                found: format!("{model_type}{hint}"),
                supported: format!("{} for embeddings", SUPPORTED_ENCODER_TYPES.join(", ")),
            });
        }
        let need = |v: Option<usize>, name: &str| crate::config::size_field(v, name).map_err(&bad);
        let cfg = EncoderConfig {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size: need(raw.hidden_size, "hidden_size")?,
            num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads: need(raw.num_attention_heads, "num_attention_heads")?,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            type_vocab_size: need(Some(raw.type_vocab_size.unwrap_or(2)), "type_vocab_size")?,
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-12) as f32,
            activation: match raw.hidden_act.as_deref().unwrap_or("gelu") {
                "gelu" => Epilogue::GeluErf,
                "gelu_new" | "gelu_pytorch_tanh" => Epilogue::Gelu,
                other => {
                    return Err(bad(format!(
                        "hidden_act {other:?} is not supported; wgpt computes gelu (erf) and gelu_new (tanh)"
                    )));
                }
            },
        };
        if let Some(kind) = raw.position_embedding_type.as_deref() {
            if kind != "absolute" {
                return Err(bad(format!(
                    "position_embedding_type {kind:?} is not supported; wgpt reads absolute position embeddings"
                )));
            }
        }
        let (c, nh) = (cfg.hidden_size, cfg.num_heads);
        if c % nh != 0 {
            return Err(bad(format!(
                "hidden_size = {c} is not divisible by num_attention_heads = {nh}"
            )));
        }
        if !c.is_multiple_of(4) || !cfg.intermediate_size.is_multiple_of(4) {
            return Err(bad(format!(
                "hidden_size = {c} and intermediate_size = {} must be multiples of 4 for wgpt's kernels",
                cfg.intermediate_size
            )));
        }
        if cfg.head_size() > crate::config::MAX_HEAD_SIZE {
            return Err(bad(format!(
                "head size {} is above the {} wgpt supports",
                cfg.head_size(),
                crate::config::MAX_HEAD_SIZE
            )));
        }
        let largest = cfg.vocab_size.max(cfg.max_position_embeddings) as u64
            * cfg.intermediate_size.max(3 * c) as u64;
        if largest > u32::MAX as u64 {
            return Err(bad("a weight matrix has more than 2^32 elements".into()));
        }
        Ok(cfg)
    }
}

/// How sentence-transformers turns the encoder's hidden states into one vector per text, read
/// from the folder's `modules.json` and the files it points at.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceConfig {
    /// The pooling module's mode (mean for all-MiniLM-L6-v2).
    pub pooling: PoolMode,
    /// Whether modules.json lists a `Normalize` module (L2 normalisation after pooling).
    pub normalize: bool,
    /// Longest input in tokens, special tokens included: `max_seq_length` from
    /// `sentence_bert_config.json` (256 for all-MiniLM-L6-v2), at most
    /// `max_position_embeddings`. Longer texts are truncated, as sentence-transformers does.
    pub max_seq_length: usize,
    /// `do_lower_case` from `sentence_bert_config.json`: texts are lowercased before tokenizing.
    pub lowercase: bool,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    crate::error::parse_json(&text, path)
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of `dir`. A folder without `modules.json` (a plain
    /// transformers BERT) gets what sentence-transformers gives one: mean pooling, no
    /// normalisation, `max_position_embeddings` tokens.
    pub fn from_dir(dir: &Path, cfg: &EncoderConfig) -> Result<Self> {
        let mut sc = SentenceConfig {
            pooling: PoolMode::Mean,
            normalize: false,
            max_seq_length: cfg.max_position_embeddings,
            lowercase: false,
        };
        let modules_path = dir.join("modules.json");
        if modules_path.exists() {
            let modules: Vec<Module> = read_json(&modules_path)?;
            for m in &modules {
                let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
                match kind {
                    "Transformer" => {}
                    "Pooling" => sc.pooling = pooling_mode(&dir.join(&m.path).join("config.json"))?,
                    "Normalize" => sc.normalize = true,
                    other => {
                        return Err(Error::Config {
                            path: modules_path.clone(),
                            msg: format!(
                                "module {other:?} ({}) is not supported; wgpt runs Transformer, Pooling and Normalize",
                                m.path
                            ),
                        });
                    }
                }
            }
        }
        let sbert = dir.join("sentence_bert_config.json");
        if sbert.exists() {
            let f: SentenceBertFile = read_json(&sbert)?;
            if let Some(n) = f.max_seq_length {
                sc.max_seq_length = n;
            }
            sc.lowercase = f.do_lower_case;
        }
        if sc.max_seq_length == 0 {
            return Err(Error::Config {
                path: sbert,
                msg: "max_seq_length is 0".into(),
            });
        }
        sc.max_seq_length = sc.max_seq_length.min(cfg.max_position_embeddings);
        Ok(sc)
    }
}

/// The one pooling mode a sentence-transformers `Pooling` config turns on.
fn pooling_mode(path: &Path) -> Result<PoolMode> {
    let f: PoolingFile = read_json(path)?;
    let bad = |msg: &str| Error::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    };
    if f.pooling_mode_mean_sqrt_len_tokens
        || f.pooling_mode_weightedmean_tokens
        || f.pooling_mode_lasttoken
    {
        return Err(bad(
            "only mean, max and cls pooling are supported (mean_sqrt_len, weightedmean and lasttoken are not)",
        ));
    }
    match (
        f.pooling_mode_mean_tokens,
        f.pooling_mode_max_tokens,
        f.pooling_mode_cls_token,
    ) {
        (true, false, false) => Ok(PoolMode::Mean),
        (false, true, false) => Ok(PoolMode::Max),
        (false, false, true) => Ok(PoolMode::Cls),
        (false, false, false) => Err(bad("no pooling mode is turned on")),
        _ => Err(bad(
            "several pooling modes are on (sentence-transformers concatenates them); wgpt supports one",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<EncoderConfig> {
        EncoderConfig::from_json(json, Path::new("config.json"))
    }

    #[test]
    fn reads_minilm_and_rejects_decoders() {
        let cfg = parse(
            r#"{"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 384,
            "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
            "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6,
            "position_embedding_type": "absolute", "type_vocab_size": 2, "vocab_size": 30522}"#,
        )
        .unwrap();
        assert_eq!(cfg, EncoderConfig::minilm_l6());
        let err = parse(r#"{"model_type": "gpt2"}"#).unwrap_err().to_string();
        assert!(
            err.contains("wgpt generate") && err.contains("bert"),
            "{err}"
        );
        let base = r#""model_type": "bert", "hidden_size": 60, "num_attention_heads": 5, "num_hidden_layers": 1, "intermediate_size": 100, "max_position_embeddings": 8, "vocab_size": 10"#;
        let err = |extra: &str| {
            parse(&format!("{{{base}{extra}}}"))
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#", "hidden_act": "relu""#).contains("relu"));
        assert!(err(r#", "position_embedding_type": "relative_key""#).contains("relative_key"));
        let odd = base.replace("\"num_attention_heads\": 5", "\"num_attention_heads\": 7");
        assert!(
            parse(&format!("{{{odd}}}"))
                .unwrap_err()
                .to_string()
                .contains("divisible")
        );
        assert_eq!(
            parse(&format!("{{{base}, \"hidden_act\": \"gelu_new\"}}"))
                .unwrap()
                .activation,
            Epilogue::Gelu
        );
    }
}
