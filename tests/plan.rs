//! The planner and its fusion rules: every family's fixtures give the same outputs with every
//! rule on and every rule off (and transformers' outputs both ways); each rule fires where its
//! guard holds and can be switched off alone; every family's graph has a CPU twin
//! (`reference::run`) that matches transformers; `WGPT_FUSE` parses or names the fix.

mod common;

use std::process::Command;

use common::*;
use wgpt::{
    Config, EncoderModel, Fusions, LoadOptions, Model, Rule, Session, WeightDtype, WeightLayout,
};

/// Logits within this of transformers' (as tests/model.rs: f32 sums over C <= 64 in another
/// order than PyTorch's give ~1e-5 on logits reaching |66|).
const LOGIT_TOL: f32 = 1e-3;

/// Every decoder fixture: GPT-2 (f32, f16, bf16, odd shapes), OPT pre- and post-LN, OPT with
/// a BOS-adding tokenizer, XGLM, and the Llama family (GQA, MQA with llama3 scaling and every
/// bias, Mistral with HS != C / NH, Qwen2's q/k/v biases, Phi-3's fused projections).
const DECODERS: &[&str] = &[
    "gpt2-tiny",
    "gpt2-odd",
    "gpt2-f16-noprefix",
    "gpt2-bf16",
    "opt-tiny",
    "opt-postln",
    "opt-bos",
    "xglm-tiny",
    "llama-gqa",
    "llama3-mqa",
    "mistral-hd",
    "qwen2-tiny",
    "phi3-tiny",
];

#[test]
fn every_rule_on_and_off_matches_transformers() {
    for name in DECODERS {
        let dir = fixture(name);
        let e = expected(&dir);
        let (_, want) = read_npy(&dir.join("logits.npy"));
        for layout in [WeightLayout::Buffer, WeightLayout::Texture] {
            let mut outs = Vec::new();
            for fuse in [Fusions::all(), Fusions::none()] {
                let opts = LoadOptions {
                    layout,
                    fuse: Some(fuse),
                    ..Default::default()
                };
                // Shapes the texture layout cannot take (gpt2-odd) are refused at load.
                let Ok(model) = Model::load(gpu(), &dir, &opts) else {
                    assert_eq!(
                        layout,
                        WeightLayout::Texture,
                        "{name}: the buffer layout loads"
                    );
                    continue;
                };
                let got = Session::new(&model)
                    .unwrap()
                    .logits(&full_sequence(&e))
                    .unwrap();
                let diff = max_abs_diff(&got, &want);
                println!(
                    "{name} {layout:?} {:?}: max |logit - transformers| = {diff:.2e}",
                    fuse.names()
                );
                assert!(diff < LOGIT_TOL, "{name} {layout:?} {fuse:?}: {diff}");
                assert_eq!(
                    greedy(&model, &e.prompt_ids, 16),
                    e.greedy_ids[..16],
                    "{name}"
                );
                outs.push(got);
            }
            if let [on, off] = &outs[..] {
                // Fused and unfused kernels sum in different orders: f32 rounding only.
                assert!(
                    max_abs_diff(on, off) < LOGIT_TOL,
                    "{name} {layout:?}: on vs off"
                );
            }
        }
    }
}

/// The whole-model CPU twin of every decoder family, the graph interpreted on the CPU.
#[test]
fn every_family_has_a_cpu_twin() {
    for name in DECODERS {
        let dir = fixture(name);
        let e = expected(&dir);
        let (_, want) = read_npy(&dir.join("logits.npy"));
        let cfg = Config::from_file(&dir.join("config.json")).unwrap();
        let ckpt = wgpt::Checkpoint::open(&dir).unwrap();
        let host = wgpt::loader::load_host_weights(&ckpt, &cfg).unwrap();
        let cpu = wgpt::reference::forward(&cfg, &host, &full_sequence(&e));
        let diff = max_abs_diff(&cpu, &want);
        println!("{name}: CPU twin, max |logit - transformers| = {diff:.2e}");
        assert!(diff < LOGIT_TOL, "{name}: {diff}");
    }
}

