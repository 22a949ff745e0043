//! Reading a Hugging Face decoder folder (GPT-2, OPT, XGLM): `config.json`, `model.safetensors`
//! (or shards listed in `model.safetensors.index.json`), memory-mapped, into [`Weights`], the
//! kernels' layout of a decoder's tensors. What is common to every checkpoint lives here: the
//! `transformer.` / `model.decoder.` / `model.` prefixes, the `attn.bias` / `attn.masked_bias`
//! buffers, a tied or explicit `lm_head.weight`, f32 / f16 / bf16 storage. Where each family
//! keeps each tensor (GPT-2's Conv1D weights stored [in, out], OPT's and XGLM's separate q, k, v
//! projections and their position table offset) lives with the family, in
//! [`crate::families`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Config, Family, Positions};
use crate::families::checkpoint_parts;
use crate::{Error, Result};

/// The model folder's hyper-parameters file, read by [`Config::from_file`].
pub const CONFIG_FILE: &str = "config.json";
/// A single-file checkpoint; preferred over [`INDEX_FILE`] when both exist.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint: its `weight_map` names the shard files.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The Hugging Face tokenizer shipped with the model (see [`Tokenizer`](crate::Tokenizer)).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Where one tensor's bytes are.
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the shard's mapping.
    start: usize,
    end: usize,
}

