//! The GGUF parser (`wgpt::gguf`): every metadata value type, the tensor table and alignment of
//! files written here byte by byte and by the `gguf` Python package (the fuzz seed); a real
//! SmolLM2-135M-Instruct Q4_1 file; and hostile files (truncated anywhere, absurd counts and
//! lengths, offsets past the end, overlapping or misaligned tensors, unknown types), each an
//! error naming the file, never a panic.

mod common;

use std::path::Path;

use wgpt::gguf::{Gguf, Value};

/// A GGUF file under construction: metadata then tensors, written as the format lays them out.
struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
    alignment: usize,
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

impl Writer {
    fn new(alignment: usize) -> Writer {
        Writer {
            kv: Vec::new(),
            n_kv: 0,
            infos: Vec::new(),
            n_tensors: 0,
            data: Vec::new(),
            alignment,
        }
    }

    /// A metadata entry of type `ty` whose value is `value`'s bytes.
    fn kv(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        string(&mut self.kv, key.as_bytes());
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }

    /// A tensor of type `ty` with `bytes` of data, at the next aligned offset (or `offset`).
    fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: u32,
        bytes: &[u8],
        offset: Option<u64>,
    ) -> &mut Self {
        let at = self.data.len().next_multiple_of(self.alignment);
        self.data.resize(at, 0);
        string(&mut self.infos, name.as_bytes());
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.unwrap_or(at as u64).to_le_bytes());
        self.data.extend(bytes);
        self.n_tensors += 1;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out.extend(&self.data);
        out
    }
}

fn parse(bytes: Vec<u8>) -> wgpt::Result<Gguf> {
    Gguf::from_bytes(bytes, Path::new("bad.gguf"))
}

/// A file using every value type, a nested array, a custom alignment and three tensor types.
fn sample() -> Writer {
    let mut w = Writer::new(64);
    let mut arr = 8u32.to_le_bytes().to_vec(); // an array of two strings
    arr.extend(2u64.to_le_bytes());
    string(&mut arr, b"a");
    string(&mut arr, "\u{1F600}".as_bytes());
    let mut nested = 9u32.to_le_bytes().to_vec(); // an array of one array of two u16
    nested.extend(1u64.to_le_bytes());
    nested.extend(2u32.to_le_bytes());
    nested.extend(2u64.to_le_bytes());
    nested.extend([1, 0, 2, 0]);
    let mut s = Vec::new();
    string(&mut s, b"llama");
    w.kv("general.alignment", 4, &64u32.to_le_bytes())
        .kv("general.architecture", 8, &s)
        .kv("u8", 0, &[200])
        .kv("i8", 1, &[0xff])
        .kv("u16", 2, &500u16.to_le_bytes())
        .kv("i16", 3, &(-5i16).to_le_bytes())
        .kv("i32", 5, &(-7i32).to_le_bytes())
        .kv("f32", 6, &0.25f32.to_le_bytes())
        .kv("bool", 7, &[1])
        .kv("strings", 9, &arr)
        .kv("nested", 9, &nested)
        .kv("u64", 10, &u64::MAX.to_le_bytes())
        .kv("i64", 11, &(-9i64).to_le_bytes())
        .kv("f64", 12, &1.5f64.to_le_bytes());
    let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.tensor("a.weight", &[4, 2], 0, &f32s, None)
        .tensor("b.weight", &[32, 2], 8, &[7; 68], None) // Q8_0: 34 bytes a block of 32
        .tensor("c.weight", &[256], 12, &[9; 144], None); // Q4_K: 144 bytes a block of 256
    w
}