/// A random GPT-2 checkpoint where every rule's guard holds on lavapipe (texture layout,
/// subgroups of 8, HS = 64, f16 weights): all rules on, each one off alone, and all off give
/// the same logits over a prefill and decode steps and the same greedy tokens, and each rule
/// changes the plan it names by the dispatches it saves.
#[test]
fn each_rule_fires_and_can_be_switched_off() {
    let (v, n_ctx, c, l, nh, inner) = (500, 64, 128, 2, 2, 512);
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(dir.path(), &random_gpt2(v, n_ctx, c, l, inner, 7));
    std::fs::write(
        dir.path().join("config.json"),
        gpt2_config_json(v, n_ctx, c, l, nh, inner),
    )
    .unwrap();
    let run = |fuse: Fusions| {
        let opts = LoadOptions {
            dtype: WeightDtype::F16,
            layout: WeightLayout::Texture,
            fuse: Some(fuse),
            ..Default::default()
        };
        let model = Model::load(gpu(), dir.path(), &opts).unwrap();
        let mut s = Session::new(&model).unwrap();
        let mut logits = s.logits(&(0..9).collect::<Vec<u32>>()).unwrap();
        let mut next = wgpt::reference::argmax(&logits[logits.len() - v..]);
        for _ in 0..4 {
            let row = s.logits(&[next]).unwrap();
            next = wgpt::reference::argmax(&row);
            logits.extend(row);
        }
        let count = |rows, kernel| s.kernels(rows).iter().filter(|&&k| k == kernel).count();
        let plan = [
            s.dispatches_per_token(),
            count(9, "layernorm_texture"),
            count(1, "argmax_partials"),
        ];
        (logits, plan, greedy(&model, &[1, 2, 3, 4, 5], 8))
    };
    let (want, [all, norms, partials], tokens) = run(Fusions::all());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    println!("all rules: {all} dispatches per token, logits up to {scale:.2}");
    assert_eq!(partials, 1, "head_argmax picks from the candidates");
    assert_eq!(
        norms,
        2 * l,
        "norm_texture writes every pre-LN norm's texture"
    );
    for rule in Rule::ALL.into_iter().map(Some).chain([None]) {
        let fuse = rule.map_or(Fusions::none(), |r| Fusions::all().set(r, false));
        let (got, [n, c, p], t) = run(fuse);
        let diff = max_abs_diff(&got, &want);
        println!(
            "{:?}: {n} dispatches per token, {c} texture-writing norms in a 9-token step, max |logit - all rules| = {diff:.2e}",
            fuse.names()
        );
        // Folding a norm's gain into f16 weights rounds them once more (a relative 2^-11 per
        // weight, ~1e-3 of the logits' scale over C = 128 terms); the other rules reorder f32
        // sums only.
        let tol = match rule {
            Some(Rule::FoldNorm) | None => 2e-3 * scale,
            Some(_) => 1e-4,
        };
        assert!(diff < tol, "{fuse:?}: {diff} (tolerance {tol})");
        assert_eq!(t, tokens, "{fuse:?}");
        // Decode dispatches each rule saves (L = 2): the attention's, the norms' (fold_norm),
        // the epilogues'. qkv_append takes over when qkv_attend is off and saves as many as it
        // (the cache append); head_argmax swaps the argmax for a smaller one; norm_texture
        // works on multi-row steps.
        let saved = match rule {
            Some(Rule::QkvAttend) => 2,
            Some(Rule::FoldNorm) => 4,
            Some(Rule::Epilogue) => 6,
            // GPT-2 has neither a gated feed-forward nor rotary embeddings.
            Some(
                Rule::QkvAppend
                | Rule::HeadArgmax
                | Rule::NormTexture
                | Rule::GateEpilogue
                | Rule::RopeAttend,
            ) => 0,
            None => 2 * 2 + 4 + 6,
        };
        assert_eq!(n, all + saved, "{fuse:?}");
        // Without norm_texture the pre-LN norms write buffers, copied into textures after; the
        // greedy argmax reads V logits without head_argmax.
        let norm_texture = !matches!(rule, Some(Rule::NormTexture) | None);
        assert_eq!(c, if norm_texture { norms } else { 0 }, "{fuse:?}");
        let head_argmax = matches!(rule, Some(Rule::HeadArgmax) | None);
        assert_eq!(p, if head_argmax { 0 } else { 1 }, "{fuse:?}");
    }
    // qkv_append, covered by qkv_attend above, saves the cache append when it stands alone.
    let without_attend = Fusions::all().set(Rule::QkvAttend, false);
    let (_, [n, _, _], _) = run(without_attend.set(Rule::QkvAppend, false));
    assert_eq!(n, all + 2 + 2, "-qkv_attend,-qkv_append");
}

