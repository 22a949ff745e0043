//! A token embedding larger than one storage binding (lavapipe: 128 MiB) is split by rows into
//! several buffers, decided from the adapter's limits, and still gives the CPU reference's logits.

mod common;

use common::*;
use wgpt::{Config, LoadOptions, Model, Session, loader, reference};

#[test]
fn embedding_above_max_binding_is_split_and_correct() {
    let gpu = gpu();
    let max = gpu.max_binding_bytes();
    // Adapters with huge bindings would need a huge test tensor; cap what we ask for at 128 MiB
    // so the split path runs everywhere, exactly as lavapipe's own limit makes it run there.
    let cap = max.min(128 << 20);
    let c = 1024;
    let v = (cap / (c as u64 * 4)) as usize + 100; // just over one binding
    let (n_ctx, l, nh, inner) = (16, 1, 8, 256);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        gpt2_config_json(v, n_ctx, c, l, nh, inner),
    )
    .unwrap();
    write_safetensors(dir.path(), &random_gpt2(v, n_ctx, c, l, inner, 7));
    let wte_mb = (v * c * 4) as f64 / 1048576.0;

    // The buffer layout: in the texture layout a tied table is held as the head's textures.
    let opts = LoadOptions {
        max_chunk_bytes: (cap < max).then_some(cap),
        layout: wgpt::WeightLayout::Buffer,
        ..Default::default()
    };
    let model = Model::load(gpu.clone(), dir.path(), &opts).unwrap();
    assert!(
        model.wte_chunks() >= 2,
        "wte of {wte_mb:.1} MiB should be split"
    );

    // Tokens from both chunks, including the last row of the table.
    let tokens = [5u32, (v - 1) as u32, (v / 2) as u32, 77];
    let got = Session::new(&model).unwrap().logits(&tokens).unwrap();

    let cfg = Config::from_file(&dir.path().join("config.json")).unwrap();
    let ckpt = loader::Checkpoint::open(dir.path()).unwrap();
    let host = loader::load_host_weights(&ckpt, &cfg).unwrap();
    let want = reference::forward(&cfg, &host, &tokens);
    let diff = max_abs_diff(&got, &want);
    println!(
        "wte {wte_mb:.1} MiB (V = {v}, C = {c}) in {} buffers, binding limit {} MiB: max |GPU - CPU| = {diff:.2e}",
        model.wte_chunks(),
        max >> 20
    );
    // Logits here are O(1) sums over C = 1024 products; f32 vs the twin's f64 accumulation.
    assert!(diff < 1e-3, "max diff {diff}");
}
