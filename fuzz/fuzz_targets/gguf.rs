//! Fuzzes wgpt::fuzz::gguf (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgpt::fuzz::gguf(data));