/// The Llama family's rules, each switched off alone on a GQA fixture in both layouts: the
/// same logits over a prefill and decode steps, the same greedy tokens, and the plan longer by
/// what the rule saves (gate_epilogue the gate, rope_attend the rope, one dispatch per layer).
#[test]
fn llama_rules_fire_and_can_be_switched_off() {
    let dir = fixture("llama-gqa");
    let e = expected(&dir);
    let l = 2;
    for layout in [WeightLayout::Buffer, WeightLayout::Texture] {
        let run = |fuse: Fusions| {
            let opts = LoadOptions {
                layout,
                fuse: Some(fuse),
                ..Default::default()
            };
            let model = Model::load(gpu(), &dir, &opts).unwrap();
            let mut s = Session::new(&model).unwrap();
            let logits = s.logits(&full_sequence(&e)).unwrap();
            let plan = s.dispatches_per_token();
            (logits, plan, greedy(&model, &e.prompt_ids, 8))
        };
        let (want, all, tokens) = run(Fusions::all());
        for rule in [Rule::GateEpilogue, Rule::RopeAttend] {
            let (got, n, t) = run(Fusions::all().set(rule, false));
            let diff = max_abs_diff(&got, &want);
            println!(
                "llama-gqa {layout:?} -{}: {n} dispatches per token (all: {all}), max |logit diff| = {diff:.2e}",
                rule.name()
            );
            // The same f32 arithmetic in other kernels: cos and sin of the same angles, the
            // same products; only the order of a few sums may differ.
            assert!(diff < 1e-4, "{rule:?}: {diff}");
            assert_eq!(t, tokens, "{rule:?}");
            assert_eq!(n, all + l, "{rule:?} saves one dispatch per layer");
        }
    }
}

/// qkv_attend on a rotary model with grouped-query heads (llama3-mqa: HS = 64, two query heads
/// on one key head, llama3's rope scaling, every bias), texture layout: the decode GEMV runs the
/// rope and the attention, the output projection appends to the cache; the same logits over a
/// prefill and decode steps as with the rule off, the same greedy tokens as transformers, and
/// two dispatches fewer per layer (kv_append and attention).
#[test]
fn qkv_attend_takes_the_rope_and_grouped_heads() {
    let dir = fixture("llama3-mqa");
    let e = expected(&dir);
    let l = 2;
    let run = |fuse: Fusions| {
        let opts = LoadOptions {
            layout: WeightLayout::Texture,
            fuse: Some(fuse),
            ..Default::default()
        };
        let model = Model::load(gpu(), &dir, &opts).unwrap();
        let mut s = Session::new(&model).unwrap();
        let mut logits = s.logits(&e.prompt_ids).unwrap();
        let v = model.config.vocab_size;
        let mut next = wgpt::reference::argmax(&logits[logits.len() - v..]);
        for _ in 0..6 {
            let row = s.logits(&[next]).unwrap();
            next = wgpt::reference::argmax(&row);
            logits.extend(row);
        }
        let fused = s.kernels(1).contains(&"gemv_texture_attention");
        let greedy = greedy(&model, &e.prompt_ids, 16);
        (logits, s.dispatches_per_token(), fused, greedy)
    };
    let (want, all, fused, tokens) = run(Fusions::all());
    let (got, n, off, t) = run(Fusions::all().set(Rule::QkvAttend, false));
    let diff = max_abs_diff(&got, &want);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    println!(
        "llama3-mqa: {all} dispatches per token with qkv_attend, {n} without; max |logit diff| = \
         {diff:.2e} of logits up to {scale:.1}"
    );
    assert!(
        fused && !off,
        "qkv_attend fires on HS = 64 and only when on"
    );
    // The same f32 arithmetic in another order (the GEMV's sums, the online softmax's blocks,
    // cos and sin of the same angles): a few f32 roundings of the logits' scale through two
    // layers of C = 128.
    assert!(diff < 1e-5 * scale, "{diff}");
    assert_eq!(t, tokens);
    assert_eq!(tokens, e.greedy_ids[..16], "transformers' greedy tokens");
    assert_eq!(n, all + 2 * l, "kv_append and attention, per layer");
}