#[test]
fn reads_every_value_type_and_the_tensor_table() {
    let g = parse(sample().bytes()).unwrap();
    assert_eq!(g.version, 3);
    let v = |k: &str| g.get(k).unwrap().clone();
    assert_eq!(v("general.architecture").as_str(), Some("llama"));
    assert_eq!(
        (v("u8"), v("i8"), v("u16"), v("i16")),
        (
            Value::U8(200),
            Value::I8(-1),
            Value::U16(500),
            Value::I16(-5)
        )
    );
    assert_eq!(
        (v("i32"), v("f32"), v("bool")),
        (Value::I32(-7), Value::F32(0.25), Value::Bool(true))
    );
    assert_eq!(
        (v("u64"), v("i64"), v("f64")),
        (Value::U64(u64::MAX), Value::I64(-9), Value::F64(1.5))
    );
    let emoji = Value::String("\u{1F600}".into());
    assert_eq!(
        v("strings"),
        Value::Array(vec![Value::String("a".into()), emoji])
    );
    assert_eq!(
        v("nested"),
        Value::Array(vec![Value::Array(vec![Value::U16(1), Value::U16(2)])])
    );
    assert_eq!(g.data_start % 64, 0);
    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.weight", "b.weight", "c.weight"]);
    let a = g.tensor("a.weight").unwrap();
    assert_eq!(
        (a.dims.clone(), a.ty.name, a.bytes),
        (vec![4, 2], "F32", 32)
    );
    assert_eq!(g.tensor_bytes(a)[4..8], 1f32.to_le_bytes());
    let b = g.tensor("b.weight").unwrap();
    assert_eq!(
        (b.ty.name, b.offset, b.bytes, g.tensor_bytes(b)[0]),
        ("Q8_0", 64, 68, 7)
    );
    let hist: Vec<_> = g.type_histogram().into_iter().collect();
    assert_eq!(hist, [("F32", 1), ("Q4_K", 1), ("Q8_0", 1)]);
}