/// One shard's bytes: a read-only mapping of its file, a buffer handed in
/// ([`Checkpoint::from_bytes`]), or bytes embedded in the binary ([`Checkpoint::from_static`]).
pub(crate) enum Shard {
    Mapped(Mmap),
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl Shard {
    /// Lets the OS drop the mapped pages of bytes `start .. end` (whole pages inside it; they
    /// come back from the file if read again). Nothing for bytes in memory.
    pub(crate) fn release(&self, start: usize, end: usize) {
        #[cfg(unix)]
        if let Shard::Mapped(map) = self {
            let page = 4096;
            let start = start.next_multiple_of(page);
            if end > start {
                // SAFETY: the mapping is private and read-only; DONTNEED only discards pages,
                // which are re-read from the unchanged file on the next access.
                unsafe {
                    let _ = map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    );
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (start, end);
    }
}

impl std::ops::Deref for Shard {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Shard::Mapped(m) => m,
            Shard::Owned(v) => v,
            Shard::Static(b) => b,
        }
    }
}

/// Memory-mapped safetensors shards and the tensors in them, by canonical name (no `transformer.`).
pub struct Checkpoint {
    shards: Vec<(PathBuf, Shard)>,
    tensors: HashMap<String, Entry>,
}

/// Maps a checkpoint key to its name without the family's wrapper prefix, or `None` for tensors
/// the model does not use.
fn canonical_name(key: &str) -> Option<&str> {
    let name = ["transformer.", "model.decoder.", "model."]
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key);
    // Causal-mask buffers older transformers versions saved; the kernels apply the mask themselves.
    if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
        return None;
    }
    Some(name)
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            let hint = if dir.join("pytorch_model.bin").exists() {
                " (only pytorch_model.bin is there: wgpt reads safetensors; convert it with \
                 `model.save_pretrained(dir, safe_serialization=True)`)"
            } else {
                ""
            };
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no {WEIGHTS_FILE} or {INDEX_FILE} in the model folder{hint}"),
                ),
            ));
        };
        let mut ckpt = Checkpoint {
            shards: Vec::new(),
            tensors: HashMap::new(),
        };
        for path in files {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the mapping is read-only; a file changed underneath us can give wrong
            // numbers but not unsafety in our code, which only copies bytes out of it.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            ckpt.add_shard(path, Shard::Mapped(mmap))?;
        }
        Ok(ckpt)
    }

    /// A checkpoint of one safetensors file already in memory (`path` only names it in
    /// errors). The same checks as [`Checkpoint::open`]; for tests, fuzzing and embedders that
    /// keep weights elsewhere.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        let mut ckpt = Checkpoint {
            shards: Vec::new(),
            tensors: HashMap::new(),
        };
        ckpt.add_shard(path.to_path_buf(), Shard::Owned(bytes))?;
        Ok(ckpt)
    }

    /// A checkpoint whose one safetensors file is embedded in the binary (`include_bytes!`):
    /// read in place, no copy; `name` stands for its path in errors.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Self> {
        let mut ckpt = Checkpoint {
            shards: Vec::new(),
            tensors: HashMap::new(),
        };
        ckpt.add_shard(PathBuf::from(name), Shard::Static(bytes))?;
        Ok(ckpt)
    }

    /// Parses one shard's header and adds its tensors. The safetensors crate checks the header
    /// (size, JSON, offsets contiguous, byte sizes equal to shape x dtype, the data ending at the
    /// end of the file); the byte ranges are checked again here, since every later read slices
    /// the file with them.
    fn add_shard(&mut self, path: PathBuf, bytes: Shard) -> Result<()> {
        let bad = |msg: String| Error::Safetensors {
            path: path.clone(),
            msg,
        };
        let (header_len, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (key, info) in meta.tensors() {
            let Some(name) = canonical_name(&key) else {
                continue;
            };
            let (s, e) = info.data_offsets;
            let (start, end) = match (data_start.checked_add(s), data_start.checked_add(e)) {
                (Some(start), Some(end)) if start <= end && end <= bytes.len() => (start, end),
                _ => {
                    return Err(bad(format!(
                        "tensor {key:?} claims bytes {s}..{e} of a {}-byte data section",
                        bytes.len() - data_start
                    )));
                }
            };
            let entry = Entry {
                shard,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            };
            if self.tensors.insert(name.to_string(), entry).is_some() {
                return Err(Error::tensor(
                    name,
                    format!("appears twice (in {})", path.display()),
                ));
            }
        }
        self.shards.push((path, bytes));
        Ok(())
    }

    /// Whether the checkpoint holds a tensor of this canonical name (no `transformer.` prefix).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Canonical names of every tensor, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors.get(name).ok_or_else(|| {
            Error::tensor(
                name,
                "is missing from the checkpoint; was it saved by transformers for the model_type config.json names?",
            )
        })
    }

    /// Checks that `name` exists with `shape` and a supported dtype.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let e = self.entry(name)?;
        if e.shape != shape {
            return Err(Error::tensor(
                name,
                format!(
                    "has shape {:?}, config.json implies {shape:?}; the weights do not belong to this config.json",
                    e.shape
                ),
            ));
        }
        match e.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
            other => Err(Error::tensor(
                name,
                format!("has dtype {other:?}; wgpt reads F32, F16 and BF16 weights"),
            )),
        }
    }

    /// Rows `row0 .. row0 + n` of tensor `name` in the kernels' layout (rows of `cols` values)
    /// as f32, appended to `out`: as stored, or for a Conv1D weight (stored [cols, rows], i.e.
    /// [in, out]) transposed. Reads straight from the mapping, and lets the OS drop the pages of
    /// rows read as stored; call [`Checkpoint::check`] first.
    pub fn read_rows(
        &self,
        name: &str,
        conv1d: bool,
        cols: usize,
        row0: usize,
        n: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let e = self.entry(name)?;
        let bytes = self.bytes(e);
        let size = match e.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::tensor(
                    name,
                    format!("has dtype {other:?}; wgpt reads F32, F16 and BF16 weights"),
                ));
            }
        };
        let total = bytes.len() / size;
        let rows = total / cols.max(1);
        // Checked: row0, n and cols come from config.json, which a hostile file can make huge.
        let fits = row0
            .checked_add(n)
            .and_then(|end| end.checked_mul(cols))
            .is_some_and(|needed| needed <= total);
        if !fits || (conv1d && rows.checked_mul(cols).is_none_or(|r| r > total)) {
            return Err(Error::tensor(name, "is smaller than its shape says"));
        }
        let value = |i: usize| {
            let b = &bytes[i * size..(i + 1) * size];
            match e.dtype {
                Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            }
        };
        out.reserve(n * cols);
        if conv1d {
            // Kernel row r, column k is stored at [k][r] of the (cols, rows) matrix.
            for r in row0..row0 + n {
                out.extend((0..cols).map(|k| value(k * rows + r)));
            }
        } else {
            out.extend((row0 * cols..(row0 + n) * cols).map(value));
            // Rows are read in order, each once or nearly: their pages can go now, so a big
            // tensor (a token table) is never resident whole. (A Conv1D block spans the tensor.)
            let shard = &self.shards[e.shard].1;
            shard.release(e.start + row0 * cols * size, e.start + (row0 + n) * cols * size);
        }
        Ok(())
    }

    /// The bytes of one tensor (ranges were checked against the shard in `add_shard`).
    fn bytes(&self, e: &Entry) -> &[u8] {
        self.shards[e.shard]
            .1
            .get(e.start..e.end)
            .unwrap_or_default()
    }

    /// Lets the OS drop the pages of tensor `name` from memory (they come back from the file if
    /// read again), so a load's resident memory stays near one tensor, not the whole file.
    pub fn release(&self, name: &str) {
        if let Some(e) = self.tensors.get(name) {
            self.shards[e.shard].1.release(e.start, e.end);
        }
    }

    /// Whether the checkpoint has its own output projection (an `lm_head.weight` that is not a
    /// byte-for-byte copy of the token embedding).
    pub fn explicit_head(&self) -> bool {
        let wte = ["wte.weight", "embed_tokens.weight"];
        self.contains("lm_head.weight") && !wte.iter().any(|w| self.same_bytes("lm_head.weight", w))
    }

    /// Whether two tensors hold the same bytes (an explicit `lm_head.weight` equal to `wte`).
    pub fn same_bytes(&self, a: &str, b: &str) -> bool {
        match (self.tensors.get(a), self.tensors.get(b)) {
            (Some(x), Some(y)) => {
                x.dtype == y.dtype && x.shape == y.shape && self.bytes(x) == self.bytes(y)
            }
            _ => false,
        }
    }
}

