//! SentencePiece (`tokenizer.ggml.model` "llama") tokenizers built from GGUF metadata: the ids
//! and decodes transformers gives for a tiny trained SPM vocabulary
//! (`tests/fixtures/gguf/spm/make_spm_fixture.py`), with and without `add_space_prefix`, and
//! clear errors for files whose scores cannot rank the merges.

mod common;

use std::path::Path;

use wgpt::gguf::Gguf;

/// `tests/fixtures/gguf/spm/spm_tokens.json`: per GGUF file, transformers' ids and decodes.
fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixture("gguf/spm/spm_tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `ids` decoded whole, and streamed one id at a time, are `want`.
fn check_decode(tok: &wgpt::Tokenizer, ids: &[u32], want: &str, what: &str) {
    assert_eq!(tok.decode(ids).unwrap(), want, "{what}");
    let mut stream = tok.stream();
    let mut streamed = String::new();
    for &id in ids {
        streamed.extend(stream.push(tok, id).unwrap());
    }
    streamed.extend(stream.finish(tok).unwrap());
    assert_eq!(streamed, want, "{what}, streamed");
}

/// Every case of `file`: transformers' ids with special tokens (BOS, EOS as the file asks) and
/// without, its decodes of them (special tokens kept), the same decodes streamed, and its
/// added tokens (which are special, which not).
fn check_file(file: &str) {
    let path = common::fixture(&format!("gguf/spm/{file}"));
    let g = Gguf::open(&path).unwrap();
    let tok = wgpt::Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 800);
    assert_eq!(tok.token_id("<s>"), Some(1));
    let all = cases();
    let json: serde_json::Value = serde_json::from_str(&g.tokenizer_json().unwrap()).unwrap();
    assert_eq!(json["added_tokens"], all[file]["added_tokens"], "{file}");
    let cases = all[file]["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let ids = |case: &serde_json::Value, key: &str| -> Vec<u32> {
        serde_json::from_value(case[key].clone()).unwrap()
    };
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let what = format!("{file}: {text:?}");
        assert_eq!(tok.encode(text).unwrap(), ids(case, "ids"), "{what}");
        let plain = ids(case, "plain_ids");
        assert_eq!(tok.encode_plain(text).unwrap(), plain, "{what}, plain");
        let decoded = case["decoded"].as_str().unwrap();
        check_decode(&tok, &ids(case, "ids"), decoded, &what);
        let decoded = case["plain_decoded"].as_str().unwrap();
        check_decode(&tok, &plain, decoded, &format!("{what}, plain"));
    }
}

/// A `▁` prepended to the text (and stripped on decode), a BOS, merges derived from the scores,
/// byte fallback for characters outside the vocabulary, and `<s>`, `</s>`, `<unk>`, a control and
/// a user-defined token written in the text each one token.
#[test]
fn spm_gguf_matches_transformers() {
    check_file("spm.gguf");
}

/// `add_space_prefix` false: no `▁` prepended nor stripped; `add_bos_token` absent (BOS added,
/// llama's default) and `add_eos_token` true.
#[test]
fn spm_gguf_without_space_prefix_matches_transformers() {
    check_file("spm_noprefix.gguf");
}

