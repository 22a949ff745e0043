//! A BERT checkpoint's tensors in the kernels' layout. Checkpoint quirks live here: an optional
//! `bert.` prefix (a `BertFor...` model saved whole), separate query, key and value projections
//! (fused into one (3C, C) matrix at load, as GPT-2's `c_attn`), and the token-type embedding,
//! whose type-0 row is folded into the position table (single sentences use only type 0).

use crate::encoder::config::EncoderConfig;
use crate::loader::{Checkpoint, ReadRows};
use crate::{Error, Result};

/// One encoder block (post-LN): `x = LN1(x + attn(x))`, `x = LN2(x + mlp(x))`. Linear weights
/// are (out, in) as torch.nn.Linear stores them.
pub struct EncoderLayer<T> {
    /// `attention.self.{query,key,value}.weight` stacked: (3C, C).
    pub qkv_w: T,
    /// The three biases stacked: (3C).
    pub qkv_b: T,
    /// `attention.output.dense.weight` (C, C).
    pub attn_out_w: T,
    /// `attention.output.dense.bias` (C).
    pub attn_out_b: T,
    /// `attention.output.LayerNorm.weight` (C).
    pub ln_1_w: T,
    /// `attention.output.LayerNorm.bias` (C).
    pub ln_1_b: T,
    /// `intermediate.dense.weight` (n_inner, C): MLP up-projection.
    pub fc_w: T,
    /// `intermediate.dense.bias` (n_inner).
    pub fc_b: T,
    /// `output.dense.weight` (C, n_inner): MLP down-projection.
    pub fc_out_w: T,
    /// `output.dense.bias` (C).
    pub fc_out_b: T,
    /// `output.LayerNorm.weight` (C).
    pub ln_2_w: T,
    /// `output.LayerNorm.bias` (C).
    pub ln_2_b: T,
}

/// An encoder's weights, stored as `T` (host vectors or GPU tensors).
pub struct EncoderWeights<T> {
    /// `embeddings.word_embeddings.weight` (V, C).
    pub word: T,
    /// `embeddings.position_embeddings.weight` + `token_type_embeddings.weight[0]` (n_pos, C).
    pub position: T,
    /// `embeddings.LayerNorm.weight` (C).
    pub emb_ln_w: T,
    /// `embeddings.LayerNorm.bias` (C).
    pub emb_ln_b: T,
    /// The L blocks, in order.
    pub layers: Vec<EncoderLayer<T>>,
}

impl<T> EncoderWeights<T> {
    /// Every tensor, each once.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        [&self.word, &self.position, &self.emb_ln_w, &self.emb_ln_b]
            .into_iter()
            .chain(self.layers.iter().flat_map(|l| {
                [
                    &l.qkv_w,
                    &l.qkv_b,
                    &l.attn_out_w,
                    &l.attn_out_b,
                    &l.ln_1_w,
                    &l.ln_1_b,
                    &l.fc_w,
                    &l.fc_b,
                    &l.fc_out_w,
                    &l.fc_out_b,
                    &l.ln_2_w,
                    &l.ln_2_b,
                ]
            }))
    }
}

/// A tensor to make: wgpt's name (the checkpoint's, without prefix, `qkv` for the fused
/// projection), its (rows, cols) in the kernels' layout, and whether the linear kernels read it.
pub struct TensorSpec<'a> {
    /// Name for labels and errors, e.g. `encoder.layer.0.attention.self.qkv.weight`.
    pub name: &'a str,
    /// Rows (1 for a vector).
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// A weight matrix of a linear layer (stored in the model's dtype and layout).
    pub linear: bool,
}

/// `make(spec, read)` in [`load_encoder_weights`].
type Make<'a, T> = dyn FnMut(&TensorSpec, &mut ReadRows) -> Result<T> + 'a;

/// The checkpoint's key prefix: none, or `bert.` for a whole `BertFor...` model.
fn prefix(ckpt: &Checkpoint) -> Result<&'static str> {
    for p in ["", "bert."] {
        if ckpt.contains(&format!("{p}embeddings.word_embeddings.weight")) {
            return Ok(p);
        }
    }
    Err(Error::tensor(
        "embeddings.word_embeddings.weight",
        "is missing from the checkpoint; is this a BERT model saved by transformers?",
    ))
}