/// Every hostile file is an error naming the file and the fault; no panic, no huge allocation.
#[test]
fn hostile_files_are_clear_errors() {
    let good = sample().bytes();
    // Cut anywhere: an error every time (or, cut inside the data's trailing padding, still a
    // valid file, which none of these cuts is: the last tensor ends the file).
    for cut in 0..good.len() {
        let err = parse(good[..cut].to_vec())
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} parsed"))
            .to_string();
        assert!(err.starts_with("bad.gguf: "), "{err}");
    }
    let expect = |bytes: Vec<u8>, needle: &str| {
        let err = parse(bytes)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("bad.gguf: ") && err.contains(needle),
            "{needle:?} not in {err:?}"
        );
    };
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    expect(bad, "not a GGUF file");
    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&1u32.to_le_bytes());
    expect(bad, "version 1");
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect(bad, "tensor count");
    let mut bad = good.clone();
    bad[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect(bad, "metadata count");
    // The first key's length, absurd.
    let mut bad = good.clone();
    bad[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    expect(bad, "string length");

    let f32s = [0u8; 16];
    let mut w = Writer::new(32);
    w.tensor("far", &[4], 0, &f32s, Some(1 << 20));
    expect(w.bytes(), "truncated or corrupt");
    let mut w = Writer::new(32);
    w.tensor("a", &[4], 0, &[0; 64], Some(0))
        .tensor("b", &[4], 0, &[], Some(0));
    expect(w.bytes(), "overlap");
    let mut w = Writer::new(32);
    w.tensor("odd", &[4], 0, &f32s, Some(4));
    expect(w.bytes(), "alignment");
    let mut w = Writer::new(32);
    w.tensor("what", &[4], 99, &f32s, None);
    expect(w.bytes(), "unknown type 99");
    let mut w = Writer::new(32);
    w.tensor("flat", &[], 0, &f32s, None);
    expect(w.bytes(), "0 dimensions");
    let mut w = Writer::new(32);
    w.tensor("q", &[30], 8, &[0; 34], None);
    expect(w.bytes(), "not whole blocks of 32");
    let mut w = Writer::new(32);
    w.tensor("huge", &[u64::MAX, 4], 0, &f32s, None);
    expect(w.bytes(), "overflows");
    let mut w = Writer::new(32);
    w.kv("flag", 7, &[2]);
    expect(w.bytes(), "bool of value 2");
    let mut w = Writer::new(32);
    w.kv("k", 13, &[0]);
    expect(w.bytes(), "unknown type 13");
    let mut w = Writer::new(32);
    w.kv("k", 0, &[1]).kv("k", 0, &[2]);
    expect(w.bytes(), "twice");
    let mut w = Writer::new(32);
    let mut s = Vec::new();
    string(&mut s, &[0xff, 0xfe]);
    w.kv("k", 8, &s);
    expect(w.bytes(), "not UTF-8");
    let mut w = Writer::new(32);
    w.kv("general.alignment", 4, &3u32.to_le_bytes());
    expect(w.bytes(), "power of two");
    // Arrays of arrays nested without end.
    let mut deep = Vec::new();
    for _ in 0..64 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    let mut w = Writer::new(32);
    w.kv("deep", 9, &deep);
    expect(w.bytes(), "nests arrays");
}

/// The fuzz seed, written by the `gguf` Python package (gguf-py's GGUFWriter).
#[test]
fn reads_what_gguf_py_writes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf/seed-small.gguf");
    let g = Gguf::open(&path).unwrap();
    assert_eq!(
        g.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert_eq!(
        g.get("llama.context_length").and_then(Value::as_u64),
        Some(64)
    );
    assert_eq!(g.get("test.str").and_then(Value::as_str), Some("héllo"));
    let a = g.tensor("a.weight").unwrap();
    assert_eq!((a.dims.clone(), a.ty.name), (vec![32, 1], "F32"));
    assert_eq!(g.tensor_bytes(a)[4 * 31..], 31f32.to_le_bytes());
    assert_eq!(g.tensor("b.weight").unwrap().ty.name, "F16");
}

#[test]
fn reads_a_real_smollm2_file() {
    let path = common::smollm2_gguf();
    let g = Gguf::open(&path).unwrap();
    let u = |k: &str| g.get(k).and_then(Value::as_u64);
    assert_eq!(
        g.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert_eq!(
        (u("llama.block_count"), u("llama.embedding_length")),
        (Some(30), Some(576))
    );
    assert_eq!(
        (
            u("llama.attention.head_count"),
            u("llama.attention.head_count_kv")
        ),
        (Some(9), Some(3))
    );
    let Some(Value::Array(tokens)) = g.get("tokenizer.ggml.tokens") else {
        panic!("no token list");
    };
    assert_eq!(tokens.len(), 49152);
    assert!(
        g.get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    let hist = g.type_histogram();
    println!("{}: {} tensors, {hist:?}", path.display(), g.tensors.len());
    assert_eq!(g.tensors.len(), 272);
    assert!(hist["Q4_1"] > 0 && hist["F32"] > 0);
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dims.clone(), embd.ty.name),
        (vec![576, 49152], "Q8_0")
    );
    // The tensors tile the data section: their bytes sum to it, less alignment padding.
    let sum: u64 = g.tensors.iter().map(|t| t.bytes).sum();
    let data = std::fs::metadata(&path).unwrap().len() - g.data_start;
    assert!(
        sum <= data && data - sum < 32 * g.tensors.len() as u64,
        "{sum} of {data}"
    );
}

/// `wgpt info --model FILE.gguf` reads the metadata and says how each type runs; `generate`
/// and `logits` run the file.
#[test]
fn cli_reads_gguf_metadata() {
    let path = common::smollm2_gguf();
    let wgpt = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wgpt"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = wgpt(&["info", "--model", path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for part in [
        "family       llama",
        "30 layers, C = 576, n_inner = 1536, V = 49152, context 8192",
        "grouped-query: 9 query heads of 64 in 3 groups of 3",
        "rotary (theta 100000)",
        "272 tensors: F32 x61, Q4_1 x210, Q8_0 x1",
        "chat         yes",
        "on the GPU   F32 as f32, Q4_1 packed as q4h, Q8_0 packed as q8",
    ] {
        assert!(out.contains(part), "{part:?} not in {out}");
    }
    let file = path.to_str().unwrap();
    let args = [
        "--prompt",
        "The capital of France is",
        "-n",
        "2",
        "--temperature",
        "0",
    ];
    let o = wgpt(&[&["generate", "--model", file][..], &args].concat());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("The capital of France is Paris."), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("l.npy");
    let npy = npy.to_str().unwrap();
    let o = wgpt(&[
        "logits",
        "--model",
        file,
        "--ids",
        "504,3575,282",
        "-o",
        npy,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, _) = common::read_npy(Path::new(npy));
    assert_eq!(shape, [3, 49152]);
}

/// SmolLM2's hyper-parameters from its `llama.*` keys: those of its config.json.
#[test]
fn config_from_gguf_metadata() {
    let g = Gguf::open(&common::smollm2_gguf()).unwrap();
    let c = g.config().unwrap();
    assert_eq!(c.model_type(), "llama");
    assert_eq!(
        (c.n_layer, c.n_embd, c.n_inner, c.vocab_size),
        (30, 576, 1536, 49152)
    );
    assert_eq!(
        (c.n_head, c.n_kv_head, c.head_dim, c.n_positions),
        (9, 3, 64, 8192)
    );
    assert_eq!(c.rope.as_ref().unwrap().theta, 100000.0);
    assert!((c.layer_norm_epsilon - 1e-5).abs() < 1e-9);
    assert!(c.tie_word_embeddings && c.gated);
    assert_eq!(c.eos_token_ids, [2]);
    // Architectures wgpt does not run are refused by name.
    let mut s = Vec::new();
    string(&mut s, b"mamba");
    let mut w = Writer::new(32);
    w.kv("general.architecture", 8, &s);
    let err = parse(w.bytes()).unwrap().config().unwrap_err().to_string();
    assert!(
        err.contains("\"mamba\"") && err.contains("llama, qwen2 and gpt2"),
        "{err}"
    );
}

/// `tests/fixtures/gguf/smollm2_tokens.json`: transformers' ids of texts and chats.
fn token_cases() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixture("gguf/smollm2_tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// SmolLM2's tokenizer built from the GGUF metadata gives transformers' ids (its GGUF loader's
/// tokenizer, `tests/fixtures/gguf/make_token_cases.py`) on emoji, CJK, code, whitespace runs,
/// contractions and control tokens in the text, and decodes back to the text.
#[test]
fn tokenizer_from_gguf_metadata_matches_transformers() {
    let g = Gguf::open(&common::smollm2_gguf()).unwrap();
    let tok = wgpt::Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    let cases = token_cases();
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text, "{text:?}");
    }
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
}

