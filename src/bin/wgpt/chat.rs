//! `wgpt chat`: an interactive session. With a model that has a chat template, each line is a
//! user turn: the conversation is rendered anew with the template, only the suffix the cache
//! does not hold yet is run through the model, and the reply ends at the end-of-turn token.
//! Without one (or with `--raw`), each line continues the text. Either way the conversation
//! stays in one [`Session`]'s KV cache. Lines starting with `/` are commands.
//!
//! stdout carries only the model's text; prompts, command replies, tokens/s and candidate lists
//! go to stderr. When stdin is not a terminal there are no prompts and no colours, so a script
//! can pipe lines in and read the continuations out, one per turn.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use wgpt::{
    ChatTemplate, GenerateOptions, Generation, Generator, Message, Model, Pick, Sampling, Session,
    StopReason, Tokenizer,
};

const HELP: &str = "\
commands:
  /temp T      temperature (0 = greedy)        /topk K     sample among the K likeliest (0 = all)
  /topp P      nucleus: top tokens holding P   /minp P     drop tokens below P x the likeliest
  /repeat R    repetition penalty (1 = off)    /n N        tokens per reply
  /seed S      sampler seed                    /top N      show the N likeliest tokens at each step (0 = off)
  /next [N]    the N likeliest next tokens now /settings   show the settings
  /reset       forget the conversation         /help       this list
  /quit        leave (or Ctrl-D); Ctrl-C stops a reply in progress";

/// Chat settings, changed by commands.
struct Settings {
    sampling: Sampling,
    max_tokens: usize,
    seed: u64,
    top: usize,
}

/// Where the conversation stands.
struct Chat<'a> {
    session: Session,
    tok: &'a Tokenizer,
    /// The last generated token: chosen but not yet run through the model (the next turn starts
    /// with it).
    pending: Option<u32>,
    turns: u64,
    tty: bool,
    /// With a chat template: the conversation as messages.
    dialog: Option<Dialog>,
}

/// A conversation rendered by the model's chat template.
pub struct Dialog {
    template: ChatTemplate,
    /// The system turn (if any), then user and assistant turns.
    messages: Vec<Message>,
    /// The ids that end a reply.
    eos: Vec<u32>,
}

impl Dialog {
    /// A conversation with `template`, opened by a system turn if `system` is given.
    pub fn new(template: ChatTemplate, system: Option<&str>, eos: Vec<u32>) -> Dialog {
        Dialog {
            template,
            messages: system.map(Message::system).into_iter().collect(),
            eos,
        }
    }

    /// Forgets every turn but the system's.
    fn reset(&mut self) {
        self.messages.retain(|m| m.role == "system");
    }
}

/// Runs the chat loop on `model` until EOF or `/quit`; with a `dialog`, lines are user turns.
pub fn run(
    model: &Model,
    tok: &Tokenizer,
    dialog: Option<Dialog>,
    sampling: Sampling,
    max_tokens: usize,
    seed: u64,
) -> Result<()> {
    let tty = std::io::stdin().is_terminal();
    let cancel = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    {
        let (cancel, generating) = (cancel.clone(), generating.clone());
        // Ctrl-C stops the reply in progress; at the prompt it leaves, as a shell would.
        let handler = ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(130);
            }
        });
        if let Err(e) = handler {
            log::warn!("cannot catch Ctrl-C: {e}");
        }
    }
    let mut settings = Settings {
        sampling,
        max_tokens,
        seed,
        top: 0,
    };
    let mut chat = Chat {
        session: Session::new(model)?,
        tok,
        pending: None,
        turns: 0,
        tty,
        dialog,
    };
    if tty {
        let mode = match chat.dialog {
            Some(_) => "Each line is your turn",
            None => "Type text to continue",
        };
        eprintln!(
            "wgpt chat: {} on {} ({:?}); context {} tokens. {mode}, /help for commands, Ctrl-D to leave.",
            model.config.describe(),
            model.gpu.info.name,
            model.gpu.info.backend,
            model.config.n_positions
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if tty {
            eprint!("\x1b[1;32m>\x1b[0m ");
            std::io::stderr().flush().ok();
        }
        let Some(line) = lines.next() else {
            // Ctrl-D / end of input.
            if tty {
                eprintln!();
            }
            return Ok(());
        };
        let line = line?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            match command(cmd, &mut settings, &mut chat) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        cancel.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let result = chat.turn(line, &settings, &cancel);
        generating.store(false, Ordering::SeqCst);
        if let Err(e) = result {
            eprintln!("error: {e:#}");
        }
    }
}