/// The shard files listed in a sharded checkpoint's index, in a stable order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(parse_index(&text, index)?
        .into_iter()
        .map(|f| dir.join(f))
        .collect())
}

/// The shard file names a `model.safetensors.index.json` lists in its `weight_map`, each once, in
/// a stable order; `path` only names the file in errors. Each must be a plain file name in the
/// model folder: no separators, no `..`, no absolute or drive paths.
pub fn parse_index(text: &str, path: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let idx: Index = crate::error::parse_json(text, path)?;
    let mut files: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for file in idx.weight_map.values() {
        // Shard names are plain file names; anything else could escape the model folder.
        let mut parts = Path::new(file).components();
        let plain = matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        ) && !file.contains(['/', '\\', ':', '\0']);
        if !plain {
            return Err(Error::Config {
                path: path.to_path_buf(),
                msg: format!("shard name {file:?} is not a plain file name"),
            });
        }
        if seen.insert(file) {
            files.push(file.clone());
        }
    }
    if files.is_empty() {
        return Err(Error::Config {
            path: path.to_path_buf(),
            msg: "weight_map is empty".into(),
        });
    }
    Ok(files)
}

/// One block's weights, in the kernels' layout and GPT-2's names whatever the family. Linear
/// weights are (out, in); shapes use the letters of [`Config`]. Biases a family lacks are
/// `None`.
pub struct LayerWeights<T> {
    /// `ln_1.weight` (C): gain of the norm before attention.
    pub ln_1_w: T,
    /// `ln_1.bias` (C).
    pub ln_1_b: Option<T>,
    /// `attn.c_attn.weight` ((NH + 2 NKV) HS, C): fused Q, K, V projection.
    pub c_attn_w: T,
    /// `attn.c_attn.bias` ((NH + 2 NKV) HS).
    pub c_attn_b: Option<T>,
    /// `attn.c_proj.weight` (C, NH HS): attention output projection.
    pub attn_proj_w: T,
    /// `attn.c_proj.bias` (C).
    pub attn_proj_b: Option<T>,
    /// `ln_2.weight` (C): gain of the norm before the MLP.
    pub ln_2_w: T,
    /// `ln_2.bias` (C).
    pub ln_2_b: Option<T>,
    /// `mlp.c_fc.weight` (n_inner, C), n_inner = 4C by default: MLP up-projection; gated
    /// feed-forwards stack the gate's rows, then the up-projection's (2 n_inner, C).
    pub c_fc_w: T,
    /// `mlp.c_fc.bias` (n_inner, or 2 n_inner when gated).
    pub c_fc_b: Option<T>,
    /// `mlp.c_proj.weight` (C, n_inner): MLP down-projection.
    pub mlp_proj_w: T,
    /// `mlp.c_proj.bias` (C).
    pub mlp_proj_b: Option<T>,
    /// An encoder-decoder's cross-attention (its decoder blocks).
    pub cross: Option<CrossWeights<T>>,
}