/// Checks every tensor of `cfg` in `ckpt`, then hands each to `make(spec, read)`, where
/// `read(row0, n, out)` appends rows of the kernels' layout as f32 (straight from the mapping).
pub fn load_encoder_weights<T>(
    ckpt: &Checkpoint,
    cfg: &EncoderConfig,
    mut make: impl FnMut(&TensorSpec, &mut ReadRows) -> Result<T>,
) -> Result<EncoderWeights<T>> {
    let make: &mut Make<T> = &mut make;
    let pre = prefix(ckpt)?;
    check_shapes(ckpt, cfg, pre)?;
    let (c, inner) = (cfg.hidden_size, cfg.intermediate_size);
    let read = Reader { ckpt, pre, c };
    let word = read.plain(
        make,
        "embeddings.word_embeddings.weight",
        cfg.vocab_size,
        c,
        false,
    )?;
    let position = read.positions(make, cfg.max_position_embeddings)?;
    let emb_ln_w = read.plain(make, "embeddings.LayerNorm.weight", 1, c, false)?;
    let emb_ln_b = read.plain(make, "embeddings.LayerNorm.bias", 1, c, false)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let l = format!("encoder.layer.{i}.");
        let qkv_w = read.qkv(make, &l, "weight")?;
        let qkv_b = read.qkv(make, &l, "bias")?;
        let mut t = |n: &str, rows: usize, cols: usize| {
            read.plain(make, &format!("{l}{n}"), rows, cols, rows > 1)
        };
        layers.push(EncoderLayer {
            qkv_w,
            qkv_b,
            attn_out_w: t("attention.output.dense.weight", c, c)?,
            attn_out_b: t("attention.output.dense.bias", 1, c)?,
            ln_1_w: t("attention.output.LayerNorm.weight", 1, c)?,
            ln_1_b: t("attention.output.LayerNorm.bias", 1, c)?,
            fc_w: t("intermediate.dense.weight", inner, c)?,
            fc_b: t("intermediate.dense.bias", 1, inner)?,
            fc_out_w: t("output.dense.weight", c, inner)?,
            fc_out_b: t("output.dense.bias", 1, c)?,
            ln_2_w: t("output.LayerNorm.weight", 1, c)?,
            ln_2_b: t("output.LayerNorm.bias", 1, c)?,
        });
    }
    Ok(EncoderWeights {
        word,
        position,
        emb_ln_w,
        emb_ln_b,
        layers,
    })
}

/// Every shape and dtype first: fail before any upload.
fn check_shapes(ckpt: &Checkpoint, cfg: &EncoderConfig, pre: &str) -> Result<()> {
    let (c, inner) = (cfg.hidden_size, cfg.intermediate_size);
    let check = |n: &str, rows: usize, cols: usize| {
        let shape = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        ckpt.check(&format!("{pre}{n}"), &shape)
    };
    check("embeddings.word_embeddings.weight", cfg.vocab_size, c)?;
    check(
        "embeddings.position_embeddings.weight",
        cfg.max_position_embeddings,
        c,
    )?;
    check(
        "embeddings.token_type_embeddings.weight",
        cfg.type_vocab_size,
        c,
    )?;
    check("embeddings.LayerNorm.weight", 1, c)?;
    check("embeddings.LayerNorm.bias", 1, c)?;
    for i in 0..cfg.num_layers {
        let l = format!("encoder.layer.{i}.");
        for (n, rows, cols) in [
            ("attention.self.query.weight", c, c),
            ("attention.self.query.bias", 1, c),
            ("attention.self.key.weight", c, c),
            ("attention.self.key.bias", 1, c),
            ("attention.self.value.weight", c, c),
            ("attention.self.value.bias", 1, c),
            ("attention.output.dense.weight", c, c),
            ("attention.output.dense.bias", 1, c),
            ("attention.output.LayerNorm.weight", 1, c),
            ("attention.output.LayerNorm.bias", 1, c),
            ("intermediate.dense.weight", inner, c),
            ("intermediate.dense.bias", 1, inner),
            ("output.dense.weight", c, inner),
            ("output.dense.bias", 1, c),
            ("output.LayerNorm.weight", 1, c),
            ("output.LayerNorm.bias", 1, c),
        ] {
            check(&format!("{l}{n}"), rows, cols)?;
        }
    }
    let extra = format!(
        "{pre}encoder.layer.{}.attention.self.query.weight",
        cfg.num_layers
    );
    if ckpt.contains(&extra) {
        return Err(Error::tensor(
            &extra,
            format!(
                "exists but config.json says num_hidden_layers = {}",
                cfg.num_layers
            ),
        ));
    }
    Ok(())
}

