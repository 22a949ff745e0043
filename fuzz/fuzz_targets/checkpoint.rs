//! Fuzzes wgpt::fuzz::checkpoint (see src/fuzz.rs) against the gpt2-bf16 fixture's config, so
//! inputs near the seed (that fixture's weights) reach the shape checks and row reads.
#![no_main]

use std::sync::LazyLock;

static CONFIG: LazyLock<wgpt::Config> = LazyLock::new(|| {
    let json = include_str!("../../tests/fixtures/gpt2-bf16/config.json");
    wgpt::Config::from_json(json, "config.json".as_ref()).expect("fixture config")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgpt::fuzz::checkpoint(&CONFIG, data));
