//! Streaming without blocking, as an app's frame loop would drive it, and cancellation from
//! another thread: a "UI" thread presses stop after 300 ms; the session stays usable.
//!
//!     cargo run --release --example stream_cancel

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

fn main() -> wgpt::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default");
    let model = wgpt::Model::load(wgpt::Engine::new(None)?, &dir, &Default::default())?;
    let tokenizer = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut session = wgpt::Session::new(&model)?;

    let stop = Arc::new(AtomicBool::new(false));
    let opts = wgpt::GenerateOptions {
        max_tokens: 200,
        stop_at_eos: false,
        cancel: Some(stop.clone()),
        ..Default::default()
    };
    let pressed = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        pressed.store(true, Ordering::Relaxed);
    });

    let ids = tokenizer.encode("Iterators are")?;
    let mut generator = wgpt::Generator::new(&mut session, Some(&tokenizer), &ids, &opts)?;
    let mut frames = 0;
    loop {
        // One "frame": poll without blocking, then draw (here: sleep a little).
        match generator.poll_token() {
            Poll::Ready(Some(event)) => print!("{}", event?.piece),
            Poll::Ready(None) => break,
            Poll::Pending => {}
        }
        frames += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = generator.into_generation();
    println!(
        "\n[{:?} after {} tokens, {frames} frames]",
        out.stopped_by,
        out.ids.len()
    );

    // Still usable: continue from where it stopped.
    let next = session.next_token(&[*out.ids.last().unwrap_or(&ids[0])], wgpt::Pick::Greedy)?;
    println!(
        "next token after the stop: {:?}",
        tokenizer.decode(&[next])?
    );
    Ok(())
}
