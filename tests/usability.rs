//! What a new user trips over: stop strings never reach the stream, prompts get the tokenizer's
//! special tokens (OPT's BOS) as in transformers, EOS comes from the model, an owned and an async
//! generator, library features without the CLI's crates, errors in the library's terms, hub ids
//! from the local cache, llama-bench's flags and formats, the CLI's help and completions.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use wgpt::{Error, GenerateOptions, Generator, LoadOptions, Model, Session, StopReason, Tokenizer};

fn wgpt_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgpt"));
    cmd.args(args)
        .env_remove("WGPT_ADAPTER")
        .env_remove("WGPT_MODEL")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run wgpt")
}

fn wgpt(args: &[&str]) -> Output {
    wgpt_env(args, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    (v.as_array().unwrap().iter())
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The JSON summary `--json` prints as the last line of stdout.
fn last_json(o: &Output) -> serde_json::Value {
    let out = text(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!("{e}: stdout {out:?}, stderr {}", text(&o.stderr));
    })
}

fn p(d: &Path) -> &str {
    d.to_str().unwrap()
}

/// The pieces a generation streams, and the generation.
fn stream(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> (Vec<String>, wgpt::Generation) {
    let mut s = Session::new(model).unwrap();
    let mut pieces = Vec::new();
    let g = wgpt::generate_ids(&mut s, Some(tok), prompt, opts, |ev| {
        pieces.push(ev.piece.clone())
    })
    .unwrap();
    (pieces, g)
}

/// Stop strings spanning several tokens, and pieces that straddle them, never reach the stream:
/// what is streamed is exactly the returned text, which ends before the stop string; a tail held
/// back because it could have begun a stop string comes out when it does not.
#[test]
fn stop_strings_never_reach_the_stream() {
    let dir = fixture("gpt2-tiny");
    let model = Model::load(gpu(), &dir, &LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let e = expected(&dir);
    let full = tok.decode(&e.greedy_ids).unwrap();
    let pieces: Vec<String> = (1..=e.greedy_ids.len())
        .map(|n| tok.decode(&e.greedy_ids[..n]).unwrap())
        .collect();
    // A stop string that starts inside one token's piece and ends inside a later one's.
    let (a, b) = (pieces[2].len() - 1, pieces[6].len() - 1);
    let stop = full[a..b].to_string();
    assert!(
        b - a > pieces[3].len() - pieces[2].len(),
        "spans several tokens"
    );
    let opts = GenerateOptions {
        max_tokens: 32,
        stop: vec!["never in this text \u{1F600}".into(), stop.clone()],
        stop_at_eos: false,
        ..Default::default()
    };
    let (streamed, g) = stream(&model, &tok, &e.prompt_ids, &opts);
    assert_eq!(g.stopped_by, StopReason::StopString);
    assert_eq!(g.text, full[..a]);
    assert_eq!(streamed.concat(), g.text, "the stream is the text, no more");
    assert!(streamed.iter().all(|p| !p.contains(&stop)));

    // A stop string whose start appears at the very end but never completes: the held tail is
    // released when the generation ends, so nothing is lost.
    let tail = &full[full.len() - 2..];
    let opts = GenerateOptions {
        stop: vec![format!("{tail}\u{1F600}")],
        ..opts
    };
    let (streamed, g) = stream(&model, &tok, &e.prompt_ids, &opts);
    assert_eq!(g.stopped_by, StopReason::MaxTokens);
    assert_eq!(
        (g.text.as_str(), streamed.concat()),
        (full.as_str(), full.clone())
    );
    assert!(streamed.last().unwrap().ends_with(tail), "{streamed:?}");

    // The CLI prints the same: the prompt, then the text before the stop string.
    let o = wgpt(&[
        "generate",
        "--model",
        p(&dir),
        "--prompt",
        &e.prompt,
        "-n",
        "32",
        "--stop",
        &stop,
        "--ignore-eos",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let (streamed, json) = out.rsplit_once('\n').unwrap().0.rsplit_once('\n').unwrap();
    let j: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(streamed, format!("{}{}", e.prompt, &full[..a]));
    assert_eq!(j["text"], full[..a]);
    assert!(
        !streamed.contains(&stop),
        "stdout leaked the stop string: {out}"
    );
}

/// OPT's tokenizer prepends `</s>`: prompts are encoded as transformers' `tok(prompt)` does,
/// and the logits and greedy tokens then match transformers'.
#[test]
fn prompts_get_the_tokenizers_special_tokens() {
    let dir = fixture("opt-bos");
    let e = expected(&dir);
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(e.prompt_ids[0], 384, "the fixture's BOS");
    assert_eq!(tok.encode(&e.prompt).unwrap(), e.prompt_ids);
    assert_eq!(tok.encode_plain(&e.prompt).unwrap(), e.prompt_ids[1..]);

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("l.npy");
    let o = wgpt(&[
        "logits",
        "--model",
        p(&dir),
        "--prompt",
        &e.prompt,
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (shape, got) = read_npy(&out);
    let (_, want) = read_npy(&dir.join("logits.npy"));
    let t = e.prompt_ids.len();
    assert_eq!(shape, [t as u64, 385]);
    let diff = max_abs_diff(&got, &want[..t * 385]);
    println!("opt-bos: max |logit - transformers| over the prompt = {diff:.2e}");
    // The decoder fixtures' bound (tests/model.rs: f32 kernels against PyTorch's f32).
    assert!(diff < 2e-4, "{diff}");

    let n = e.greedy_ids.len().to_string();
    let o = wgpt(&[
        "generate",
        "--model",
        p(&dir),
        "--prompt",
        &e.prompt,
        "-n",
        &n,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let j = last_json(&o);
    assert_eq!(json_ids(&j["prompt_ids"]), e.prompt_ids);
    assert_eq!(json_ids(&j["ids"]), e.greedy_ids);
}

/// A copy of gpt2-tiny whose end-of-sequence id is its sixth greedy token, named the way
/// `write` puts it (generation_config.json or config.json, one id or a list).
fn with_eos(write: impl FnOnce(&Path, u32)) -> (tempfile::TempDir, Vec<u32>) {
    let src = fixture("gpt2-tiny");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let e = expected(&src);
    let eos = e.greedy_ids[5];
    write(dir.path(), eos);
    let first = e.greedy_ids.iter().position(|&t| t == eos).unwrap();
    (dir, e.greedy_ids[..=first].to_vec())
}

/// Generation stops at the model's EOS by default (the README's and the examples' usage), from
/// generation_config.json (a list, as Llama 3 has) or config.json; the EOS piece is not text.
#[test]
fn eos_comes_from_the_model() {
    let e = expected(&fixture("gpt2-tiny"));
    fn in_generation_config(d: &Path, eos: u32) {
        let g = format!(r#"{{"eos_token_id": [7, {eos}], "bos_token_id": 1}}"#);
        std::fs::write(d.join("generation_config.json"), g).unwrap();
    }
    fn in_config(d: &Path, eos: u32) {
        let c = std::fs::read_to_string(d.join("config.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
        v["eos_token_id"] = serde_json::json!(eos);
        std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    }
    let cases: [fn(&Path, u32); 2] = [in_generation_config, in_config];
    for write in cases {
        let (dir, want) = with_eos(write);
        let model = Model::load(gpu(), dir.path(), &LoadOptions::default()).unwrap();
        assert!(model.config.eos_token_ids.contains(want.last().unwrap()));
        let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
        let opts = GenerateOptions {
            max_tokens: 32,
            ..Default::default()
        };
        let (_, g) = stream(&model, &tok, &e.prompt_ids, &opts);
        assert_eq!(g.stopped_by, StopReason::Eos);
        assert_eq!(g.ids, want);
        assert_eq!(g.text, tok.decode(&want[..want.len() - 1]).unwrap());
        // The CLI too, and --ignore-eos goes on.
        let args = [
            "generate",
            "--model",
            p(dir.path()),
            "--prompt",
            &e.prompt,
            "-n",
            "32",
        ];
        let o = wgpt(&[&args[..], &["--json"]].concat());
        let j = last_json(&o);
        assert_eq!(json_ids(&j["ids"]), want);
    }
}

/// An owned generator moves to another thread and gives the session back; the async stream
/// gives the same events as the iterator.
#[test]
fn owned_and_async_generators() {
    let dir = fixture("gpt2-tiny");
    let model = Model::load(gpu(), &dir, &LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let e = expected(&dir);
    let opts = GenerateOptions {
        max_tokens: 12,
        stop_at_eos: false,
        ..Default::default()
    };
    let (pieces, want) = stream(&model, &tok, &e.prompt_ids, &opts);

    let owned: wgpt::OwnedGenerator = Generator::new(
        Session::new(&model).unwrap(),
        Some(&tok),
        &e.prompt_ids,
        &opts,
    )
    .unwrap();
    let handle = std::thread::spawn(move || {
        let mut g = owned;
        let got: Vec<String> = g.by_ref().map(|ev| ev.unwrap().piece).collect();
        (got, g.into_parts())
    });
    let (got, (session, generation)) = handle.join().unwrap();
    assert_eq!(
        (got, generation.ids.clone()),
        (pieces.clone(), want.ids.clone())
    );
    // The last token is chosen but not fed back: the session holds the prompt and the rest.
    assert_eq!(session.position(), e.prompt_ids.len() + want.ids.len() - 1);

    let mut g = Generator::new(
        Session::new(&model).unwrap(),
        Some(&tok),
        &e.prompt_ids,
        &opts,
    )
    .unwrap();
    let mut got = Vec::new();
    pollster::block_on(async {
        use futures_core::Stream;
        while let Some(ev) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut g).poll_next(cx)).await
        {
            got.push(ev.unwrap().piece);
        }
    });
    assert_eq!(got, pieces);
    assert_eq!(g.into_generation().ids, want.ids);
}

/// The library without default features pulls in none of the CLI's crates.
#[test]
fn library_features_leave_the_cli_out() {
    let o = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-e",
            "normal",
            "--no-default-features",
            "--prefix",
            "none",
        ])
        .args([
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ])
        .arg("--offline")
        .output()
        .expect("cargo tree");
    let tree = text(&o.stdout);
    assert!(
        o.status.success() && tree.starts_with("wgpt "),
        "{}",
        text(&o.stderr)
    );
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    for cli in [
        "clap",
        "clap_complete",
        "anyhow",
        "indicatif",
        "ctrlc",
        "env_logger",
        "npyz",
        "eframe",
    ] {
        assert!(
            !crates.contains(&cli),
            "{cli} is a library dependency:\n{tree}"
        );
    }
}

/// Library errors are variants a caller can match, in the library's terms: no CLI flags.
#[test]
fn errors_speak_the_librarys_api() {
    let dir = fixture("gpt2-tiny");
    let model = Model::load(gpu(), &dir, &LoadOptions::default()).unwrap();
    let mut s = Session::new(&model).unwrap();
    let bad = wgpt::Sampling {
        temperature: -1.0,
        ..Default::default()
    };
    let mut errors = vec![];
    let e = bad.validate().unwrap_err();
    assert!(
        matches!(
            &e,
            Error::InvalidOption {
                option: "Sampling::temperature",
                ..
            }
        ),
        "{e}"
    );
    errors.push(e);
    let long = GenerateOptions {
        max_tokens: 60,
        ..Default::default()
    };
    let e = Generator::new(&mut s, None, &[1; 10], &long).err().unwrap();
    assert!(
        matches!(
            e,
            Error::PromptTooLong {
                prompt_tokens: 10,
                max_tokens: 60,
                n_ctx: 64
            }
        ),
        "{e}"
    );
    errors.push(e);
    let e = s.next_token(&[], wgpt::Pick::Greedy).unwrap_err();
    assert!(matches!(e, Error::EmptyPrompt), "{e}");
    errors.push(e);
    let e = s.next_token(&[9999], wgpt::Pick::Greedy).unwrap_err();
    assert!(matches!(e, Error::TokenOutOfRange { id: 9999, .. }), "{e}");
    errors.push(e);
    let e = s.wait().unwrap_err();
    assert!(matches!(e, Error::SessionState(_)), "{e}");
    errors.push(e);
    let odd = LoadOptions {
        dtype: wgpt::WeightDtype::Q8,
        ..Default::default()
    };
    let e = Model::load(gpu(), &fixture("gpt2-odd"), &odd)
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::DtypeUnsupported { dtype: "q8", .. }),
        "{e}"
    );
    errors.push(e);
    errors.push("q3".parse::<wgpt::WeightDtype>().unwrap_err());
    errors.push(
        Model::load(gpu(), Path::new("/no/such/folder"), &odd)
            .err()
            .unwrap(),
    );
    for e in &errors {
        assert!(
            !e.to_string().contains("--"),
            "a CLI flag in a library error: {e}"
        );
    }
    // The CLI names its flags.
    let o = wgpt(&["generate", "--prompt", "hi", "--temperature=-1"]);
    assert!(
        text(&o.stderr).contains("hint: set --temperature"),
        "{}",
        text(&o.stderr)
    );
    let o = wgpt(&["generate", "--model", p(&dir), "--prompt", "hi", "-n", "99"]);
    assert!(
        text(&o.stderr).contains("--max-tokens"),
        "{}",
        text(&o.stderr)
    );
}

/// A Hugging Face cache holding `dir` as `models--ORG--NAME` at revision `rev` (refs/main).
fn hub_cache(dir: &Path, id: &str, rev: &str) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache
        .path()
        .join(format!("models--{}", id.replace('/', "--")));
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, snap.join(f.file_name().unwrap())).unwrap();
    }
    cache
}

/// `--model ORG/NAME` resolves offline in the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub);
/// a miss names the folders searched and how to download; WGPT_MODEL sets the default.
#[test]
fn hub_ids_resolve_from_the_local_cache() {
    let dir = fixture("gpt2-tiny");
    let e = expected(&dir);
    let cache = hub_cache(&dir, "wgpt-test/gpt2-tiny", "0123abcd");
    let n = e.greedy_ids.len().to_string();
    let args = [
        "generate",
        "--prompt",
        &e.prompt,
        "-n",
        &n,
        "--ignore-eos",
        "--json",
    ];
    let run = |model: &str, env: &[(&str, &Path)]| {
        let mut a = args.to_vec();
        a.extend(["--model", model]);
        let o = wgpt_env(&a, env);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let j = last_json(&o);
        json_ids(&j["ids"])
    };
    assert_eq!(
        run("wgpt-test/gpt2-tiny", &[("HF_HUB_CACHE", cache.path())]),
        e.greedy_ids
    );
    let home = tempfile::tempdir().unwrap();
    std::fs::rename(cache.path(), home.path().join("hub")).unwrap();
    assert_eq!(
        run("wgpt-test/gpt2-tiny", &[("HF_HOME", home.path())]),
        e.greedy_ids
    );
    assert_eq!(
        run("wgpt-test/gpt2-tiny@0123abcd", &[("HF_HOME", home.path())]),
        e.greedy_ids
    );

    let o = wgpt_env(
        &["info", "--model", "wgpt-test/absent"],
        &[("HF_HOME", home.path())],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&home.path().join("hub").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("huggingface-cli download wgpt-test/absent"),
        "{err}"
    );

    let o = wgpt_env(&args, &[("WGPT_MODEL", &dir)]);
    let j = last_json(&o);
    assert_eq!(json_ids(&j["ids"]), e.greedy_ids, "WGPT_MODEL");
}

/// llama-bench's flags (-p, -n, -r) and output formats (-o md|csv|json|jsonl): rows pp<N> and
/// tg<N>, t/s as mean ± sd over the repetitions.
#[test]
fn bench_speaks_llama_bench() {
    let dir = fixture("gpt2-tiny");
    let bench = |fmt: &str| {
        let o = wgpt(&[
            "bench",
            "-m",
            p(&dir),
            "-p",
            "8,16",
            "-n",
            "4",
            "-r",
            "2",
            "-o",
            fmt,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let md = bench("md");
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 2 + 3, "{md}");
    assert!(
        lines[0].contains(" test |") && lines[0].contains(" t/s |"),
        "{md}"
    );
    assert!(
        lines[2].starts_with("| gpt2-tiny F32 "),
        "the folder's name: {md}"
    );
    assert!(
        lines[1].starts_with("| ---") && lines[1].contains(": |"),
        "{md}"
    );
    for (row, test) in lines[2..].iter().zip(["pp8", "pp16", "tg4"]) {
        assert!(
            row.contains(&format!(" {test} |")) && row.contains(" ± "),
            "{md}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&bench("json")).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[1]["n_prompt"].as_u64(), rows[1]["n_gen"].as_u64()),
        (Some(16), Some(0))
    );
    assert_eq!(
        (rows[2]["n_prompt"].as_u64(), rows[2]["n_gen"].as_u64()),
        (Some(0), Some(4))
    );
    for r in rows {
        let ts: Vec<f64> = (r["samples_ts"].as_array().unwrap().iter())
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(ts.len(), 2);
        let mean = (ts[0] + ts[1]) / 2.0;
        assert!(
            (r["avg_ts"].as_f64().unwrap() - mean).abs() < 1e-6 * mean,
            "{r}"
        );
        // The sample standard deviation of two values is |a - b| / sqrt(2).
        let sd = (ts[0] - ts[1]).abs() / 2f64.sqrt();
        assert!(
            (r["stddev_ts"].as_f64().unwrap() - sd).abs() < 1e-6 * mean.max(1.0),
            "{r}"
        );
    }
    let csv = bench("csv");
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("build_commit,") && csv.lines().nth(3).unwrap().contains("\"4\""));
    let jsonl = bench("jsonl");
    assert_eq!(jsonl.lines().count(), 3);
    assert!(
        jsonl
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
}

/// The help speaks of every family and shows examples; completions for the shells.
#[test]
fn cli_help_and_completions() {
    let help = text(&wgpt(&["--help"]).stdout);
    assert!(help.contains("OPT") && help.contains("BERT") && !help.contains("GPT-2 inference"));
    assert!(
        help.contains("Examples:") && help.contains("WGPT_MODEL"),
        "{help}"
    );
    let help = text(&wgpt(&["generate", "--help"]).stdout);
    assert!(
        help.contains("hub id") && help.contains("[env: WGPT_MODEL=]"),
        "{help}"
    );
    let prompt = (help
        .lines()
        .skip_while(|l| !l.contains("-p, --prompt <PROMPT>")))
    .nth(1)
    .unwrap_or("");
    assert!(
        prompt.contains("The text to continue"),
        "--prompt has help:\n{help}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let o = wgpt(&["completions", shell]);
        let script = text(&o.stdout);
        assert!(
            o.status.success() && script.contains("generate") && script.contains("--max-tokens"),
            "{shell}"
        );
    }
}

/// tokenizers' own streaming decoder (`decode_stream`) gives the same pieces as the library's
/// stream, whose state it runs, on every tokenizer case.
#[test]
fn token_stream_is_tokenizers_decode_stream() {
    let dir = fixture("gpt2-tiny");
    let ours = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let theirs = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_cases.json")).unwrap())
            .unwrap();
    let mut n = 0;
    for case in cases["cases"].as_array().unwrap() {
        let ids = ours.encode(case["text"].as_str().unwrap()).unwrap();
        let mut a = ours.stream();
        let mut b = theirs.decode_stream(false);
        for &id in &ids {
            assert_eq!(a.push(&ours, id).unwrap(), b.step(id).unwrap(), "{case}");
            n += 1;
        }
    }
    assert!(n > 100, "{n} tokens compared");
}