/// A decoder block's attention to the encoder's output, between its self-attention and its
/// feed-forward (T5): `x = x + c_proj(attn(c_q(ln_x(x)), c_kv(encoder output)))`.
pub struct CrossWeights<T> {
    /// `ln_x.weight` (C): gain of its norm.
    pub ln_w: T,
    /// `cross.c_q.weight` (NH HS, C): queries, from the decoder's stream.
    pub q_w: T,
    /// `cross.c_kv.weight` (2 NH HS, C): keys then values, from the encoder's output.
    pub kv_w: T,
    /// `cross.c_proj.weight` (C, NH HS).
    pub proj_w: T,
}

/// An encoder-decoder's encoder stack (T5), in the decoder's tensor layout: bidirectional
/// blocks over the source, then a final norm. Named `enc.` + the decoder's names.
pub struct EncoderStack<T> {
    /// Its blocks (no cross-attention).
    pub layers: Vec<LayerWeights<T>>,
    /// `enc.ln_f.weight` (C).
    pub ln_f_w: T,
    /// `enc.rel_bias.weight` (buckets, NH): the bidirectional relative position bias.
    pub position_bias: T,
}

impl<T> LayerWeights<T> {
    /// Every tensor of the block.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        [&self.ln_1_w, &self.c_attn_w, &self.attn_proj_w]
            .into_iter()
            .chain([&self.ln_2_w, &self.c_fc_w, &self.mlp_proj_w])
            .chain(self.cross.iter().flat_map(|x| [&x.ln_w, &x.q_w, &x.kv_w, &x.proj_w]))
            .chain(self.ln_1_b.as_ref())
            .chain(self.c_attn_b.as_ref())
            .chain(self.attn_proj_b.as_ref())
            .chain(self.ln_2_b.as_ref())
            .chain(self.c_fc_b.as_ref())
            .chain(self.mlp_proj_b.as_ref())
    }
}

