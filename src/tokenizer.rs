//! The model folder's `tokenizer.json` (Hugging Face `tokenizers`), with a streaming decoder that
//! only emits text once it decodes cleanly: a multi-byte character split across tokens is held
//! back until its last byte arrives.

use std::path::Path;
use std::sync::Arc;

use crate::{Error, Result};

/// A Hugging Face tokenizer (byte-level BPE for GPT-2) that maps text to token ids and back.
/// A cheap handle: clones share one tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// A BOS id [`encode`](Self::encode) prepends itself: tokenizer_config.json asks for one
    /// (`add_bos_token`) that the post-processor does not add.
    bos: Option<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `path`; [`Error::Tokenizer`] if it is missing or invalid.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                msg: "file not found; the model folder needs the tokenizer.json that ships with the model".into(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Self::parse(&bytes, path)
    }

    /// A GGUF file's tokenizer, from its metadata ([`crate::gguf::Gguf::tokenizer_json`]).
    pub fn from_gguf(g: &crate::gguf::Gguf) -> Result<Self> {
        Self::parse(g.tokenizer_json()?.as_bytes(), g.path())
    }

    /// Parses the contents of a `tokenizer.json` already in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes, Path::new("<memory>"))
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        // The tokenizers crate panics on some malformed files (found by fuzzing: a decoder
        // whose JSON has a non-string key hits an `expect` in tokenizers 0.22); a broken file
        // must be an error, not a crash of the application.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| {
                bad("the tokenizers crate panicked parsing it; the file is malformed".into())
            })?;
        let inner = parsed.map_err(|e| bad(e.to_string()))?;
        Ok(Tokenizer {
            inner: Arc::new(inner),
            bos: None,
        })
    }

    /// A model folder's tokenizer: `tokenizer.json`, with tokenizer_config.json's
    /// `add_bos_token` honoured as transformers does (its BOS prepended when the post-processor
    /// does not add one already).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut tok = Self::from_file(&dir.join(crate::loader::TOKENIZER_FILE))?;
        let cfg = crate::chat::TokenizerConfig::from_dir(dir)?;
        if cfg.add_bos_token == Some(true) {
            let bos = cfg.bos_token().and_then(|b| tok.token_id(&b));
            let path = dir.join(crate::chat::TOKENIZER_CONFIG_FILE);
            let bos = bos.ok_or_else(|| Error::Tokenizer {
                path,
                msg: "add_bos_token is true but bos_token is not a token of tokenizer.json".into(),
            })?;
            if tok.encode("a")?.first() != Some(&bos) {
                tok.bos = Some(bos);
            }
        }
        Ok(tok)
    }

    /// Token ids of a prompt as transformers' `tokenizer(text)` makes them: with the special
    /// tokens the tokenizer's post-processor adds (OPT's leading `</s>`; GPT-2 adds none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_ids(text, true)
    }

    /// Token ids of `text` alone, without any special tokens: for text that continues a
    /// sequence already in a session (a chat's next line).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_ids(text, false)
    }

    fn encode_ids(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Encode(e.to_string()))?;
        let bos = self.bos.filter(|_| special);
        Ok(bos
            .into_iter()
            .chain(enc.get_ids().iter().copied())
            .collect())
    }

    /// For encoders: drops the truncation and padding a `tokenizer.json` may carry (all-MiniLM-L6-v2's
    /// pads and truncates to 128), so that [`encode_with_special`](Self::encode_with_special)
    /// alone decides the length, as sentence-transformers does.
    pub fn without_truncation_or_padding(mut self) -> Result<Self> {
        let inner = Arc::make_mut(&mut self.inner);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Encode(e.to_string()))?;
        inner.with_padding(None);
        Ok(self)
    }

    /// Token ids of `text` with the special tokens the tokenizer's post-processor adds (BERT's
    /// `[CLS] ... [SEP]`), the text's own tokens cut from the right so the whole is at most
    /// `max_len` ids (transformers' `truncation=True, max_length=max_len`). Also returns the
    /// length the whole would have had uncut. See [`without_truncation_or_padding`](Self::without_truncation_or_padding).
    pub fn encode_with_special(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, usize)> {
        use tokenizers::PostProcessor;
        let err = |e: tokenizers::Error| Error::Encode(e.to_string());
        let mut enc = self.inner.encode(text, false).map_err(err)?;
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let full = enc.len() + added;
        if max_len < added {
            return Err(Error::Input(format!(
                "a limit of {max_len} tokens leaves no room for the {added} special tokens"
            )));
        }
        if full > max_len {
            enc.truncate(max_len - added, 0, tokenizers::TruncationDirection::Right);
        }
        let enc = self.inner.post_process(enc, None, true).map_err(err)?;
        Ok((enc.get_ids().to_vec(), full))
    }

    /// Text of `ids`, special tokens kept. Decoding a single id of a multi-byte character
    /// yields U+FFFD; use [`stream`](Self::stream) for incremental output.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of the exact vocabulary entry `token` (e.g. `"<|endoftext|>"`), if there is one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// A decoder that turns a stream of ids into text pieces.
    pub fn stream(&self) -> TokenStream {
        TokenStream::default()
    }
}

/// Incremental detokenizer: the state of `tokenizers`' own streaming decode
/// ([`tokenizers::step_decode_stream`], what `Tokenizer::decode_stream` runs), kept apart from
/// the tokenizer so that an owned [`crate::OwnedGenerator`] can hold both. Emits text once it
/// decodes cleanly (no trailing U+FFFD from a partial UTF-8 sequence); [`finish`](Self::finish)
/// flushes what is held back at the end.
#[derive(Clone, Debug, Default)]
pub struct TokenStream {
    /// The ids decoded for context and those not emitted yet.
    ids: Vec<u32>,
    /// The text of the context ids, cut from the next decode.
    prefix: String,
    /// Where the context ids end in `ids`.
    prefix_index: usize,
}

impl TokenStream {
    /// Adds `id`; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        tokenizers::step_decode_stream(
            &tokenizer.inner,
            vec![id],
            false,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| Error::Encode(e.to_string()))
    }

    /// Whatever is still held back (an incomplete character at the end of generation).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let now = tokenizer.decode(&self.ids)?;
        let rest = (now.len() > self.prefix.len() && now.starts_with(self.prefix.as_str()))
            .then(|| now[self.prefix.len()..].to_string());
        *self = TokenStream::default();
        Ok(rest)
    }
}
