//! Text generation: prefill the prompt in one forward pass, then decode one token per step, each
//! chosen on the GPU; text streams out as it decodes cleanly.

use std::borrow::BorrowMut;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use crate::runtime::Session;
use crate::runtime::sampler::Sampling;
use crate::tokenizer::{TokenStream, Tokenizer};
use crate::{Error, Result};

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate after the prompt (default 64).
    pub max_tokens: usize,
    /// Greedy unless a temperature is set.
    pub sampling: Sampling,
    /// Seeds the uniform draws of sampling: same seed, same adapter, same tokens.
    pub seed: u64,
    /// Stop when the model emits one of its end-of-sequence ids.
    pub stop_at_eos: bool,
    /// The end-of-sequence ids; `None` (the default): the model's own
    /// ([`crate::Config::eos_token_ids`], from generation_config.json or config.json).
    pub eos_token_ids: Option<Vec<u32>>,
    /// What to do when the context fills up. `None` (the default): refuse up front if the prompt
    /// plus `max_tokens` does not fit. `Some(keep)`: shift the context instead, keeping the first
    /// `keep` tokens (the prompt's head) and the most recent ones, half the context in all, and
    /// recomputing them (GPT-2's positions are absolute, so the cache cannot just slide).
    pub context_shift: Option<usize>,
    /// Stop as soon as the text contains one of these: the match, and anything after it, is cut
    /// from `text` and never streamed.
    pub stop: Vec<String>,
    /// Set from any thread to stop between tokens (the tokens so far are returned).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 64,
            sampling: Sampling::default(),
            seed: 0,
            stop_at_eos: true,
            eos_token_ids: None,
            context_shift: None,
            stop: Vec::new(),
            cancel: None,
        }
    }
}

/// What a generation produced, with its timings.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// The prompt's token ids, as fed to prefill.
    pub prompt_ids: Vec<u32>,
    /// Generated token ids (the prompt excluded).
    pub ids: Vec<u32>,
    /// The generated ids decoded to text (the prompt excluded; empty without a tokenizer), cut
    /// before a matched stop string.
    pub text: String,
    /// Seconds for the prompt's forward pass (time to first token).
    pub prefill_s: f64,
    /// Seconds for the remaining tokens, one forward pass each.
    pub decode_s: f64,
    /// Why generation ended.
    pub stopped_by: StopReason,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` were generated.
    #[default]
    MaxTokens,
    /// The model emitted one of its end-of-sequence ids.
    Eos,
    /// The text reached a stop string.
    StopString,
    /// `cancel` was set.
    Cancelled,
}

impl Generation {
    /// Prefill rate in tokens/s: prompt tokens over [`prefill_s`](Self::prefill_s) (0 if either is zero).
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_ids.len(), self.prefill_s)
    }

    /// Decode rate over the tokens after the first (the first one comes out of prefill).
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.ids.len().saturating_sub(1), self.decode_s)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        n as f64 / s
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fixed generator, so a seed means the same
/// stream of u values on every platform and version.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Advances the state and returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits, exact in f32.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Checks that `prompt_len + max_tokens` fits the context before any work is done.
pub fn check_context(prompt_len: usize, max_tokens: usize, n_ctx: usize) -> Result<()> {
    if prompt_len == 0 {
        return Err(Error::EmptyPrompt);
    }
    // The last generated token is never fed back, so it needs no position.
    if prompt_len + max_tokens.saturating_sub(1) > n_ctx {
        return Err(Error::PromptTooLong {
            prompt_tokens: prompt_len,
            max_tokens,
            n_ctx,
        });
    }
    Ok(())
}

/// One generated token, as [`Generator`] and [`generate_ids`] report it.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// The token id; `None` for the final flush of text held back at the end.
    pub id: Option<u32>,
    /// The text this token completes: always whole UTF-8 characters (empty while a multi-byte
    /// character is still partial; the rest comes with a later token).
    pub piece: String,
    /// Its log-probability under the sampling distribution (`None` when greedy).
    pub logprob: Option<f32>,
    /// The most likely candidates for this position, with probabilities, when the session was
    /// asked for them ([`Session::set_top_candidates`]).
    pub top: Vec<(u32, f32)>,
}

/// Where a [`Generator`] stands.
enum State {
    /// Ready to submit the next step (the prompt first).
    Idle,
    /// A step is on the GPU.
    Waiting,
    Done,
}

/// Generation as a stream of [`TokenEvent`]s. As an [`Iterator`] it blocks on the GPU for each
/// token; [`Generator::poll_token`] never blocks, for an application's frame loop:
///
/// ```
/// # fn main() -> wgpt::Result<()> {
/// # let model = wgpt::default_model::load(wgpt::Engine::new(None)?, &Default::default())?;
/// # let tokenizer = wgpt::default_model::tokenizer()?;
/// # let mut session = wgpt::Session::new(&model)?;
/// # let ids = tokenizer.encode("The borrow checker")?;
/// # let opts = wgpt::GenerateOptions { max_tokens: 8, ..Default::default() };
/// use std::task::Poll;
/// let mut generator = wgpt::Generator::new(&mut session, Some(&tokenizer), &ids, &opts)?;
/// loop {
///     match generator.poll_token() {
///         Poll::Ready(Some(event)) => print!("{}", event?.piece),
///         Poll::Ready(None) => break,
///         Poll::Pending => {} // the GPU is still busy: draw the frame, poll again next frame
///     }
/// }
/// println!("\n[{:?}]", generator.generation().stopped_by);
/// # Ok(()) }
/// ```
///
/// `S` is how it holds the session: `&mut Session` (borrowed, as above), or `Session` itself
/// ([`OwnedGenerator`], which can move to another thread or sit in a struct; take the session
/// back with [`Generator::into_parts`]). With the `stream` feature it is also an async
/// `futures_core::Stream`, on any executor.
///
/// Stops at `max_tokens`, an end-of-sequence id, a stop string or cancellation (checked between
/// tokens; the session stays usable, holding everything generated so far). Text that could be
/// the start of a stop string is held back until it is known not to be one, so a stop string
/// never reaches the stream.
pub struct Generator<S> {
    session: S,
    text: TextOutput,
    opts: GenerateOptions,
    eos: Vec<u32>,
    rng: SplitMix64,
    out: Generation,
    state: State,
    /// The last token chosen, fed back on the next step.
    last: Option<u32>,
    t0: Instant,
    /// When the first token arrived (decode time counts from here).
    t1: Option<Instant>,
    /// A thread is waiting on the GPU to wake the async stream.
    #[cfg(feature = "stream")]
    waking: Arc<AtomicBool>,
}