/// A decoder's weights, stored as `T` (host vectors or GPU tensors).
pub struct Weights<T> {
    /// `wte.weight` (V, E): token embeddings (also the output head when tied); E = C but in
    /// OPT models with `word_embed_proj_dim`.
    pub wte: T,
    /// `wpe.weight` (n_ctx, C): absolute position embeddings (learned, or XGLM's sinusoids);
    /// `None` for rotary models.
    pub wpe: Option<T>,
    /// `rope.inv_freq` (HS / 2): a rotary model's frequencies, computed from config.json.
    pub inv_freq: Option<T>,
    /// The L transformer blocks, in order.
    pub layers: Vec<LayerWeights<T>>,
    /// `ln_f.weight` (C): gain of the final norm.
    pub ln_f_w: T,
    /// `ln_f.bias` (C).
    pub ln_f_b: Option<T>,
    /// (V, E); `None` when the head is tied to `wte`.
    pub lm_head: Option<T>,
    /// OPT's `project_in.weight` (C, E), when E != C: embeddings into the residual stream.
    pub project_in: Option<T>,
    /// OPT's `project_out.weight` (E, C), when E != C: the final hidden state to the head's E.
    pub project_out: Option<T>,
    /// `rel_bias.weight` (buckets, NH): T5's causal relative position bias.
    pub position_bias: Option<T>,
    /// An encoder-decoder's encoder.
    pub encoder: Option<Box<EncoderStack<T>>>,
}

impl<T> Weights<T> {
    /// Every tensor, each once (a tied head is `wte`).
    pub fn all(&self) -> impl Iterator<Item = &T> {
        [&self.wte, &self.ln_f_w]
            .into_iter()
            .chain(self.wpe.as_ref())
            .chain(self.inv_freq.as_ref())
            .chain(self.ln_f_b.as_ref())
            .chain(self.layers.iter().flat_map(|l| l.all()))
            .chain(self.lm_head.as_ref())
            .chain(self.project_in.as_ref())
            .chain(self.project_out.as_ref())
            .chain(self.position_bias.as_ref())
            .chain(self.encoder.iter().flat_map(|e| {
                [&e.ln_f_w, &e.position_bias]
                    .into_iter()
                    .chain(e.layers.iter().flat_map(|l| l.all()))
            }))
    }
}

/// A row reader handed to [`load_weights`]' `make`: `read(row0, n, out)` appends rows
/// `row0 .. row0 + n` (kernels' layout, f32) to `out`.
pub type ReadRows<'a> = dyn FnMut(usize, usize, &mut Vec<f32>) -> Result<()> + 'a;

/// One stored tensor, or a block of its rows, that makes up part of a kernels'-layout tensor
/// (a family's [`crate::families::checkpoint_parts`] lists them).
pub struct Part {
    /// Checkpoint name (prefix stripped).
    pub key: String,
    /// The shape it must have in the checkpoint.
    pub stored: Vec<usize>,
    /// Rows (elements, for a vector) it contributes.
    pub rows: usize,
    /// Its rows before the ones used (OPT's position table starts 2 rows early).
    pub skip: usize,
    /// Stored [in, out] (GPT-2's Conv1D): read transposed.
    pub transposed: bool,
}

impl Part {
    /// The whole of stored tensor `key`, of shape `stored` ([in, out] when `transposed`).
    pub fn whole(key: String, stored: Vec<usize>, transposed: bool) -> Part {
        let rows = match stored.len() {
            1 => stored[0],
            _ if transposed => stored[1],
            _ => stored[0],
        };
        Part {
            key,
            stored,
            rows,
            skip: 0,
            transposed,
        }
    }
}