/// Reads a BERT checkpoint's tensors (names under `pre`) into the kernels' layout.
struct Reader<'a> {
    ckpt: &'a Checkpoint,
    pre: &'a str,
    /// C.
    c: usize,
}

impl Reader<'_> {
    fn key(&self, n: &str) -> String {
        format!("{}{n}", self.pre)
    }

    /// A plain tensor, read as stored.
    fn plain<T>(
        &self,
        make: &mut Make<T>,
        n: &str,
        rows: usize,
        cols: usize,
        linear: bool,
    ) -> Result<T> {
        let k = self.key(n);
        let mut read = |row0: usize, count: usize, out: &mut Vec<f32>| {
            self.ckpt.read_rows(&k, false, cols, row0, count, out)
        };
        let spec = TensorSpec {
            name: n,
            rows,
            cols,
            linear,
        };
        let t = make(&spec, &mut read)?;
        self.ckpt.release(&k);
        Ok(t)
    }

    /// The position table with token type 0 added to every row (single texts use only type 0).
    fn positions<T>(&self, make: &mut Make<T>, n_pos: usize) -> Result<T> {
        let c = self.c;
        let mut type0 = Vec::with_capacity(c);
        let types = self.key("embeddings.token_type_embeddings.weight");
        self.ckpt.read_rows(&types, false, c, 0, 1, &mut type0)?;
        let pos_key = self.key("embeddings.position_embeddings.weight");
        let mut read = |row0: usize, count: usize, out: &mut Vec<f32>| {
            let start = out.len();
            self.ckpt.read_rows(&pos_key, false, c, row0, count, out)?;
            for (i, v) in out[start..].iter_mut().enumerate() {
                *v += type0[i % c];
            }
            Ok(())
        };
        let spec = TensorSpec {
            name: "embeddings.position_embeddings.weight",
            rows: n_pos,
            cols: c,
            linear: false,
        };
        make(&spec, &mut read)
    }

    /// Layer `l`'s query, key and value `what` (weight or bias) stacked: rows [0, C) from
    /// query, [C, 2C) key, [2C, 3C) value.
    fn qkv<T>(&self, make: &mut Make<T>, l: &str, what: &str) -> Result<T> {
        let (c, ckpt) = (self.c, self.ckpt);
        let parts: Vec<String> = ["query", "key", "value"]
            .iter()
            .map(|p| self.key(&format!("{l}attention.self.{p}.{what}")))
            .collect();
        let bias = what == "bias";
        let name = format!("{l}attention.self.qkv.{what}");
        let mut read = |row0: usize, count: usize, out: &mut Vec<f32>| {
            if bias {
                // One row: the three biases end to end.
                for p in &parts {
                    ckpt.read_rows(p, false, c, 0, 1, out)?;
                }
                return Ok(());
            }
            // Whole runs of rows from one part at a time.
            let mut r = row0;
            while r < row0 + count {
                let (part, r0) = (r / c, r % c);
                let n = (c - r0).min(row0 + count - r);
                ckpt.read_rows(&parts[part], false, c, r0, n, out)?;
                r += n;
            }
            Ok(())
        };
        let spec = TensorSpec {
            name: &name,
            rows: if bias { 1 } else { 3 * c },
            cols: if bias { 3 * c } else { c },
            linear: !bias,
        };
        let t = make(&spec, &mut read)?;
        for p in &parts {
            ckpt.release(p);
        }
        Ok(t)
    }
}

/// All weights as host f32 vectors in the kernels' layout (for the CPU reference forward).
pub fn load_host_encoder_weights(
    ckpt: &Checkpoint,
    cfg: &EncoderConfig,
) -> Result<EncoderWeights<Vec<f32>>> {
    load_encoder_weights(ckpt, cfg, |spec, read| {
        let mut v = Vec::with_capacity(spec.rows * spec.cols);
        read(0, spec.rows, &mut v)?;
        Ok(v)
    })
}
