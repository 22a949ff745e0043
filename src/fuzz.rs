//! Entry points shared by the fuzz targets (`fuzz/`, cargo-fuzz) and the corpus replay test
//! (`tests/fuzz_corpus.rs`): each feeds arbitrary bytes to a parser that reads user files and
//! exercises what it returns. None may panic, abort or hang on any input; errors are fine.

use std::path::Path;

use crate::config::Config;
use crate::encoder::config::EncoderConfig;
use crate::loader::{self, Checkpoint};
use crate::tokenizer::Tokenizer;

/// The fuzz targets, by name: the folders under `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: &[&str] = &[
    "config",
    "checkpoint",
    "index",
    "tokenizer",
    "prompt",
    "gguf",
];

/// A GGUF file: the header, metadata and tensor table, then every tensor's bytes, dequantised
/// and repacked for the GPU (small tensors: the fuzzer's inputs are), and the config and
/// tokenizer its metadata make.
pub fn gguf(data: &[u8]) {
    let Ok(g) = crate::gguf::Gguf::from_bytes(data.to_vec(), Path::new("model.gguf")) else {
        return;
    };
    let _ = g.type_histogram();
    for t in &g.tensors {
        assert_eq!(g.tensor_bytes(t).len() as u64, t.bytes, "{}", t.name);
        if t.bytes <= 1 << 16 {
            let _ = g.dequantize(t);
            let _ = g.pack(t);
        }
    }
    let _ = g.config();
    let _ = g.tokenizer_json();
}

/// `config.json` as a decoder's and as an encoder's config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("config.json");
    if let Ok(cfg) = Config::from_json(text, path) {
        let _ = cfg.describe();
    }
    let _ = EncoderConfig::from_json(text, path);
}

/// A safetensors file: the header and tensor table, then every weight `cfg` implies read out of
/// it (shape and dtype checks, row reads, the Conv1D transpose), and each tensor read whole.
pub fn checkpoint(cfg: &Config, data: &[u8]) {
    let Ok(ckpt) = Checkpoint::from_bytes(data.to_vec(), Path::new("model.safetensors")) else {
        return;
    };
    let _ = ckpt.explicit_head();
    let _ = loader::load_host_weights(&ckpt, cfg);
    let mut out = Vec::new();
    for name in ckpt.names() {
        for conv1d in [false, true] {
            out.clear();
            let _ = ckpt.read_rows(name, conv1d, 4, 0, 1, &mut out);
            let _ = ckpt.read_rows(name, conv1d, 1, 1, usize::MAX, &mut out);
        }
    }
}

/// `model.safetensors.index.json`: the shard names, which must stay inside the model folder.
pub fn index(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(files) = loader::parse_index(text, Path::new(loader::INDEX_FILE)) {
        for f in files {
            assert!(
                !f.contains(['/', '\\']) && f != ".." && f != ".",
                "shard name {f:?} escapes the folder"
            );
        }
    }
}

/// `tokenizer.json`: loaded, then used once.
pub fn tokenizer(data: &[u8]) {
    if let Ok(t) = Tokenizer::from_bytes(data) {
        if let Ok(ids) = t.encode("Hello, world! Grüße 🙂") {
            let _ = t.decode(&ids);
        }
        let _ = t.vocab_size();
    }
}

/// A prompt through `tokenizer`: encode, decode, and the streaming decoder (whose pieces must be
/// whole UTF-8 and add up to the decoded text).
pub fn prompt(tokenizer: &Tokenizer, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(ids) = tokenizer.encode(&text) else {
        return;
    };
    let _ = tokenizer.decode(&ids);
    let mut stream = tokenizer.stream();
    for &id in &ids {
        let _ = stream.push(tokenizer, id);
    }
    let _ = stream.finish(tokenizer);
    // Ids the model could produce but the text never would: out-of-vocabulary ones too.
    let raw: Vec<u32> = data
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % 1024)
        .collect();
    let mut stream = tokenizer.stream();
    for &id in &raw {
        let _ = stream.push(tokenizer, id);
    }
    let _ = stream.finish(tokenizer);
}