/// Checks every tensor against `cfg`, then hands them to `make(name, rows, cols, read)` one at a
/// time (GPT-2's names, whatever the family), each an f32 (rows, cols) matrix in the kernels'
/// layout that `make` reads in blocks of rows straight from the mapped file; each tensor's pages
/// are released after it, so a load never holds a second copy of the model in host memory.
pub fn load_weights<T>(
    ckpt: &Checkpoint,
    cfg: &Config,
    mut make: impl FnMut(&str, usize, usize, &mut ReadRows) -> Result<T>,
) -> Result<Weights<T>> {
    let explicit_head = ckpt.explicit_head();
    if !explicit_head && !cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") {
        return Err(Error::tensor(
            "lm_head.weight",
            "is missing and config.json has tie_word_embeddings = false",
        ));
    }
    // Every shape and dtype first: fail before any upload.
    build_weights(cfg, explicit_head, |name, rows, cols, conv1d| {
        let parts = checkpoint_parts(cfg, name, rows, cols, conv1d);
        let stored: std::collections::BTreeMap<&str, &[usize]> =
            parts.iter().map(|p| (p.key.as_str(), &p.stored[..])).collect();
        for (key, shape) in stored {
            ckpt.check(key, shape)?;
        }
        Ok(())
    })?;
    let extra = match cfg.family {
        Family::Gpt2 => format!("h.{}.ln_1.weight", cfg.n_layer),
        Family::Llama(_) => format!("layers.{}.input_layernorm.weight", cfg.n_layer),
        Family::T5 => format!("decoder.block.{}.layer.0.layer_norm.weight", cfg.n_layer),
        _ => format!("layers.{}.self_attn_layer_norm.weight", cfg.n_layer),
    };
    if ckpt.contains(&extra) {
        return Err(Error::tensor(
            &extra,
            format!(
                "exists but config.json says the model has {} layers",
                cfg.n_layer
            ),
        ));
    }
    build_weights(cfg, explicit_head, |name, rows, cols, conv1d| {
        let parts = checkpoint_parts(cfg, name, rows, cols, conv1d);
        // A vector is read as (elements, 1) so its parts concatenate like row blocks.
        let width = if rows == 1 { 1 } else { cols };
        let mut read = |row0: usize, n: usize, out: &mut Vec<f32>| {
            let (row0, n) = match rows {
                1 => (row0 * cols, n * cols),
                _ => (row0, n),
            };
            if parts.is_empty() {
                // Computed tables: rotary frequencies, or sinusoidal positions (the CPU
                // formula; the GPU computes its own copy).
                let table = match &cfg.rope {
                    Some(rope) => rope.inv_freq(cfg.head_dim),
                    None => crate::reference::sinusoid(row0 + n, cols, cfg.position_offset),
                };
                out.extend(&table[row0 * width..(row0 + n) * width]);
                return Ok(());
            }
            let (mut first, mut at) = (row0, 0);
            for p in &parts {
                let (lo, hi) = (first.max(at), (row0 + n).min(at + p.rows));
                if lo < hi {
                    let local = p.skip + lo - at;
                    ckpt.read_rows(&p.key, p.transposed, width, local, hi - lo, out)?;
                    first = hi;
                }
                at += p.rows;
            }
            Ok(())
        };
        let scale = crate::families::checkpoint_scale(cfg, name);
        let mut scaled = |row0: usize, n: usize, out: &mut Vec<f32>| {
            let from = out.len();
            read(row0, n, out)?;
            out[from..].iter_mut().for_each(|v| *v *= scale);
            Ok(())
        };
        let t = match scale {
            1.0 => make(name, rows, cols, &mut read)?,
            _ => make(name, rows, cols, &mut scaled)?,
        };
        let keys: std::collections::BTreeSet<&str> = parts.iter().map(|p| p.key.as_str()).collect();
        for key in keys {
            ckpt.release(key);
        }
        Ok(t)
    })
}

/// All weights as host f32 vectors in the kernels' layout (for the CPU reference forward).
pub fn load_host_weights(ckpt: &Checkpoint, cfg: &Config) -> Result<Weights<Vec<f32>>> {
    load_weights(ckpt, cfg, |_, rows, _, read| {
        let mut v = Vec::new();
        read(0, rows, &mut v)?;
        Ok(v)
    })
}

