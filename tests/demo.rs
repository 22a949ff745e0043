//! `wgpt-demo` (feature `demo`): bad input is refused with a clear message before any window
//! opens. The window itself is exercised by `tools/demo_screenshot.sh` (Xvfb + lavapipe).
#![cfg(feature = "demo")]

use std::process::Command;

fn demo(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_wgpt-demo"))
        .args(args)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_input_gives_a_message_not_a_window() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "llama", "hidden_size": 64}"#,
    )
    .unwrap();
    let m = dir.path().to_str().unwrap();
    for (args, needle) in [
        (vec!["--model", m], "unsupported model_type \"llama\""),
        (vec!["--model", "/no/such/dir"], "model folder not found"),
        (
            vec!["--screenshot", "x.png", "--prompt", " "],
            "--screenshot needs a --prompt",
        ),
        (vec!["--size", "big"], "--size"),
        (vec!["-n", "0"], "--max-tokens"),
    ] {
        let (ok, err) = demo(&args);
        assert!(!ok, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
