//! The decode loop behind `wgpt serve`: one thread owns the model's [`Batch`] and runs requests
//! together (continuous batching). Each turn of the loop admits waiting requests into free KV
//! slots, feeds one chunk of one new prompt (so a long prompt never stalls running replies for
//! long), then advances every running reply by one token in a single batched forward pass.
//! Replies leave as they finish (or as their client goes away), freeing their slot at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;
use wgpt::runtime::generate::SplitMix64;
use wgpt::{Batch, BatchRow, BatchToken, Sampling, TextOutput, Tokenizer};

/// Prompt tokens fed per turn of the loop: long enough to keep prefill efficient (a forward
/// pass over 128 rows reads the weights once for all of them), short enough that running
/// replies wait at most about one such pass between their tokens.
const PREFILL_CHUNK: usize = 128;

/// One generation request, tokenized and checked against the context.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Most tokens to generate (prompt + max_tokens fits the context).
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Ids that end the reply (the chat template's end of turn, or the model's EOS).
    pub eos: Vec<u32>,
    /// Candidates to report per token (OpenAI's top_logprobs), 0 = none.
    pub top_n: usize,
    /// Where the reply goes; dropped by the client's side when it disconnects.
    pub events: mpsc::UnboundedSender<Event>,
}

/// What the decode loop tells a request.
#[derive(Debug)]
pub enum Event {
    /// A generated token (`id` None: text held back until the end) and the text it releases.
    Token {
        id: Option<u32>,
        piece: String,
        /// Natural log-probability under the model's distribution.
        logprob: f32,
        top: Vec<(u32, f32)>,
    },
    /// The reply is complete.
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The GPU failed; the reply is lost.
    Failed(String),
}

/// Why a reply ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or a stop string.
    Stop,
    /// max_tokens, or the end of the context.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the decode loop reports to /health.
#[derive(Default)]
pub struct Stats {
    /// Requests holding a KV slot.
    pub processing: AtomicUsize,
    /// Tokens generated since the server started.
    pub generated: AtomicU64,
}

/// A request holding a KV slot.
struct Active {
    job: Job,
    /// Prompt tokens in the cache; the last one is fed as the first decode row.
    fed: usize,
    /// The token the next decode row feeds.
    next: u32,
    rng: SplitMix64,
    text: TextOutput,
    generated: usize,
    /// Order of arrival: prompts are fed first come, first served.
    arrival: u64,
}