/// Builds [`Weights`] in the kernels' layout by asking `make(name, rows, cols, conv1d)` for each
/// tensor, in checkpoint naming (no `transformer.`); vectors are one row. `conv1d` marks the
/// weights GPT-2 checkpoints store transposed.
pub fn build_weights<T>(
    cfg: &Config,
    explicit_head: bool,
    mut make: impl FnMut(&str, usize, usize, bool) -> Result<T>,
) -> Result<Weights<T>> {
    let (c, v, n_ctx) = (cfg.n_embd, cfg.vocab_size, cfg.n_positions);
    let b = cfg.biases;
    let layers = (0..cfg.n_layer)
        .map(|i| build_layer(cfg, &format!("h.{i}."), cfg.t5.is_some(), &mut make))
        .collect::<Result<Vec<_>>>()?;
    let encoder = match &cfg.t5 {
        Some(t5) => Some(Box::new(EncoderStack {
            layers: (0..t5.num_layers)
                .map(|i| build_layer(cfg, &format!("enc.h.{i}."), false, &mut make))
                .collect::<Result<_>>()?,
            ln_f_w: make("enc.ln_f.weight", 1, c, false)?,
            position_bias: make(
                "enc.rel_bias.weight",
                t5.relative_attention_num_buckets,
                t5.num_heads,
                false,
            )?,
        })),
        None => None,
    };
    let e = cfg.word_embed_dim;
    let projects = cfg.projects_embeddings();
    let rotary = cfg.positions == Positions::Rotary;
    let table = matches!(cfg.positions, Positions::Learned | Positions::Sinusoidal);
    Ok(Weights {
        wte: make("wte.weight", v, e, false)?,
        wpe: table
            .then(|| make("wpe.weight", n_ctx, c, false))
            .transpose()?,
        inv_freq: rotary
            .then(|| make("rope.inv_freq", 1, cfg.head_dim / 2, false))
            .transpose()?,
        layers,
        ln_f_w: make("ln_f.weight", 1, c, false)?,
        ln_f_b: b.norm.then(|| make("ln_f.bias", 1, c, false)).transpose()?,
        lm_head: if explicit_head {
            Some(make("lm_head.weight", v, e, false)?)
        } else {
            None
        },
        project_in: match projects {
            true => Some(make("project_in.weight", c, e, false)?),
            false => None,
        },
        project_out: match projects {
            true => Some(make("project_out.weight", e, c, false)?),
            false => None,
        },
        position_bias: match &cfg.t5 {
            Some(t5) => Some(make(
                "rel_bias.weight",
                t5.relative_attention_num_buckets,
                t5.num_heads,
                false,
            )?),
            None => None,
        },
        encoder,
    })
}

/// One block's tensors, named `prefix` + GPT-2's names; `cross`: with its cross-attention.
fn build_layer<T>(
    cfg: &Config,
    prefix: &str,
    cross: bool,
    make: &mut impl FnMut(&str, usize, usize, bool) -> Result<T>,
) -> Result<LayerWeights<T>> {
    let (c, inner) = (cfg.n_embd, cfg.n_inner);
    let b = cfg.biases;
    let (qkv, q, fc) = (cfg.qkv_width(), cfg.q_width(), cfg.fc_rows());
    let mut t = |n: &str, rows: usize, cols: usize, conv1d: bool| {
        make(&format!("{prefix}{n}"), rows, cols, conv1d)
    };
    let cross = match cross {
        true => Some(CrossWeights {
            ln_w: t("ln_x.weight", 1, c, false)?,
            q_w: t("cross.c_q.weight", q, c, false)?,
            kv_w: t("cross.c_kv.weight", 2 * q, c, false)?,
            proj_w: t("cross.c_proj.weight", c, q, false)?,
        }),
        false => None,
    };
    Ok(LayerWeights {
        ln_1_w: t("ln_1.weight", 1, c, false)?,
        ln_1_b: b.norm.then(|| t("ln_1.bias", 1, c, false)).transpose()?,
        c_attn_w: t("attn.c_attn.weight", qkv, c, true)?,
        c_attn_b: b.qkv.then(|| t("attn.c_attn.bias", 1, qkv, false)).transpose()?,
        attn_proj_w: t("attn.c_proj.weight", c, q, true)?,
        attn_proj_b: b.out.then(|| t("attn.c_proj.bias", 1, c, false)).transpose()?,
        ln_2_w: t("ln_2.weight", 1, c, false)?,
        ln_2_b: b.norm.then(|| t("ln_2.bias", 1, c, false)).transpose()?,
        c_fc_w: t("mlp.c_fc.weight", fc, c, true)?,
        c_fc_b: b.mlp.then(|| t("mlp.c_fc.bias", 1, fc, false)).transpose()?,
        mlp_proj_w: t("mlp.c_proj.weight", c, inner, true)?,
        mlp_proj_b: b.mlp.then(|| t("mlp.c_proj.bias", 1, c, false)).transpose()?,
        cross,
    })
}

