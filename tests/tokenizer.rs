//! Tokenization equals transformers' on edge cases, and streaming decode reassembles the text,
//! multi-byte characters split across tokens included.

mod common;

use common::*;
use wgpt::Tokenizer;

#[test]
fn ids_and_streaming_decode_match_transformers() {
    let tok = Tokenizer::from_file(&fixture("gpt2-tiny").join("tokenizer.json")).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_cases.json")).unwrap())
            .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut split_chars = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "ids of {text:?}");
        let decoded = tok.decode(&ids).unwrap();
        assert_eq!(
            decoded,
            case["decoded"].as_str().unwrap(),
            "decode of {text:?}"
        );

        let mut stream = tok.stream();
        let mut pieces = String::new();
        for &id in &ids {
            match stream.push(&tok, id).unwrap() {
                Some(p) => {
                    assert!(
                        !p.contains('\u{FFFD}'),
                        "piece with a partial character for {text:?}"
                    );
                    pieces.push_str(&p)
                }
                None => split_chars += 1,
            }
        }
        if let Some(rest) = stream.finish(&tok).unwrap() {
            pieces.push_str(&rest);
        }
        assert_eq!(pieces, decoded, "streamed pieces of {text:?}");
    }
    // The cases hold characters of 2-4 bytes that this small vocabulary splits across tokens.
    assert!(
        split_chars > 0,
        "no token was held back: the split-character path went untested"
    );
    println!(
        "{} cases; {split_chars} tokens held back until their character completed",
        cases.len()
    );
}