/// Runs the decode loop until `jobs` closes and every admitted request is done. `cancel`
/// (Ctrl-C a second time) drops every request at once.
pub fn run(
    mut batch: Batch,
    tokenizer: Tokenizer,
    mut jobs: mpsc::Receiver<Job>,
    cancel: Arc<AtomicBool>,
    stats: Arc<Stats>,
) {
    let mut slots: Vec<Option<Active>> = (0..batch.len()).map(|_| None).collect();
    let (mut arrivals, mut open) = (0u64, true);
    loop {
        // Admit: block for work only when nothing is running.
        while let Some(free) = slots.iter().position(Option::is_none) {
            let idle = slots.iter().all(Option::is_none);
            let job = match (open, idle) {
                (false, _) => break,
                (true, true) => jobs.blocking_recv(),
                (true, false) => jobs.try_recv().ok(),
            };
            let Some(job) = job else {
                open &= !idle; // blocking_recv returned None: the server is shutting down
                break;
            };
            if job.events.is_closed() {
                continue; // its client left while it waited
            }
            batch.reset(free);
            arrivals += 1;
            slots[free] = Some(Active {
                next: *job.prompt.last().expect("the server refuses empty prompts"),
                rng: SplitMix64(job.seed),
                text: TextOutput::new(Some(&tokenizer), &job.stop),
                fed: 0,
                generated: 0,
                arrival: arrivals,
                job,
            });
        }
        if cancel.load(Ordering::Relaxed) {
            slots.iter_mut().for_each(|s| *s = None);
        }
        // A client that left frees its slot (and stops costing a row).
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|a| a.job.events.is_closed()) {
                *slot = None;
            }
        }
        let busy = |slots: &[Option<Active>]| slots.iter().filter(|s| s.is_some()).count();
        stats.processing.store(busy(&slots), Ordering::Relaxed);
        if busy(&slots) == 0 {
            if open {
                continue;
            }
            return;
        }
        let t0 = std::time::Instant::now();
        let fed = prefill_chunk(&mut batch, &mut slots);
        let t1 = std::time::Instant::now();
        let rows = decode_step(&mut batch, &mut slots);
        stats.generated.fetch_add(rows as u64, Ordering::Relaxed);
        stats.processing.store(busy(&slots), Ordering::Relaxed);
        log::debug!(
            "fed {fed} prompt tokens in {:.1} ms, decoded {rows} rows in {:.1} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            t1.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Runs each kind of step once (one row, a few, all slots; short and long prompt chunks;
/// sampling), so that their pipelines are compiled before the first request rather than
/// during it (seconds on a CPU adapter).
pub fn warm_up(batch: &mut Batch) -> wgpt::Result<()> {
    let t0 = std::time::Instant::now();
    let n = batch.len();
    let sample = Sampling {
        temperature: 1.0,
        ..Default::default()
    };
    for rows in [1, 2.min(n), n] {
        let rows: Vec<BatchRow> = (0..rows)
            .map(|seq| BatchRow {
                seq,
                token: 0,
                pick: sample.pick(0.5),
            })
            .collect();
        batch.decode(&rows)?;
    }
    for t in [1, 2, 64] {
        if batch.position(0) + t < batch.n_ctx() {
            batch.feed(0, &vec![0; t])?;
        }
    }
    (0..n).for_each(|seq| batch.reset(seq));
    log::info!("pipelines warmed up in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Feeds up to [`PREFILL_CHUNK`] tokens of the prompts still coming in (all but each one's last
/// token), oldest first: short prompts arriving together all join the next decode step.
/// Returns how many tokens it fed.
fn prefill_chunk(batch: &mut Batch, slots: &mut [Option<Active>]) -> usize {
    let mut feeding: Vec<(u64, usize)> = (slots.iter().enumerate())
        .filter_map(|(i, s)| s.as_ref().map(|a| (i, a)))
        .filter(|(_, a)| a.fed + 1 < a.job.prompt.len())
        .map(|(i, a)| (a.arrival, i))
        .collect();
    feeding.sort_unstable();
    let mut budget = PREFILL_CHUNK;
    for (_, i) in feeding {
        if budget == 0 {
            break;
        }
        let a = slots[i].as_mut().expect("found above");
        let (start, end) = (a.fed, (a.fed + budget).min(a.job.prompt.len() - 1));
        match batch.feed(i, &a.job.prompt[start..end]) {
            Ok(()) => a.fed = end,
            Err(e) => fail(&mut slots[i], &e),
        }
        budget -= end - start;
    }
    PREFILL_CHUNK - budget
}

/// One token for every request whose prompt is in, in one forward pass; returns the rows.
fn decode_step(batch: &mut Batch, slots: &mut [Option<Active>]) -> usize {
    let ready: Vec<usize> = (0..slots.len())
        .filter(|&i| (slots[i].as_ref()).is_some_and(|a| a.fed + 1 >= a.job.prompt.len()))
        .collect();
    if ready.is_empty() {
        return 0;
    }
    let top_n = ready.iter().map(|&i| active(slots, i).job.top_n).max();
    batch.set_top_candidates(top_n.unwrap_or(0));
    let rows: Vec<BatchRow> = ready
        .iter()
        .map(|&seq| {
            let a = slots[seq].as_mut().expect("ready");
            let pick = a.job.sampling.pick(a.rng.next_f32());
            BatchRow {
                seq,
                token: a.next,
                pick,
            }
        })
        .collect();
    match batch.decode(&rows) {
        Ok(tokens) => {
            let n_ctx = batch.n_ctx();
            for (&seq, t) in ready.iter().zip(tokens) {
                let at_end = batch.position(seq) >= n_ctx;
                deliver(&mut slots[seq], t, at_end);
            }
        }
        Err(e) => ready.iter().for_each(|&i| fail(&mut slots[i], &e)),
    }
    ready.len()
}

fn active(slots: &[Option<Active>], i: usize) -> &Active {
    slots[i].as_ref().expect("an occupied slot")
}

/// Hands token `t` to its request; ends the request (freeing the slot) when it is done.
fn deliver(slot: &mut Option<Active>, t: BatchToken, at_end: bool) {
    let a = slot.as_mut().expect("a decoded row's slot");
    a.generated += 1;
    a.next = t.id;
    let eos = a.job.eos.contains(&t.id);
    let piece = match eos {
        true => Ok(String::new()),
        false => a.text.push(t.id),
    };
    let piece = match piece {
        Ok(p) => p,
        Err(e) => return fail(slot, &e),
    };
    let event = Event::Token {
        id: (!eos).then_some(t.id),
        piece,
        logprob: t.logprob,
        top: t.top,
    };
    // An end-of-turn token is not part of the reply: it only ends it.
    if !eos && a.job.events.send(event).is_err() {
        *slot = None; // the client left
        return;
    }
    let finish = if eos || a.text.hit_stop() {
        Finish::Stop
    } else if a.generated >= a.job.max_tokens || at_end {
        Finish::Length
    } else {
        return;
    };
    if let Ok(rest) = a.text.finish() {
        if !rest.is_empty() {
            let _ = a.job.events.send(Event::Token {
                id: None,
                piece: rest,
                logprob: 0.0,
                top: Vec::new(),
            });
        }
    }
    let _ = a.job.events.send(Event::Done {
        finish,
        prompt_tokens: a.job.prompt.len(),
        completion_tokens: a.generated,
    });
    *slot = None;
}

fn fail(slot: &mut Option<Active>, e: &wgpt::Error) {
    if let Some(a) = slot.take() {
        log::error!("generation failed: {e}");
        let _ = a.job.events.send(Event::Failed(e.to_string()));
    }
}