/// all-MiniLM-L6-v2 with every rule on and off: the same embeddings.
#[test]
fn encoder_rules_on_and_off_match() {
    let texts = [
        "A cat sits on the mat.",
        "wgpt runs transformers on any GPU",
        "x",
    ];
    let embed = |fuse| {
        let opts = LoadOptions {
            fuse: Some(fuse),
            ..Default::default()
        };
        let model = EncoderModel::load(gpu(), &minilm_dir(), &opts).unwrap();
        model.embed(&texts).unwrap().data
    };
    let diff = max_abs_diff(&embed(Fusions::all()), &embed(Fusions::none()));
    println!("MiniLM: max |embedding(all) - embedding(none)| = {diff:.2e}");
    // Unit vectors from six layers of f32 sums in two orders.
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn fusion_lists_parse() {
    let all = Fusions::all();
    for (text, want) in [
        ("all", all),
        ("none", Fusions::none()),
        ("-qkv_attend", all.set(Rule::QkvAttend, false)),
        (
            "-qkv_attend, -fold_norm",
            all.set(Rule::QkvAttend, false).set(Rule::FoldNorm, false),
        ),
        (
            "epilogue,head_argmax",
            Fusions::none()
                .set(Rule::Epilogue, true)
                .set(Rule::HeadArgmax, true),
        ),
        (
            "none,+norm_texture",
            Fusions::none().set(Rule::NormTexture, true),
        ),
    ] {
        assert_eq!(text.parse::<Fusions>().unwrap(), want, "{text}");
    }
    for r in Rule::ALL {
        assert_eq!(r.name().parse::<Fusions>().unwrap().names(), [r.name()]);
    }
    let e = "-qkv_atend".parse::<Fusions>().unwrap_err().to_string();
    assert!(
        e.contains("WGPT_FUSE") && e.contains("qkv_attend") && e.contains("fold_norm"),
        "{e}"
    );
}

/// `WGPT_FUSE` reaches the CLI's loads: a bad value is one clear error, `none` plans more
/// dispatches than the default.
#[test]
fn wgpt_fuse_switches_rules_for_the_cli() {
    let bench = |fuse: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_wgpt"))
            .args([
                "bench",
                "-m",
                "assets/default",
                "--dtype",
                "f16",
                "-p",
                "4",
                "-n",
                "2",
                "-r",
                "1",
                "--json",
            ])
            .env("WGPT_FUSE", fuse)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, _, err) = bench("-nope");
    assert!(
        !ok && err.contains("WGPT_FUSE") && err.contains("qkv_attend"),
        "{err}"
    );
    let count = |out: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(out).expect("the JSON report");
        let runs = v["runs"].as_array().expect("runs");
        runs[0]["dispatches_per_token"].as_u64().unwrap()
    };
    let (ok_all, all, e1) = bench("all");
    let (ok_none, none, e2) = bench("none");
    assert!(ok_all && ok_none, "{e1}\n{e2}");
    assert!(
        count(&none) > count(&all),
        "none: {}, all: {}",
        count(&none),
        count(&all)
    );
}