/// Tokenizers wgpt does not build are refused by name.
#[test]
fn unknown_tokenizers_are_refused_by_name() {
    let s = |v: &str| {
        let mut b = Vec::new();
        string(&mut b, v.as_bytes());
        b
    };
    let mut w = Writer::new(32);
    w.kv("tokenizer.ggml.model", 8, &s("rwkv"));
    let err = parse(w.bytes())
        .unwrap()
        .tokenizer_json()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("bad.gguf: ") && err.contains("\"rwkv\""),
        "{err}"
    );
    let mut tokens = 8u32.to_le_bytes().to_vec();
    tokens.extend(1u64.to_le_bytes());
    string(&mut tokens, b"a");
    let mut merges = 8u32.to_le_bytes().to_vec();
    merges.extend(0u64.to_le_bytes());
    let mut w = Writer::new(32);
    w.kv("tokenizer.ggml.model", 8, &s("gpt2"))
        .kv("tokenizer.ggml.pre", 8, &s("chameleon"))
        .kv("tokenizer.ggml.tokens", 9, &tokens)
        .kv("tokenizer.ggml.merges", 9, &merges);
    let err = parse(w.bytes())
        .unwrap()
        .tokenizer_json()
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"chameleon\""), "{err}");
    let mut w = Writer::new(32);
    w.kv("tokenizer.ggml.model", 8, &s("gpt2"));
    let err = parse(w.bytes())
        .unwrap()
        .tokenizer_json()
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.tokens"), "{err}");
}

/// The chat template in the GGUF's metadata renders as transformers renders it, and its ids
/// (from the tokenizer built from the same metadata) are transformers'.
#[test]
fn chat_template_from_gguf_metadata_matches_transformers() {
    let g = Gguf::open(&common::smollm2_gguf()).unwrap();
    let tok = wgpt::Tokenizer::from_gguf(&g).unwrap();
    let template = wgpt::ChatTemplate::from_gguf(&g)
        .unwrap()
        .expect("a template");
    assert_eq!(template.eos_token, "<|im_end|>");
    let cases = token_cases();
    for chat in cases["chats"].as_array().unwrap() {
        let messages: Vec<wgpt::Message> =
            serde_json::from_value(chat["messages"].clone()).unwrap();
        let text = template.render(&messages, true).unwrap();
        assert_eq!(text, chat["text"].as_str().unwrap());
        let want: Vec<u32> = serde_json::from_value(chat["ids"].clone()).unwrap();
        assert_eq!(tok.encode_plain(&text).unwrap(), want);
    }
}