/// A [`Generator`] that owns its session: `Send`, storable, movable to a thread.
pub type OwnedGenerator = Generator<Session>;

impl<S: BorrowMut<Session>> Generator<S> {
    /// Checks the prompt against the context and the sampling settings; nothing runs until the
    /// first poll. The end-of-sequence ids are the model's ([`crate::Config::eos_token_ids`])
    /// unless [`GenerateOptions::eos_token_ids`] names others. The tokenizer (a cheap handle,
    /// cloned) turns ids into text; without one, events carry ids only.
    pub fn new(
        mut session: S,
        tokenizer: Option<&Tokenizer>,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Self> {
        let s = session.borrow_mut();
        // With a context shift only the prompt itself must fit.
        let max_tokens = if opts.context_shift.is_some() {
            1
        } else {
            opts.max_tokens
        };
        check_context(s.position() + prompt_ids.len(), max_tokens, s.n_ctx())?;
        opts.sampling.validate()?;
        let eos =
            (opts.eos_token_ids.clone()).unwrap_or_else(|| s.model().config.eos_token_ids.clone());
        Ok(Generator {
            session,
            text: TextOutput::new(tokenizer, &opts.stop),
            rng: SplitMix64(opts.seed),
            opts: opts.clone(),
            eos,
            out: Generation {
                prompt_ids: prompt_ids.to_vec(),
                ..Default::default()
            },
            state: State::Idle,
            last: None,
            t0: Instant::now(),
            t1: None,
            #[cfg(feature = "stream")]
            waking: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The session being generated on, e.g. to read [`Session::attention_weights`] between
    /// tokens.
    pub fn session(&self) -> &Session {
        self.session.borrow()
    }

    /// What has been generated so far (all of it once the stream has ended).
    pub fn generation(&self) -> &Generation {
        &self.out
    }

    /// The finished generation.
    pub fn into_generation(self) -> Generation {
        self.out
    }

    /// The session (holding the prompt and what was generated) and the generation. A step
    /// still in flight is collected first, so the session is ready for the next one.
    pub fn into_parts(mut self) -> (S, Generation) {
        if matches!(self.state, State::Waiting) {
            let _ = self.session.borrow_mut().wait();
        }
        (self.session, self.out)
    }

    /// The next event without blocking: `Pending` while the GPU works on the step,
    /// `Ready(None)` once generation has stopped.
    pub fn poll_token(&mut self) -> Poll<Option<Result<TokenEvent>>> {
        self.advance(false)
    }

    fn advance(&mut self, block: bool) -> Poll<Option<Result<TokenEvent>>> {
        match self.step(block) {
            Ok(Some(ev)) => Poll::Ready(Some(Ok(ev))),
            Ok(None) if matches!(self.state, State::Done) => Poll::Ready(None),
            Ok(None) => Poll::Pending,
            Err(e) => {
                self.state = State::Done;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    /// Moves the state machine on; `Ok(None)` when nothing is ready yet or it is done.
    fn step(&mut self, block: bool) -> Result<Option<TokenEvent>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Idle => {
                    if let Some(reason) = self.stop_reason() {
                        return self.finish(reason);
                    }
                    let u = self.rng.next_f32();
                    let pick = self.opts.sampling.pick(u);
                    let session = self.session.borrow_mut();
                    match self.last {
                        None => {
                            self.t0 = Instant::now();
                            session.submit(&self.out.prompt_ids, pick)?;
                        }
                        Some(id) => {
                            if let (Some(keep), true) = (
                                self.opts.context_shift,
                                session.position() >= session.n_ctx(),
                            ) {
                                shift_context(session, keep)?;
                            }
                            session.submit(&[id], pick)?;
                        }
                    }
                    self.state = State::Waiting;
                }
                State::Waiting => {
                    let session = self.session.borrow_mut();
                    let id = if block {
                        session.wait()?
                    } else {
                        match session.poll()? {
                            Some(id) => id,
                            None => return Ok(None),
                        }
                    };
                    self.state = State::Idle;
                    return self.emit(id).map(Some);
                }
            }
        }
    }

    /// Why generation should stop before the next step, if it should.
    fn stop_reason(&mut self) -> Option<StopReason> {
        if self.opts.max_tokens == 0 {
            return Some(StopReason::MaxTokens);
        }
        let last = self.last?;
        if self.text.hit_stop() {
            return Some(StopReason::StopString);
        }
        if self.opts.stop_at_eos && self.eos.contains(&last) {
            return Some(StopReason::Eos);
        }
        let cancelled = (self.opts.cancel.as_ref()).is_some_and(|c| c.load(Ordering::Relaxed));
        if cancelled {
            return Some(StopReason::Cancelled);
        }
        (self.out.ids.len() >= self.opts.max_tokens).then_some(StopReason::MaxTokens)
    }

    fn emit(&mut self, id: u32) -> Result<TokenEvent> {
        match self.t1 {
            None => {
                self.out.prefill_s = self.t0.elapsed().as_secs_f64();
                self.t1 = Some(Instant::now());
            }
            Some(t1) => self.out.decode_s = t1.elapsed().as_secs_f64(),
        }
        // The end-of-sequence token ends the text; it is not part of it.
        let ends = self.opts.stop_at_eos && self.eos.contains(&id);
        let piece = if ends {
            String::new()
        } else {
            self.text.push(id)?
        };
        self.out.text.clone_from(&self.text.text);
        self.last = Some(id);
        self.out.ids.push(id);
        let session = self.session.borrow();
        Ok(TokenEvent {
            id: Some(id),
            piece,
            logprob: session.last_logprob(),
            top: session.top_candidates().to_vec(),
        })
    }

    /// Ends generation; the text held back (a partial character, the start of a stop string
    /// that never completed) comes out as a last event.
    fn finish(&mut self, reason: StopReason) -> Result<Option<TokenEvent>> {
        self.state = State::Done;
        self.out.stopped_by = reason;
        if let Some(t1) = self.t1 {
            self.out.decode_s = t1.elapsed().as_secs_f64();
        }
        let piece = self.text.finish()?;
        self.out.text.clone_from(&self.text.text);
        Ok((!piece.is_empty()).then_some(TokenEvent {
            id: None,
            piece,
            logprob: None,
            top: Vec::new(),
        }))
    }
}

/// Generated text as it streams out: token ids in, text out once it decodes cleanly, and stop
/// strings found, cut and never released (text that could be the start of one is held back until
/// it is known not to be). What [`Generator`] streams, for an app running its own decode loop
/// (a server over [`crate::Batch`]).
#[derive(Clone, Default)]
pub struct TextOutput {
    tokenizer: Option<Tokenizer>,
    stream: TokenStream,
    stops: Vec<String>,
    /// Everything decoded so far, cut before a matched stop string.
    text: String,
    /// Bytes of `text` released so far (the rest is held back).
    emitted: usize,
    hit_stop: bool,
}

impl TextOutput {
    /// Decodes with `tokenizer` (without one, no text), stopping at `stops` (empty ones ignored).
    pub fn new(tokenizer: Option<&Tokenizer>, stops: &[String]) -> Self {
        TextOutput {
            tokenizer: tokenizer.cloned(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Adds token `id`; returns the text that can go out now (often empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if let Some(tok) = &self.tokenizer {
            let piece = self.stream.push(tok, id)?.unwrap_or_default();
            self.text.push_str(&piece);
        }
        Ok(self.release())
    }

    /// Ends the text: returns what was held back (a partial character, the start of a stop
    /// string that never completed), or nothing after a stop string.
    pub fn finish(&mut self) -> Result<String> {
        if self.hit_stop {
            return Ok(String::new());
        }
        if let Some(tok) = &self.tokenizer {
            let rest = self.stream.finish(tok)?.unwrap_or_default();
            self.text.push_str(&rest);
        }
        let piece = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        Ok(piece)
    }

    /// Whether the text has reached a stop string (generation should end).
    pub fn hit_stop(&self) -> bool {
        self.hit_stop
    }

    /// The text so far, cut before a matched stop string (held-back text included).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text that can go out now: up to a stop string (cutting it, and all after it, from
    /// the text), else all but the longest tail that could still become one.
    fn release(&mut self) -> String {
        let text = &self.text;
        let found = (self.stops.iter())
            .filter_map(|s| text.find(s.as_str()))
            .min();
        let end = match found {
            Some(at) => {
                // Text already released stays in `text`, so the two always agree (a stop string
                // cannot begin inside it: that tail was held back).
                let at = at.max(self.emitted);
                self.hit_stop = true;
                self.text.truncate(at);
                at
            }
            None => {
                let tail = &text[self.emitted..];
                let prefixes = self.stops.iter().flat_map(|s| {
                    (1..s.len())
                        .filter(|&n| s.is_char_boundary(n))
                        .map(move |n| &s[..n])
                });
                let held = (prefixes.filter(|p| tail.ends_with(p)).map(str::len))
                    .max()
                    .unwrap_or(0);
                text.len() - held
            }
        };
        let piece = self.text[self.emitted..end].to_string();
        self.emitted = end;
        piece
    }
}

impl<S: BorrowMut<Session>> Iterator for Generator<S> {
    type Item = Result<TokenEvent>;

    /// The next event, blocking on the GPU.
    fn next(&mut self) -> Option<Self::Item> {
        match self.advance(true) {
            Poll::Ready(item) => item,
            Poll::Pending => unreachable!("a blocking step always completes"),
        }
    }
}

/// The async form (feature `stream`): `Pending` while the GPU works, woken by a short-lived
/// thread that waits on the device, so it needs no particular runtime.
#[cfg(feature = "stream")]
impl<S: BorrowMut<Session> + Unpin> futures_core::Stream for Generator<S> {
    type Item = Result<TokenEvent>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let poll = this.poll_token();
        if poll.is_pending() && !this.waking.swap(true, Ordering::AcqRel) {
            let device = this.session().model().gpu.device.clone();
            let (waker, waking) = (cx.waker().clone(), this.waking.clone());
            std::thread::spawn(move || {
                let _ = device.poll(wgpu::PollType::wait_indefinitely());
                waking.store(false, Ordering::Release);
                waker.wake();
            });
        }
        poll
    }
}

/// Generates from `prompt_ids`, calling `on_token` as each token arrives (a blocking
/// [`Generator`] loop).
pub fn generate_ids(
    session: &mut Session,
    tokenizer: Option<&Tokenizer>,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<Generation> {
    let mut generator = Generator::new(session, tokenizer, prompt_ids, opts)?;
    for event in generator.by_ref() {
        on_token(&event?);
    }
    Ok(generator.into_generation())
}

/// Restarts the session on the first `keep` tokens and the most recent ones, half the context in
/// all, so generation can go on past n_positions.
fn shift_context(session: &mut Session, keep: usize) -> Result<()> {
    let half = session.n_ctx() / 2;
    let all = session.tokens().to_vec();
    let keep = keep.min(half.saturating_sub(1));
    let mut kept = all[..keep].to_vec();
    kept.extend_from_slice(&all[all.len() - (half - keep)..]);
    log::debug!("context shift: {} tokens -> {}", all.len(), kept.len());
    session.reset();
    session.feed(&kept)
}
