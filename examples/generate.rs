//! Generate text with the model that ships in assets/default, streaming it as it decodes.
//!
//!     cargo run --release --example generate -- "The borrow checker"

use std::io::Write;
use std::path::Path;

fn main() -> wgpt::Result<()> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or("The borrow checker".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default");

    let engine = wgpt::Engine::new(None)?; // the high-performance adapter
    let model = wgpt::Model::load(engine, &dir, &Default::default())?;
    let tokenizer = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut session = wgpt::Session::new(&model)?;

    let opts = wgpt::GenerateOptions {
        max_tokens: 60,
        sampling: wgpt::Sampling {
            temperature: 0.8,
            top_p: 0.95,
            ..Default::default()
        },
        seed: 7,
        ..Default::default()
    };
    let ids = tokenizer.encode(&prompt)?;
    print!("{prompt}");
    for event in wgpt::Generator::new(&mut session, Some(&tokenizer), &ids, &opts)? {
        print!("{}", event?.piece);
        let _ = std::io::stdout().flush();
    }
    println!();
    Ok(())
}