/// Runs one `/command`; `Ok(true)` means leave.
fn command(cmd: &str, s: &mut Settings, chat: &mut Chat) -> Result<bool> {
    let mut words = cmd.split_whitespace();
    let name = words.next().unwrap_or("");
    let arg = words.next();
    fn value<T: std::str::FromStr>(arg: Option<&str>, name: &str) -> Result<T> {
        match arg.map(str::parse::<T>) {
            Some(Ok(v)) => Ok(v),
            _ => bail!("/{name} needs a number, e.g. /{name} {}", example(name)),
        }
    }
    fn example(name: &str) -> &'static str {
        match name {
            "temp" => "0.8",
            "topk" => "40",
            "topp" => "0.9",
            "minp" => "0.05",
            "repeat" => "1.2",
            "top" | "next" => "5",
            _ => "64",
        }
    }
    let mut sampling = s.sampling;
    match name {
        "help" | "h" | "?" => {
            eprintln!("{HELP}");
            return Ok(false);
        }
        "quit" | "q" | "exit" => return Ok(true),
        "reset" => {
            chat.session.reset();
            chat.pending = None;
            if let Some(d) = &mut chat.dialog {
                d.reset();
            }
            eprintln!("conversation forgotten");
            return Ok(false);
        }
        "settings" => {
            eprintln!("{}", s.describe());
            return Ok(false);
        }
        "next" => {
            let n = match arg {
                Some(_) => value::<usize>(arg, name)?,
                None => s.top.max(5),
            };
            return chat.show_next(n.clamp(1, 64)).map(|_| false);
        }
        "temp" => sampling.temperature = value(arg, name)?,
        "topk" => sampling.top_k = value(arg, name)?,
        "topp" => sampling.top_p = value(arg, name)?,
        "minp" => sampling.min_p = value(arg, name)?,
        "repeat" => sampling.repeat_penalty = value(arg, name)?,
        "n" => {
            let n: usize = value(arg, name)?;
            if n == 0 || n >= chat.session.n_ctx() {
                bail!("/n must be between 1 and {}", chat.session.n_ctx() - 1);
            }
            s.max_tokens = n;
        }
        "seed" => s.seed = value(arg, name)?,
        "top" => {
            let n: usize = value(arg, name)?;
            if n > 64 {
                bail!("/top shows at most 64 tokens");
            }
            s.top = n;
        }
        other => bail!("unknown command /{other}; /help lists them"),
    }
    sampling.validate()?;
    s.sampling = sampling;
    eprintln!("{}", s.describe());
    Ok(false)
}

impl Settings {
    fn describe(&self) -> String {
        let sm = &self.sampling;
        format!(
            "settings: temp {} topk {} topp {} minp {} repeat {} | n {} seed {} top {}",
            sm.temperature,
            sm.top_k,
            sm.top_p,
            sm.min_p,
            sm.repeat_penalty,
            self.max_tokens,
            self.seed,
            self.top
        )
    }
}