/// A metadata value for [`gguf`].
#[derive(Clone, Copy)]
enum Kv<'a> {
    Str(&'a str),
    Strs(&'a [&'a str]),
    F32s(&'a [f32]),
    I32s(&'a [i32]),
    U32(u32),
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF v3 file of metadata only.
fn gguf(kvs: &[(&str, Kv)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        string(&mut out, key);
        let array = |out: &mut Vec<u8>, ty: u32, n: usize| {
            out.extend(9u32.to_le_bytes());
            out.extend(ty.to_le_bytes());
            out.extend((n as u64).to_le_bytes());
        };
        match value {
            Kv::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            Kv::Strs(v) => {
                array(&mut out, 8, v.len());
                v.iter().for_each(|s| string(&mut out, s));
            }
            Kv::F32s(v) => {
                array(&mut out, 6, v.len());
                v.iter().for_each(|x| out.extend(x.to_le_bytes()));
            }
            Kv::I32s(v) => {
                array(&mut out, 5, v.len());
                v.iter().for_each(|x| out.extend(x.to_le_bytes()));
            }
            Kv::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
        }
    }
    out
}

/// A llama vocabulary of `tokens` (`<unk>`, `<s>`, `</s>` first), no byte tokens, plus `extra`
/// metadata.
fn spm(name: &str, tokens: &[&str], extra: &[(&str, Kv)]) -> wgpt::Result<wgpt::Tokenizer> {
    let types: Vec<i32> = (0..tokens.len()).map(|i| [2, 3, 3, 1][i.min(3)]).collect();
    let mut kvs = vec![
        ("general.architecture", Kv::Str("llama")),
        ("tokenizer.ggml.model", Kv::Str("llama")),
        ("tokenizer.ggml.tokens", Kv::Strs(tokens)),
        ("tokenizer.ggml.token_type", Kv::I32s(&types)),
        ("tokenizer.ggml.bos_token_id", Kv::U32(1)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Kv::U32(0)),
    ];
    kvs.extend(extra.iter().copied());
    let g = Gguf::from_bytes(gguf(&kvs), Path::new(name))?;
    wgpt::Tokenizer::from_gguf(&g)
}

const TINY: &[&str] = &["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab"];

fn tiny(name: &str, extra: &[(&str, Kv)]) -> wgpt::Result<wgpt::Tokenizer> {
    spm(name, TINY, extra)
}

const SCORES: &[f32] = &[0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.7];

/// Merges ranked by score: `▁a` (-0.5) before `ab` (-0.7), so "ab" (`▁ab`) is `▁a b`; with the
/// scores reversed `▁ ab`; with merges in the file, those. A character with neither a token nor
/// byte tokens is the unknown token, a run of them one, as sentencepiece does (transformers 5.24
/// sets no unk_token and drops such characters: `[1, 6, 3]` for "a cd").
#[test]
fn merges_rank_by_score_and_unknown_characters_are_unk() {
    let tok = tiny("tiny.gguf", &[("tokenizer.ggml.scores", Kv::F32s(SCORES))]).unwrap();
    assert_eq!(tok.encode("ab").unwrap(), [1, 6, 5]);
    assert_eq!(tok.encode("a b").unwrap(), [1, 6, 3, 5]);
    assert_eq!(tok.encode("a cd").unwrap(), [1, 6, 3, 0]);
    assert_eq!(tok.decode(&[1, 6, 3, 5]).unwrap(), "<s> a b");
    assert_eq!(tok.decode(&[6, 3, 5]).unwrap(), "a b");
    let rev: Vec<f32> = SCORES.iter().map(|s| -s).collect();
    let tok = tiny("tiny.gguf", &[("tokenizer.ggml.scores", Kv::F32s(&rev))]).unwrap();
    assert_eq!(tok.encode("ab").unwrap(), [1, 3, 7]);
    // The file's merges, when it has them, and then scores are not needed.
    let merges = ("tokenizer.ggml.merges", Kv::Strs(&["a b", "▁ a"]));
    let tok = tiny("tiny.gguf", &[merges]).unwrap();
    assert_eq!(tok.encode("ab").unwrap(), [1, 3, 7]);
}

/// Merges of equal score rank by their left half's length in characters, longest first, not by
/// vocabulary order or length in bytes: in "xx日z", `xx 日` (2 characters, 2 bytes) goes before
/// `日 z` (1 character, 3 bytes, earlier in the vocabulary), as transformers' `generate_merges`.
#[test]
fn merges_of_equal_score_rank_by_length_in_characters() {
    let tokens = [
        "<unk>", "<s>", "</s>", "▁", "x", "日", "z", "xx", "日z", "xx日",
    ];
    let scores = [0.0, 0.0, 0.0, -5.0, -6.0, -7.0, -8.0, -1.0, -2.0, -2.0];
    let tok = spm(
        "ties.gguf",
        &tokens,
        &[("tokenizer.ggml.scores", Kv::F32s(&scores))],
    )
    .unwrap();
    assert_eq!(tok.encode("xx日z").unwrap(), [1, 3, 9, 6]);
}

/// Scores that are missing, too few or not numbers, and SentencePiece variants wgpt does not
/// build, are errors naming the file and the key.
#[test]
fn bad_scores_are_clear_errors() {
    let err = |r: wgpt::Result<wgpt::Tokenizer>| r.err().expect("an error").to_string();
    let e = err(tiny("no_scores.gguf", &[]));
    assert!(
        e.starts_with("no_scores.gguf: ") && e.contains("no tokenizer.ggml.scores"),
        "{e}"
    );
    let short = ("tokenizer.ggml.scores", Kv::F32s(&SCORES[..5]));
    let e = err(tiny("short.gguf", &[short]));
    assert!(
        e.starts_with("short.gguf: ") && e.contains("has 5 tokenizer.ggml.scores for 8"),
        "{e}"
    );
    let words = ("tokenizer.ggml.scores", Kv::Strs(&["x"; 8]));
    let e = err(tiny("words.gguf", &[words]));
    assert!(
        e.starts_with("words.gguf: ") && e.contains("tokenizer.ggml.scores holds"),
        "{e}"
    );
    let nan = [f32::NAN; 8];
    let e = err(tiny(
        "nan.gguf",
        &[("tokenizer.ggml.scores", Kv::F32s(&nan))],
    ));
    assert!(e.contains("not a number"), "{e}");
    let gemma = ("general.architecture", Kv::Str("gemma2"));
    let g = Gguf::from_bytes(
        gguf(&[gemma, ("tokenizer.ggml.model", Kv::Str("llama"))]),
        Path::new("gemma.gguf"),
    )
    .unwrap();
    let e = g.tokenizer_json().unwrap_err().to_string();
    assert!(e.starts_with("gemma.gguf: ") && e.contains("gemma2"), "{e}");
}
