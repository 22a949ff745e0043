//! `wgpt chat` driven through a pipe: two turns, settings commands, bad commands, EOF.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn chat(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .arg("chat")
        .args(args)
        .env_remove("WGPT_ADAPTER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wgpt chat");
    // Writing then dropping stdin is the EOF (Ctrl-D) that ends the session. A chat that refuses
    // its model or options exits without reading stdin, so the write may meet a closed pipe.
    match child.stdin.take().unwrap().write_all(input.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    child.wait_with_output().unwrap()
}

#[test]
fn two_turns_settings_and_eof_through_a_pipe() {
    let o = chat(
        &["-n", "16", "--seed", "3"],
        "The borrow checker\n/temp 0\n/topk 5\n/top 3\n\nOwnership is\n/next 4\n/bogus\n/temp abc\n",
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // No prompts or colours on a pipe.
    assert!(
        !out.contains('\x1b') && !err.contains('\x1b'),
        "{out:?}\n{err:?}"
    );
    assert!(!err.contains("> "), "{err}");
    // One stats line per turn, the second continuing the same context (no reset).
    let stats: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(stats.len(), 2, "{err}");
    assert!(
        stats[0].starts_with("[16 tokens,") && stats[0].contains("tok/s"),
        "{err}"
    );
    assert!(stats[0].contains("context 19/256"), "{err}");
    // Turn 2 feeds the pending token, "\n", "Ownership is" (3 tokens) after 18 in the cache.
    let ctx: usize = stats[1]
        .split("context ")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        ctx > 19 + 16,
        "turn 2 continues the cached conversation: {err}"
    );
    // Settings echoed; the per-step candidates of turn 2 (/top 3): 16 lines of 3.
    assert!(
        err.contains("settings: temp 0 topk 40") && err.contains("topk 5"),
        "{err}"
    );
    let tops = err.lines().filter(|l| l.contains("[top]")).count();
    assert_eq!(tops, 16, "{err}");
    let next = err.lines().find(|l| l.starts_with("next: ")).unwrap();
    assert_eq!(next.matches(" | ").count(), 3, "{next}");
    // Bad commands: a message, and the session goes on.
    assert!(err.contains("unknown command /bogus"), "{err}");
    assert!(err.contains("/temp needs a number"), "{err}");
    // stdout: the two replies, one line each at least, nothing else.
    let replies = out.trim_end().lines().count();
    assert!(replies >= 2, "{out:?}");
    assert!(out.len() > 40, "{out:?}");

    // Greedy turns (after /temp 0) are reproducible.
    let again = chat(&["-n", "16", "--temperature", "0"], "Ownership is\n");
    let a = String::from_utf8(again.stdout).unwrap();
    let b = chat(&["-n", "16", "--temperature", "0"], "Ownership is\n");
    assert_eq!(a, String::from_utf8(b.stdout).unwrap());
}

#[test]
fn chat_reset_and_immediate_eof() {
    // EOF at once: a clean exit, nothing on stdout.
    let o = chat(&[], "");
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    // /reset starts the context again.
    let o = chat(
        &["-n", "4"],
        "Rust\n/reset\nRust\n/next\n/quit\nnever read\n",
    );
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("conversation forgotten"), "{err}");
    let ctx: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(ctx.len(), 2, "{err}");
    assert!(
        ctx[0].contains("context 5/256") && ctx[1].contains("context 5/256"),
        "{err}"
    );
    assert!(err.contains("next: "), "{err}");
}

#[test]
fn chat_bad_model_and_options() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "mamba", "hidden_size": 64}"#,
    )
    .unwrap();
    let o = chat(&["--model", dir.path().to_str().unwrap()], "hi\n");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("unsupported model_type \"mamba\""), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = chat(&["-n", "0"], "");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!o.status.success() && err.contains("--max-tokens"), "{err}");
}
