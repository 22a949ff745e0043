//! Text generation: prefill the prompt in one forward pass, then decode one token per step, each
//! chosen on the GPU; text streams out as it decodes cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use crate::model::Session;
use crate::sampler::Sampling;
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
    /// Stop when the model emits its end-of-sequence token.
    pub stop_at_eos: bool,
    /// What to do when the context fills up. `None` (the default): refuse up front if the prompt
    /// plus `max_tokens` does not fit. `Some(keep)`: shift the context instead, keeping the first
    /// `keep` tokens (the prompt's head) and the most recent ones, half the context in all, and
    /// recomputing them (GPT-2's positions are absolute, so the cache cannot just slide).
    pub context_shift: Option<usize>,
    /// Stop as soon as the text contains one of these (the match is cut from `text`).
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
    /// The model emitted its end-of-sequence token.
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
        return Err(Error::Input(
            "the prompt is empty: give at least one token of text".into(),
        ));
    }
    // The last generated token is never fed back, so it needs no position.
    let needed = prompt_len + max_tokens.saturating_sub(1);
    if needed > n_ctx {
        return Err(Error::Input(format!(
            "the prompt ({prompt_len} tokens) plus --max-tokens {max_tokens} needs {needed} positions, \
             the model has n_positions = {n_ctx}; use at most --max-tokens {}",
            (n_ctx + 1).saturating_sub(prompt_len)
        )));
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
/// ```no_run
/// # fn frame(generator: &mut wgpt::Generator) -> wgpt::Result<()> {
/// use std::task::Poll;
/// match generator.poll_token() {
///     Poll::Ready(Some(event)) => print!("{}", event?.piece),
///     Poll::Ready(None) => println!("\n[{:?}]", generator.generation().stopped_by),
///     Poll::Pending => {} // the GPU is still busy: draw the frame, poll again next frame
/// }
/// # Ok(()) }
/// ```
///
/// Stops at `max_tokens`, EOS, a stop string or cancellation (checked between tokens; the
/// session stays usable, holding everything generated so far).
pub struct Generator<'a> {
    session: &'a mut Session,
    stream: Option<TokenStream<'a>>,
    opts: GenerateOptions,
    eos: Option<u32>,
    rng: SplitMix64,
    out: Generation,
    state: State,
    /// The last token chosen, fed back on the next step.
    last: Option<u32>,
    t0: Instant,
    /// When the first token arrived (decode time counts from here).
    t1: Option<Instant>,
}

impl<'a> Generator<'a> {
    /// Checks the prompt against the context and the sampling settings; nothing runs until the
    /// first poll.
    pub fn new(
        session: &'a mut Session,
        tokenizer: Option<&'a Tokenizer>,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        eos: Option<u32>,
    ) -> Result<Self> {
        // With a context shift only the prompt itself must fit.
        let max_tokens = if opts.context_shift.is_some() {
            1
        } else {
            opts.max_tokens
        };
        check_context(
            session.position() + prompt_ids.len(),
            max_tokens,
            session.n_ctx(),
        )?;
        opts.sampling.validate()?;
        Ok(Generator {
            session,
            stream: tokenizer.map(Tokenizer::stream),
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
        })
    }

    /// The session being generated on, e.g. to read [`Session::attention_weights`] between
    /// tokens.
    pub fn session(&self) -> &Session {
        self.session
    }

    /// What has been generated so far (all of it once the stream has ended).
    pub fn generation(&self) -> &Generation {
        &self.out
    }

    /// The finished generation.
    pub fn into_generation(self) -> Generation {
        self.out
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
                    match self.last {
                        None => {
                            self.t0 = Instant::now();
                            self.session.submit(&self.out.prompt_ids, pick)?;
                        }
                        Some(id) => {
                            if let (Some(keep), true) = (
                                self.opts.context_shift,
                                self.session.position() >= self.session.n_ctx(),
                            ) {
                                shift_context(self.session, keep)?;
                            }
                            self.session.submit(&[id], pick)?;
                        }
                    }
                    self.state = State::Waiting;
                }
                State::Waiting => {
                    let id = if block {
                        self.session.wait()?
                    } else {
                        match self.session.poll()? {
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
        if let Some(s) =
            (self.opts.stop.iter()).find(|s| !s.is_empty() && self.out.text.contains(s.as_str()))
        {
            let at = self
                .out
                .text
                .find(s.as_str())
                .unwrap_or(self.out.text.len());
            self.out.text.truncate(at);
            return Some(StopReason::StopString);
        }
        if self.opts.stop_at_eos && Some(last) == self.eos {
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
        let piece = match self.stream.as_mut() {
            Some(s) => s.push(id)?.unwrap_or_default(),
            None => String::new(),
        };
        self.last = Some(id);
        self.out.ids.push(id);
        self.out.text.push_str(&piece);
        Ok(TokenEvent {
            id: Some(id),
            piece,
            logprob: self.session.last_logprob(),
            top: self.session.top_candidates().to_vec(),
        })
    }

    /// Ends generation; the text held back for a partial character comes out as a last event.
    fn finish(&mut self, reason: StopReason) -> Result<Option<TokenEvent>> {
        self.state = State::Done;
        self.out.stopped_by = reason;
        if let Some(t1) = self.t1 {
            self.out.decode_s = t1.elapsed().as_secs_f64();
        }
        if reason == StopReason::StopString {
            return Ok(None);
        }
        let rest = self
            .stream
            .as_mut()
            .map(|s| s.finish())
            .transpose()?
            .flatten();
        Ok(rest.filter(|r| !r.is_empty()).map(|piece| {
            self.out.text.push_str(&piece);
            TokenEvent {
                id: None,
                piece,
                logprob: None,
                top: Vec::new(),
            }
        }))
    }
}

impl Iterator for Generator<'_> {
    type Item = Result<TokenEvent>;

    /// The next event, blocking on the GPU.
    fn next(&mut self) -> Option<Self::Item> {
        match self.advance(true) {
            Poll::Ready(item) => item,
            Poll::Pending => unreachable!("a blocking step always completes"),
        }
    }
}

/// Generates from `prompt_ids`, calling `on_token` as each token arrives (a blocking
/// [`Generator`] loop).
pub fn generate_ids(
    session: &mut Session,
    tokenizer: Option<&Tokenizer>,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    eos: Option<u32>,
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<Generation> {
    let mut generator = Generator::new(session, tokenizer, prompt_ids, opts, eos)?;
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
