//! A GGUF file's hyper-parameters as a [`crate::Config`].

use super::{Gguf, Value};
use crate::Result;

impl Gguf {
    /// The model's hyper-parameters from the `<arch>.*` keys (`general.architecture`: llama,
    /// qwen2 or gpt2), written as the config.json transformers would and checked by the same
    /// code ([`crate::Config::from_json`]). The head is tied when the file has no `output.weight`;
    /// the end-of-sequence ids are the tokenizer's EOS and end-of-turn tokens.
    pub fn config(&self) -> Result<crate::Config> {
        let arch = self
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        let num = |key: &str| self.get(&format!("{arch}.{key}")).and_then(Value::as_f64);
        let n_vocab = match self.get("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => Some(t.len() as f64),
            _ => num("vocab_size"),
        };
        let tied = self.tensor("output.weight").is_none();
        let eos: Vec<u64> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| self.get(k).and_then(Value::as_u64))
            .collect();
        let mut json = match arch {
            "llama" | "qwen2" => {
                serde_json::json!({
                    "model_type": arch,
                    "hidden_size": num("embedding_length"),
                    "intermediate_size": num("feed_forward_length"),
                    "num_hidden_layers": num("block_count"),
                    "num_attention_heads": num("attention.head_count"),
                    "num_key_value_heads": num("attention.head_count_kv"),
                    "head_dim": num("attention.key_length"),
                    "max_position_embeddings": num("context_length"),
                    "rms_norm_eps": num("attention.layer_norm_rms_epsilon"),
                    "rope_theta": num("rope.freq_base"),
                    "vocab_size": n_vocab,
                    // Llama's optional biases, as the tensors say (Qwen2's q/k/v ones are its
                    // family's default).
                    "attention_bias": (arch == "llama").then(|| self.tensor("blk.0.attn_q.bias").is_some()),
                    "mlp_bias": (arch == "llama").then(|| self.tensor("blk.0.ffn_up.bias").is_some()),
                })
            }
            "gpt2" => serde_json::json!({
                "model_type": "gpt2",
                "n_embd": num("embedding_length"),
                "n_inner": num("feed_forward_length"),
                "n_layer": num("block_count"),
                "n_head": num("attention.head_count"),
                "n_positions": num("context_length"),
                "layer_norm_epsilon": num("attention.layer_norm_epsilon"),
                "vocab_size": n_vocab,
            }),
            other => {
                return Err(self.bad(format!(
                    "holds a {other:?} model; wgpt reads llama, qwen2 and gpt2 GGUF files"
                )));
            }
        };
        let fields = json.as_object_mut().expect("an object");
        // Sizes as integers, absent keys dropped (config.json's defaults apply).
        for v in fields.values_mut() {
            if let Some(f) = v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0) {
                *v = (f as u64).into();
            }
        }
        fields.retain(|_, v| !v.is_null());
        fields.insert("tie_word_embeddings".into(), tied.into());
        fields.insert("eos_token_id".into(), eos.into());
        let scaling = self
            .get(&format!("{arch}.rope.scaling.type"))
            .and_then(Value::as_str);
        if let Some(kind) = scaling.filter(|k| *k != "none") {
            let factor = num("rope.scaling.factor");
            fields.insert(
                "rope_scaling".into(),
                serde_json::json!({"type": kind, "factor": factor}),
            );
        }
        let mut cfg = crate::Config::from_json(&json.to_string(), &self.path)?;
        self.rope_factors(&mut cfg)?;
        Ok(cfg)
    }

    /// A `rope_freqs` tensor (how llama.cpp writes Llama 3.1's and 3.2's llama3 scaling): a
    /// divisor per rotary frequency, replacing any other scaling.
    fn rope_factors(&self, cfg: &mut crate::Config) -> Result<()> {
        let Some(t) = self.tensor("rope_freqs.weight") else {
            return Ok(());
        };
        let half = cfg.head_dim / 2;
        let rope = match cfg.rope.as_mut() {
            Some(rope) if t.dims == [half as u64] => rope,
            _ => {
                return Err(self.bad(format!(
                    "has a rope_freqs tensor of shape {:?}, but the model's rotary embedding has \
                     {half} frequencies",
                    t.dims
                )));
            }
        };
        let factors = self.dequantize(t)?;
        if factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(self.bad("has rope_freqs factors that are not positive numbers".into()));
        }
        rope.scaling = crate::config::RopeScaling::Factors(factors);
        Ok(())
    }
}
