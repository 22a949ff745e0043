//! Text generation: prefill the prompt in one forward pass, then decode one token per step, each
//! chosen on the GPU; text streams out as it decodes cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::model::Session;
use crate::sampler::Sampling;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
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
    pub prompt_ids: Vec<u32>,
    /// Generated token ids (the prompt excluded).
    pub ids: Vec<u32>,
    pub text: String,
    /// Seconds for the prompt's forward pass (time to first token).
    pub prefill_s: f64,
    /// Seconds for the remaining tokens, one forward pass each.
    pub decode_s: f64,
    /// Why generation ended.
    pub stopped_by: StopReason,
}

/// Why [`generate_ids`] returned.
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

/// One generated token, as [`generate_ids`] reports it.
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent<'a> {
    /// The token id; `None` for the final flush of text held back at the end.
    pub id: Option<u32>,
    /// The text this token completes (empty while a multi-byte character is still partial).
    pub piece: &'a str,
    /// Its log-probability under the sampling distribution (`None` when greedy).
    pub logprob: Option<f32>,
    /// The most likely candidates for this position, with probabilities, when the session was
    /// asked for them ([`Session::set_top_candidates`]).
    pub top: &'a [(u32, f32)],
}

/// Generates from `prompt_ids`, calling `on_token` as each token arrives.
pub fn generate_ids(
    session: &mut Session,
    tokenizer: Option<&Tokenizer>,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    eos: Option<u32>,
    mut on_token: impl FnMut(TokenEvent),
) -> Result<Generation> {
    let n_ctx = session.n_ctx();
    // With a context shift only the prompt itself must fit.
    let max_tokens = if opts.context_shift.is_some() {
        1
    } else {
        opts.max_tokens
    };
    check_context(session.position() + prompt_ids.len(), max_tokens, n_ctx)?;
    let mut rng = SplitMix64(opts.seed);
    opts.sampling.validate()?;
    let mut pick = || opts.sampling.pick(rng.next_f32());
    let mut stream = tokenizer.map(Tokenizer::stream);
    let mut out = Generation {
        prompt_ids: prompt_ids.to_vec(),
        ..Default::default()
    };
    let mut emit = |id: u32, session: &Session, out: &mut Generation| -> Result<()> {
        let piece = match stream.as_mut() {
            Some(s) => s.push(id)?.unwrap_or_default(),
            None => String::new(),
        };
        out.ids.push(id);
        out.text.push_str(&piece);
        on_token(TokenEvent {
            id: Some(id),
            piece: &piece,
            logprob: session.last_logprob(),
            top: session.top_candidates(),
        });
        Ok(())
    };
    if opts.max_tokens == 0 {
        return Ok(out);
    }
    let t0 = Instant::now();
    let mut next = session.next_token(prompt_ids, pick())?;
    out.prefill_s = t0.elapsed().as_secs_f64();
    emit(next, session, &mut out)?;
    let t1 = Instant::now();
    let stop_hit = |out: &Generation| {
        opts.stop
            .iter()
            .find(|s| !s.is_empty() && out.text.contains(s.as_str()))
            .cloned()
    };
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    loop {
        if let Some(s) = stop_hit(&out) {
            let at = out.text.find(&s).unwrap_or(out.text.len());
            out.text.truncate(at);
            out.stopped_by = StopReason::StopString;
            break;
        }
        if opts.stop_at_eos && Some(next) == eos {
            out.stopped_by = StopReason::Eos;
            break;
        }
        if cancelled() {
            out.stopped_by = StopReason::Cancelled;
            break;
        }
        if out.ids.len() >= opts.max_tokens {
            break;
        }
        if let (Some(keep), true) = (opts.context_shift, session.position() >= n_ctx) {
            shift_context(session, keep)?;
        }
        next = session.next_token(&[next], pick())?;
        emit(next, session, &mut out)?;
    }
    out.decode_s = t1.elapsed().as_secs_f64();
    let held_back = match out.stopped_by {
        StopReason::StopString => None,
        _ => stream.as_mut().map(|s| s.finish()).transpose()?.flatten(),
    };
    if let Some(rest) = held_back {
        out.text.push_str(&rest);
        on_token(TokenEvent {
            id: None,
            piece: &rest,
            logprob: None,
            top: &[],
        });
    }
    Ok(out)
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