/// Every block format wgpt reads, dequantised as ggml does: gguf-py's `quants.dequantize` of
/// the same blocks (`tests/fixtures/gguf/make_quant_cases.py`), 1024 values a type.
#[test]
fn block_formats_dequantize_as_ggml() {
    let g = Gguf::open(&common::fixture("gguf/quants.gguf")).unwrap();
    for ty in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
    ] {
        let t = g.tensor(ty).unwrap();
        assert_eq!(t.ty.name, ty);
        let got = g.dequantize(t).unwrap();
        let want = g
            .dequantize(g.tensor(&format!("{ty}.expected")).unwrap())
            .unwrap();
        assert_eq!(got.len(), 1024, "{ty}");
        // The same f32 products and sums as ggml's (and numpy's), in the same order: exact.
        println!(
            "{ty}: max |wgpt - ggml| = {:e}",
            common::max_abs_diff(&got, &want)
        );
        assert_eq!(got, want, "{ty}");
    }
    // A type wgpt does not read is refused, naming it and the tensor.
    let mut w = Writer::new(32);
    w.tensor("blk.0.ffn_up.weight", &[256], 10, &[0; 84], None);
    let g2 = parse(w.bytes()).unwrap();
    let err = g2.dequantize(&g2.tensors[0]).unwrap_err().to_string();
    assert!(
        err.contains("Q2_K") && err.contains("blk.0.ffn_up.weight"),
        "{err}"
    );
    // SmolLM2's own blocks (Q4_1 matrices, a Q8_0 embedding) dequantise to finite values.
    let real = Gguf::open(&common::smollm2_gguf()).unwrap();
    for name in ["blk.0.attn_q.weight", "token_embd.weight"] {
        let v = real.dequantize(real.tensor(name).unwrap()).unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0),
            "{name}"
        );
    }
}

/// A file with tensors of types wgpt does not run (Q2_K, IQ4_NL) is refused before anything is
/// uploaded: one error naming the file, each type and the tensors using it.
#[test]
fn unsupported_block_types_are_refused_by_name() {
    let mut w = sample();
    w.tensor("blk.0.attn_q.weight", &[256, 2], 10, &[0; 168], None) // Q2_K: 84 bytes a 256
        .tensor("blk.1.attn_q.weight", &[256], 10, &[0; 84], None)
        .tensor("blk.0.ffn_up.weight", &[32], 20, &[0; 18], None); // IQ4_NL: 18 bytes a 32
    let g = parse(w.bytes()).unwrap();
    let err = match wgpt::Model::from_gguf(common::gpu(), &g, &Default::default()) {
        Ok(_) => panic!("a Q2_K file loaded"),
        Err(e) => e.to_string(),
    };
    for needle in [
        "bad.gguf",
        "Q2_K (blk.0.attn_q.weight, blk.1.attn_q.weight)",
        "IQ4_NL (blk.0.ffn_up.weight)",
        "Q4_K",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// Every block type repacked for the GPU (`Gguf::pack`: q8, the nibble formats, f16, f32)
/// decodes to exactly ggml's values (the `.expected` tensors gguf-py wrote): the packed formats
/// hold GGUF's blocks without loss.
#[test]
fn packed_formats_hold_every_block_type_exactly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quants.gguf");
    let g = Gguf::open(&path).unwrap();
    let mut seen = Vec::new();
    for t in g.tensors.iter().filter(|t| !t.name.ends_with(".expected")) {
        let (dtype, bytes) = g.pack(t).unwrap();
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let got = dtype.format().decode(&bytes, rows, cols);
        let want = g
            .dequantize(g.tensor(&format!("{}.expected", t.name)).unwrap())
            .unwrap();
        // Equal as numbers (bit for bit but for the sign of zero: ggml's (q - 8) d is -0 where
        // q d - 8 d is +0).
        let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            (got.len(), bad),
            (want.len(), 0),
            "{} packed as {}",
            t.name,
            dtype.name()
        );
        seen.push(format!("{} as {}", t.ty.name, dtype.name()));
    }
    println!("{}", seen.join(", "));
    assert_eq!(
        seen.len(),
        10,
        "F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K"
    );
}