/// Folds each pre-LN block's layer norms into the projections that read them, as a checkpoint
/// streams in: LN(x) W^T + b = x̂ (W diag(gain))^T + (b + W bias) with x̂ = (x - mean) / std, so
/// the norms become plain standardisation (gain 1, bias 0 uploaded in their place) and a decode
/// GEMV can standardise its input itself instead of a layernorm dispatch running first
/// (matmul_texture_subgroup.wgsl's NORM). RMS norms fold the same way, gain only (the GEMV's
/// NORM with RMS divides by the root mean square, no mean). Relies on [`build_weights`]' order
/// within a block: ln_1's gain and bias, then c_attn's weight and bias (ln_2 and c_fc likewise).
#[derive(Default)]
pub struct LnFold {
    gain: Vec<f32>,
    bias: Vec<f32>,
    /// W · bias of the last folded weight, per output: added to its bias.
    shift: Vec<f32>,
}

impl LnFold {
    /// `make(name, rows, cols, read)` with the folding applied to what `read` returns.
    pub fn make<T>(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        read: &mut ReadRows,
        make: impl FnOnce(&str, usize, usize, &mut ReadRows) -> Result<T>,
    ) -> Result<T> {
        let is = |suffixes: [&str; 2]| {
            name.starts_with("h.") && suffixes.iter().any(|s| name.ends_with(s))
        };
        if is([".ln_1.weight", ".ln_2.weight"]) || is([".ln_1.bias", ".ln_2.bias"]) {
            let (kept, value) = match name.ends_with(".weight") {
                true => (&mut self.gain, 1.0),
                false => (&mut self.bias, 0.0),
            };
            kept.clear();
            read(0, 1, kept)?;
            make(name, rows, cols, &mut |_, n, out: &mut Vec<f32>| {
                out.extend(std::iter::repeat_n(value, n * cols));
                Ok(())
            })
        } else if is([".attn.c_attn.weight", ".mlp.c_fc.weight"]) {
            let (gain, bias, shift) = (&self.gain, &self.bias, &mut self.shift);
            shift.clear();
            shift.resize(rows, 0.0);
            make(name, rows, cols, &mut |row0, n, out: &mut Vec<f32>| {
                let at = out.len();
                read(row0, n, out)?;
                for (i, row) in out[at..].chunks_mut(cols).enumerate() {
                    let wb: f64 = row
                        .iter()
                        .zip(bias)
                        .map(|(&w, &b)| w as f64 * b as f64)
                        .sum();
                    shift[row0 + i] = wb as f32;
                    row.iter_mut().zip(gain).for_each(|(w, g)| *w *= g);
                }
                Ok(())
            })
        } else if is([".attn.c_attn.bias", ".mlp.c_fc.bias"]) {
            let shift = &self.shift;
            make(name, rows, cols, &mut |row0, n, out: &mut Vec<f32>| {
                let at = out.len();
                read(row0, n, out)?;
                let first = row0 * cols;
                for (i, b) in out[at..].iter_mut().enumerate() {
                    *b += shift[first + i];
                }
                Ok(())
            })
        } else {
            make(name, rows, cols, read)
        }
    }
}