impl Chat<'_> {
    /// Continues the conversation with `text` and streams the model's reply.
    fn turn(&mut self, text: &str, s: &Settings, cancel: &Arc<AtomicBool>) -> Result<()> {
        let n_ctx = self.session.n_ctx();
        let (ids, max_tokens) = match self.dialog.is_some() {
            true => self.user_turn(text, s.max_tokens)?,
            false => self.continuation(text, s.max_tokens)?,
        };
        let eos = self.dialog.as_ref().map(|d| d.eos.clone());
        let g = self.reply(&ids, max_tokens, s, cancel, eos)?;
        if let Some(d) = &mut self.dialog {
            d.messages.push(Message::assistant(&g.text));
        }
        let stopped = match g.stopped_by {
            StopReason::Cancelled => ", stopped by Ctrl-C",
            StopReason::Eos => ", end of turn",
            _ => "",
        };
        let line = format!(
            "[{} tokens, {:.1} tok/s, prefill {} tokens at {:.1} tok/s, context {}/{n_ctx}{stopped}]",
            g.ids.len(),
            g.decode_tok_s(),
            g.prompt_ids.len(),
            g.prefill_tok_s(),
            self.session.position() + self.pending.is_some() as usize,
        );
        if self.tty {
            eprintln!("\x1b[2m{line}\x1b[0m");
        } else {
            eprintln!("{line}");
        }
        Ok(())
    }

    /// A user turn: the conversation rendered with the template, and the ids of it the cache
    /// does not hold yet (the cache is cut back to where the two first differ). The oldest
    /// exchanges make way when the conversation outgrows the context.
    fn user_turn(&mut self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, usize)> {
        let n_ctx = self.session.n_ctx();
        let d = self.dialog.as_mut().expect("a dialog");
        d.messages.push(Message::user(text));
        let ids = loop {
            let ids = self
                .tok
                .encode_plain(&d.template.render(&d.messages, true)?)?;
            if ids.len() + max_tokens.min(n_ctx / 2) <= n_ctx {
                break ids;
            }
            let first = d.messages.iter().take_while(|m| m.role == "system").count();
            if d.messages.len() - first <= 1 {
                d.messages.pop();
                bail!(
                    "that turn is {} tokens; the model's context holds {n_ctx}",
                    ids.len()
                );
            }
            d.messages
                .drain(first..(first + 2).min(d.messages.len() - 1));
            eprintln!("(context full: the oldest exchange is dropped)");
        };
        let cached = self.session.tokens();
        let same = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        let keep = same.min(ids.len() - 1);
        self.session.truncate(keep)?;
        self.pending = None;
        Ok((ids[keep..].to_vec(), max_tokens.min(n_ctx - ids.len())))
    }

    /// Raw text: `text` continues the running text on a new line.
    fn continuation(&mut self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, usize)> {
        // After the first turn the new text starts on a new line of the running text.
        let sep = if self.session.position() > 0 || self.pending.is_some() {
            "\n"
        } else {
            ""
        };
        let mut ids: Vec<u32> = self.pending.take().into_iter().collect();
        // The conversation's first text is a prompt (with the special tokens the tokenizer
        // adds, OPT's BOS); later lines continue it.
        ids.extend(match sep {
            "" => self.tok.encode(text)?,
            _ => self.tok.encode_plain(&format!("{sep}{text}"))?,
        });
        let n_ctx = self.session.n_ctx();
        let max_tokens = max_tokens.min(n_ctx.saturating_sub(ids.len() + 1));
        if max_tokens == 0 {
            bail!(
                "that text is {} tokens; the model's context holds {n_ctx}",
                ids.len()
            );
        }
        // When the conversation no longer fits, start again from its most recent part.
        if self.session.position() + ids.len() + max_tokens > n_ctx {
            let room = (n_ctx / 2).min(n_ctx - ids.len() - max_tokens);
            let history = self.session.tokens();
            let keep = history[history.len().saturating_sub(room)..].to_vec();
            self.session.reset();
            let mut all = keep;
            all.extend(&ids);
            eprintln!(
                "(context full: continuing from the last {} tokens)",
                all.len() - ids.len()
            );
            ids = all;
        }
        Ok((ids, max_tokens))
    }

    /// Runs `ids` and streams up to `max_tokens` of reply to stdout.
    fn reply(
        &mut self,
        ids: &[u32],
        max_tokens: usize,
        s: &Settings,
        cancel: &Arc<AtomicBool>,
        eos: Option<Vec<u32>>,
    ) -> Result<Generation> {
        self.session.set_top_candidates(s.top);
        let opts = GenerateOptions {
            max_tokens,
            sampling: s.sampling,
            seed: s.seed.wrapping_add(self.turns),
            cancel: Some(cancel.clone()),
            eos_token_ids: eos,
            ..Default::default()
        };
        self.turns += 1;
        let tok = self.tok;
        let mut generator = Generator::new(&mut self.session, Some(tok), ids, &opts)?;
        let mut out = std::io::stdout();
        if self.tty {
            eprint!("\x1b[36m");
        }
        for event in generator.by_ref() {
            let event = event?;
            out.write_all(event.piece.as_bytes())?;
            out.flush()?;
            if !event.top.is_empty() {
                eprintln!("\n  [top] {}", candidates(tok, &event.top));
            }
        }
        let g = generator.into_generation();
        // The last token is chosen but not yet in the cache; it opens the next turn.
        self.pending = g.ids.last().copied();
        if self.tty {
            eprint!("\x1b[0m");
        }
        writeln!(out)?;
        out.flush()?;
        Ok(g)
    }

    /// Prints the `n` likeliest next tokens after the conversation so far, leaving it as it is
    /// (the pending token runs in a fork of the session).
    fn show_next(&mut self, n: usize) -> Result<()> {
        let Some(last) = self.pending else {
            bail!("nothing to predict from yet: type some text first");
        };
        if self.session.position() + 1 > self.session.n_ctx() {
            bail!("the context is full; /reset or type more text");
        }
        let mut fork = self.session.fork()?;
        fork.set_top_candidates(n);
        fork.next_token(&[last], Pick::Greedy)?;
        eprintln!("next: {}", candidates(self.tok, fork.top_candidates()));
        Ok(())
    }
}

/// `"piece" 0.123 | ...`
fn candidates(tok: &Tokenizer, top: &[(u32, f32)]) -> String {
    top.iter()
        .map(|&(id, p)| format!("{:?} {:.3}", tok.decode(&[id]).unwrap_or_default(), p))
        .collect::<Vec<_>>()
        .join(" | ")
}
