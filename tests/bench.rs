//! `wgpt bench`: the JSON report follows its schema, on a model folder and on a random shape, and
//! `--compare` lines reports up.

mod common;

use std::process::Command;

use common::*;

fn wgpt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .args(args)
        .output()
        .expect("run wgpt")
}

#[test]
fn bench_json_follows_schema_and_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.json");
    let dir = fixture("gpt2-tiny");
    let o = wgpt(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-len",
        "7,20",
        "--gen",
        "5",
        "--repeat",
        "2",
        "--json",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let r: wgpt::bench::Report = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(r.schema, wgpt::bench::SCHEMA);
    assert_eq!(r.model.n_layer, 2);
    assert_eq!(r.runs.len(), 2);
    // The texture layout with subgroups of 8 (lavapipe) appends K and V in the c_attn GEMV and,
    // for pre-LN GPT-2 with f16 or q8 weights, fuses ln_1 and ln_2 into the c_attn and c_fc
    // GEMVs.
    let fused = r.model.layout == "texture" && wgpt::gpu::kernels::subgroups_of_8(&gpu());
    let norms_fused = fused && r.model.dtype != "f32";
    // The copy bandwidth is always measured, and decode's share of that bound follows from it.
    let copy = r.copy_gb_s.expect("copy bandwidth measured");
    assert!(copy > 0.0);
    for run in &r.runs {
        assert!(run.prefill_tok_s > 0.0 && run.decode_tok_s > 0.0 && run.ttft_ms > 0.0);
        let share = run.decode_weight_gb_s / copy;
        assert!(
            (run.decode_of_copy_bound - share).abs() <= 1e-9 * share,
            "{run:?}"
        );
        assert!(run.ms_per_token_p90 >= run.ms_per_token_p50);
        // embed + 8 per block (ln_1, c_attn, kv_append, attention, c_proj + residual, ln_2,
        // c_fc + gelu, c_proj + residual; 7 or 5 fused) x 2 + ln_f + head + argmax
        let per_block = match (fused, norms_fused) {
            (true, true) => 5,
            (true, false) => 7,
            _ => 8,
        };
        assert_eq!(run.dispatches_per_token, 1 + per_block * 2 + 2 + 1);
    }
    assert!(r.vram_bytes > 0 && r.model.params > 0);
    if r.kernel_timing == "gpu-timestamps" {
        let names: Vec<&str> = r
            .kernels_decode_ms
            .iter()
            .map(|k| k.kernel.as_str())
            .collect();
        // gpt2-tiny's widths allow textures, which auto picks on CPU adapters.
        let want = if r.model.layout == "texture" {
            [
                "embed",
                "layernorm",
                "gemv_texture",
                if fused {
                    "gemv_texture"
                } else {
                    "kv_append_texture"
                },
                "attention_texture",
                // The head's GEMV leaves per-workgroup candidates for the greedy pick.
                if fused { "argmax_partials" } else { "argmax" },
            ]
        } else {
            [
                "embed",
                "layernorm",
                "gemv",
                "kv_append",
                "attention",
                "argmax",
            ]
        };
        for k in want {
            assert!(names.contains(&k), "{k} missing from {names:?}");
        }
    }
    // The file holds the same report, and the raw JSON has every documented top-level field.
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    for f in [
        "schema",
        "adapter",
        "model",
        "load_s",
        "vram_bytes",
        "runs",
        "kernel_timing",
        "kernels_decode_ms",
        "copy_gb_s",
    ] {
        assert!(v.get(f).is_some(), "{f} missing");
    }
    assert!(v["runs"][0].get("decode_of_copy_bound").is_some());

    // A random shape needs no folder.
    let b = tmp.path().join("b.json");
    let o = wgpt(&[
        "bench",
        "--shape",
        "gpt2",
        "--prompt-len",
        "4",
        "--gen",
        "2",
        "--repeat",
        "1",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("random:gpt2") && out.contains("L=12 C=768"),
        "{out}"
    );
    // GPT-2's vocabulary (V = 50257: head texture chunks whose last is not a multiple of 4 rows)
    // still takes the greedy pick from the head's candidates; its head size (64) lets decode's
    // qkv projection run the attention: per block ln_1, c_attn + attention, c_proj + residual
    // (appending K and V), ln_2, c_fc + gelu, c_proj + residual (f32 keeps its norms).
    let rb: wgpt::bench::Report =
        serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    if rb.model.layout == "texture" && fused && rb.kernel_timing == "gpu-timestamps" {
        let names: Vec<&str> = (rb.kernels_decode_ms.iter())
            .map(|k| k.kernel.as_str())
            .collect();
        assert!(names.contains(&"argmax_partials"), "{names:?}");
        assert!(names.contains(&"gemv_texture_attention"), "{names:?}");
        assert!(!names.contains(&"attention_texture"), "{names:?}");
        // embed and head (each once per texture chunk of the token table, which the tied
        // head holds) + 6 x 12 + ln_f + argmax.
        let head = 50257usize.div_ceil(gpu().limits.max_texture_dimension_2d as usize);
        assert_eq!(
            rb.runs[0].dispatches_per_token,
            head + 6 * 12 + 1 + head + 1
        );
    }

    let o = wgpt(&[
        "bench",
        "--compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert_eq!(table.lines().count(), 1 + 2 + 1, "{table}");
    assert!(
        table.contains("L12 C768 f32") && table.contains("L2 C64 f32"),
        "{table}"
    );
    // Every row shows decode's share of the copy bound.
    assert_eq!(table.matches('%').count(), 3, "{table}");

    // A report without the copy bandwidth (an older wgpt, or tools/torch_bench.py) still
    // compares, its share left blank.
    let mut old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("copy_gb_s");
    for run in old["runs"].as_array_mut().unwrap() {
        run.as_object_mut().unwrap().remove("decode_of_copy_bound");
    }
    let c = tmp.path().join("c.json");
    std::fs::write(&c, old.to_string()).unwrap();
    let o = wgpt(&["bench", "--compare", c.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert_eq!(table.lines().count(), 1 + 2, "{table}");
    assert!(!table.contains('%'), "{table}");

    // Bad input: unknown shape, a prompt longer than the context, a file that is not a report.
    let o = wgpt(&["bench", "--shape", "gpt5"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown --shape"));
    let o = wgpt(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-len",
        "60",
        "--gen",
        "10",
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("n_positions = 64"));
    let o = wgpt(&[
        "bench",
        "--compare",
        dir.join("config.json").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("not a wgpt bench report")
    );
}

/// The kernel microbenchmarks run every family, on a narrow width so the test stays quick.
#[test]
fn kernel_microbenchmarks_cover_every_family() {
    let gpu = gpu();
    let mut rows = Vec::new();
    for textures in [false, true] {
        for dtype in [
            wgpt::gpu::tensor::WeightDtype::F16,
            wgpt::gpu::tensor::WeightDtype::Q8,
        ] {
            let (copy, r) = wgpt::bench::kernels(&gpu, dtype, textures, 64).unwrap();
            assert!(copy > 0.0);
            rows.extend(r);
        }
    }
    for k in [
        "gemv",
        "matmul",
        "attention",
        "gemv_texture",
        "matmul_texture",
        "attention_texture",
        "layernorm",
        "layernorm_rows",
        "layernorm_rows_texture",
    ] {
        assert!(rows.iter().any(|r| r.kernel == k), "{k} missing");
    }
    // Decode's qkv projection with the attention fused in, over contexts 1 to 1024, where the
    // adapter builds it (lavapipe does).
    if wgpt::gpu::kernels::attends_in_gemv(&gpu, Some(64)) {
        let n = (rows.iter())
            .filter(|r| r.kernel == "gemv_texture_attention")
            .count();
        assert_eq!(n, 2 * 4, "two dtypes, four contexts");
    }
    for r in &rows {
        assert!(r.ms > 0.0 && r.gb_s > 0.0 && r.gflop_s > 0.0, "{r:?}");
        println!(
            "{} {}: {:.3} ms, {:.2} GB/s ({:.0}% of copy)",
            r.kernel,
            r.shape,
            r.ms,
            r.gb_s,
            100.0 * r.of_copy_bandwidth
        );
    }
    assert!(wgpt::bench::kernels(&gpu, wgpt::gpu::tensor::WeightDtype::F32, false, 60).is_err());
}

/// Loading streams: a checkpoint's weights pass through two staging buffers and the file pages
/// of rows read are given back, so what a load holds beyond the weights (`wgpt bench`'s split
/// of peak host memory) is the process itself. A 120 MB f32 checkpoint, most of it a 96 MiB tied
/// token table, costs at most 0.1x its size more than the 17 MB embedded model does (measured
/// 92 MB against 105: less); with the table's pages kept until it is uploaded, 188 MB.
#[test]
fn loading_holds_little_beyond_the_weights() {
    let rest = |args: &[&str]| {
        let mut all = vec!["bench", "-p", "2", "-n", "1", "-r", "1", "--json"];
        all.extend(args);
        let o = wgpt(&all);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8(o.stdout).unwrap();
        let r: wgpt::bench::Report = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let held = if r.adapter.device_type == "Cpu" {
            r.weight_bytes
        } else {
            0
        };
        let peak = r.load_peak_rss_bytes.expect("peak memory reported");
        (peak.saturating_sub(held), r.checkpoint_bytes.unwrap())
    };
    let (v, c, l, inner) = (24576, 1024, 1, 1024);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        gpt2_config_json(v, 16, c, l, 8, inner),
    )
    .unwrap();
    write_safetensors(dir.path(), &random_gpt2(v, 16, c, l, inner, 3));
    let (base, _) = rest(&[]);
    let (big, file) = rest(&["--model", dir.path().to_str().unwrap()]);
    let extra = big as f64 - base as f64;
    println!(
        "beyond the weights: {:.1} MB for the {:.1} MB checkpoint, {:.1} MB for the embedded model",
        big as f64 / 1e6,
        file as f64 / 1e6,
        base as f64 / 1e6
    );
    assert!(extra <= 0.1 * file as f64, "{:.1} MB more", extra / 1e6);
}
