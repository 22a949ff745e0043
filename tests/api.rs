//! The library as an application embeds it: an app-owned device, one model shared by many
//! sessions (across threads, interleaved, forked), non-blocking steps, the token stream.

mod common;

use std::task::Poll;

use common::*;
use wgpt::{Engine, GenerateOptions, Generator, LoadOptions, Model, Pick, Session, StopReason};

fn tiny() -> (Model, Expected) {
    let dir = fixture("gpt2-tiny");
    let model = Model::load(gpu(), &dir, &LoadOptions::default()).unwrap();
    (model, expected(&dir))
}

/// `n` greedy tokens after `prompt` on a fresh session.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(model).unwrap();
    continue_greedy(&mut s, prompt, n)
}

fn continue_greedy(s: &mut Session, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut out = vec![s.next_token(prompt, Pick::Greedy).unwrap()];
    while out.len() < n {
        out.push(s.next_token(&[*out.last().unwrap()], Pick::Greedy).unwrap());
    }
    out
}

/// An application creates its own instance, adapter and device (as it would for rendering),
/// hands them to wgpt, and generates the tokens transformers gives.
#[test]
fn app_owned_device_generates() {
    let (device, queue) = app_device();
    let engine = Engine::from_device(device.clone(), queue).unwrap();
    let dir = fixture("gpt2-tiny");
    let e = expected(&dir);
    let model = Model::load(engine, &dir, &LoadOptions::default()).unwrap();
    assert_eq!(greedy(&model, &e.prompt_ids, 32), e.greedy_ids);
    // The app's device is still its own: it can go on using it.
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    drop(buf);
}

/// A device made with WebGL2-class limits (no compute) is refused with the limits it lacks.
#[test]
fn too_limited_device_is_refused() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("no GPU adapter: install mesa-vulkan-drivers for lavapipe");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: wgpu::Limits::downlevel_webgl2_defaults(),
        ..Default::default()
    }))
    .unwrap();
    let err = Engine::from_device(device, queue)
        .err()
        .expect("must be refused");
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, wgpt::Error::Limits(_)), "{msg}");
    assert!(
        msg.contains("max_storage_buffers_per_shader_stage"),
        "{msg}"
    );
    assert!(msg.contains("required_limits"), "{msg}");
}

/// Model is shared by reference across threads; each thread's session gives the tokens a
/// session alone gives.
#[test]
fn sessions_on_threads_share_one_model() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<Engine>();
    assert_send::<Session>();
    let (model, e) = tiny();
    let alone = greedy(&model, &e.prompt_ids, 16);
    let results: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| greedy(&model, &e.prompt_ids, 16)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r, alone);
    }
}

/// Two sessions stepped alternately on one model give exactly what each gives alone.
#[test]
fn interleaved_sessions_are_independent() {
    let (model, e) = tiny();
    let other_prompt: Vec<u32> = e.prompt_ids.iter().rev().copied().collect();
    let want_a = greedy(&model, &e.prompt_ids, 12);
    let want_b = greedy(&model, &other_prompt, 12);
    let (mut a, mut b) = (Session::new(&model).unwrap(), Session::new(&model).unwrap());
    let mut got_a = vec![a.next_token(&e.prompt_ids, Pick::Greedy).unwrap()];
    let mut got_b = vec![b.next_token(&other_prompt, Pick::Greedy).unwrap()];
    for _ in 1..12 {
        got_a.push(
            a.next_token(&[*got_a.last().unwrap()], Pick::Greedy)
                .unwrap(),
        );
        got_b.push(
            b.next_token(&[*got_b.last().unwrap()], Pick::Greedy)
                .unwrap(),
        );
    }
    assert_eq!((got_a, got_b), (want_a, want_b));
}

/// A fork continues exactly as the original would; branching it does not disturb the original.
/// Both cache layouts (buffers, and the textures CPU adapters use).
#[test]
fn forked_session_branches() {
    for layout in [wgpt::WeightLayout::Buffer, wgpt::WeightLayout::Texture] {
        let dir = fixture("gpt2-tiny");
        let opts = LoadOptions {
            layout,
            ..Default::default()
        };
        let model = Model::load(gpu(), &dir, &opts).unwrap();
        assert_eq!(model.uses_textures(), layout == wgpt::WeightLayout::Texture);
        fork_and_branch(&model, &expected(&dir));
    }
}

fn fork_and_branch(model: &Model, e: &Expected) {
    let want = greedy(model, &e.prompt_ids, 20);
    let mut s = Session::new(model).unwrap();
    let head = continue_greedy(&mut s, &e.prompt_ids, 8);
    let mut fork = s.fork().unwrap();
    assert_eq!((fork.position(), fork.tokens()), (s.position(), s.tokens()));
    // The fork goes elsewhere first ...
    let branch = continue_greedy(&mut fork.fork().unwrap(), &[7, 8, 9], 4);
    assert_eq!(branch.len(), 4);
    // ... the fork and the original then both continue the greedy sequence.
    let rest_fork = continue_greedy(&mut fork, &[head[7]], 12);
    let rest = continue_greedy(&mut s, &[head[7]], 12);
    assert_eq!(rest, want[8..]);
    assert_eq!(rest_fork, want[8..]);
}

/// submit + poll (never blocking) gives the tokens next_token gives; misuse is an error.
#[test]
fn non_blocking_steps() {
    let (model, e) = tiny();
    let want = greedy(&model, &e.prompt_ids, 6);
    let mut s = Session::new(&model).unwrap();
    assert_eq!(s.poll().unwrap(), None, "nothing in flight");
    let mut got = Vec::new();
    let mut input = e.prompt_ids.clone();
    let mut polls = 0;
    while got.len() < 6 {
        s.submit(&input, Pick::Greedy).unwrap();
        assert!(s.is_pending());
        let err = s.submit(&[1], Pick::Greedy).unwrap_err();
        assert!(err.to_string().contains("in flight"), "{err}");
        let id = loop {
            polls += 1;
            if let Some(id) = s.poll().unwrap() {
                break id;
            }
            std::thread::yield_now();
        };
        got.push(id);
        input = vec![id];
    }
    println!("6 tokens in {polls} polls");
    assert_eq!(got, want);
    // reset with a step in flight leaves the session usable.
    s.submit(&[1], Pick::Greedy).unwrap();
    s.reset();
    assert_eq!(continue_greedy(&mut s, &e.prompt_ids, 6), want);
}

/// The generator as a blocking iterator and as a non-blocking poll gives the same events; the
/// text of the events is the generation's text; EOS stops after its token.
#[test]
fn generator_iterates_and_polls() {
    let dir = fixture("gpt2-tiny");
    let (model, e) = tiny();
    let tok = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let opts = GenerateOptions {
        max_tokens: 16,
        stop_at_eos: false,
        ..Default::default()
    };
    let mut s = Session::new(&model).unwrap();
    let mut g = Generator::new(&mut s, Some(&tok), &e.prompt_ids, &opts).unwrap();
    let blocking: Vec<_> = g.by_ref().map(|ev| ev.unwrap()).collect();
    let out = g.into_generation();
    assert_eq!(out.ids, e.greedy_ids[..16]);
    let text: String = blocking.iter().map(|ev| ev.piece.as_str()).collect();
    assert_eq!(text, out.text);

    let mut s = Session::new(&model).unwrap();
    let mut g = Generator::new(&mut s, Some(&tok), &e.prompt_ids, &opts).unwrap();
    let mut polled = Vec::new();
    loop {
        match g.poll_token() {
            Poll::Ready(Some(ev)) => polled.push(ev.unwrap()),
            Poll::Ready(None) => break,
            Poll::Pending => std::thread::yield_now(),
        }
    }
    assert_eq!(polled, blocking);

    // EOS: pretend the 6th greedy token is the end of sequence.
    let eos = e.greedy_ids[5];
    let first = e.greedy_ids.iter().position(|&t| t == eos).unwrap();
    let opts = GenerateOptions {
        stop_at_eos: true,
        eos_token_ids: Some(vec![eos]),
        ..opts
    };
    let mut s = Session::new(&model).unwrap();
    let g = wgpt::generate_ids(&mut s, None, &e.prompt_ids, &opts, |_| {}).unwrap();
    assert_eq!(g.stopped_by, StopReason::Eos);
    assert_eq!(g.ids, e.greedy_ids[..=first]);
}

/// Cancelled generation leaves the session usable: it continues where it stopped.
#[test]
fn cancelled_session_continues() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (model, e) = tiny();
    let flag = Arc::new(AtomicBool::new(false));
    let opts = GenerateOptions {
        max_tokens: 32,
        stop_at_eos: false,
        cancel: Some(flag.clone()),
        ..Default::default()
    };
    let mut s = Session::new(&model).unwrap();
    let mut n = 0;
    let g = wgpt::generate_ids(&mut s, None, &e.prompt_ids, &opts, |_| {
        n += 1;
        if n == 4 {
            flag.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!(
        (g.stopped_by, &g.ids[..]),
        (StopReason::Cancelled, &e.greedy_ids[..4])
    );
    // The last generated token was never fed back; feeding it continues the sequence.
    let rest = continue_greedy(&mut s, &[g.ids[3]], 4);
    assert_eq!(rest, e.greedy_ids[4..8]);
}

/// A batched decode of B sequences gives the logits B single sessions give, and the same greedy
/// tokens: B = 3 (the gemv path) and B = 9 (more rows than gemv takes: the tiled matmul), both
/// cache layouts, sequences of different lengths.
#[test]
fn batched_decode_matches_single_sessions() {
    for layout in [wgpt::WeightLayout::Buffer, wgpt::WeightLayout::Texture] {
        let dir = fixture("gpt2-tiny");
        let opts = LoadOptions {
            layout,
            ..Default::default()
        };
        let model = Model::load(gpu(), &dir, &opts).unwrap();
        let e = expected(&dir);
        for b in [3usize, 9] {
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|i| {
                    e.prompt_ids[..e.prompt_ids.len() - i % 3]
                        .iter()
                        .map(|t| t + i as u32)
                        .collect()
                })
                .collect();
            let mut batch = wgpt::Batch::new(&model, b).unwrap();
            let mut singles: Vec<Session> = (0..b).map(|_| Session::new(&model).unwrap()).collect();
            let mut tokens = Vec::new();
            for (i, p) in prompts.iter().enumerate() {
                let first = batch.prefill(i, p).unwrap();
                assert_eq!(first, singles[i].next_token(p, Pick::Greedy).unwrap());
                tokens.push(first);
            }
            let mut worst = 0f32;
            for step in 0..6 {
                let got = batch.step_logits(&tokens).unwrap();
                let v = model.config.vocab_size;
                for (i, s) in singles.iter_mut().enumerate() {
                    let want = s.logits(&[tokens[i]]).unwrap();
                    worst = worst.max(max_abs_diff(&got[i * v..(i + 1) * v], &want));
                }
                // Greedy from the batch's own argmax, checked against the logits.
                let next: Vec<u32> = (0..b).map(|i| argmax(&got[i * v..(i + 1) * v])).collect();
                tokens = next;
                assert!(batch.position(0) == prompts[0].len() + step + 1);
            }
            // Different orders of the same f32 sums (B rows through the tiled matmul vs one row
            // through gemv) differ by a few ulps of logits of size ~10.
            println!("{layout:?} B={b}: max |batched - single| logit diff {worst:e}");
            assert!(worst < 1e-4, "{worst}");
            // And the greedy step: one forward pass, the same tokens as each session alone.
            let got = batch.step(&tokens).unwrap();
            let want: Vec<u32> = (0..b)
                .map(|i| singles[i].next_token(&[tokens[i]], Pick::Greedy).unwrap())
                .collect();
            assert_eq!(got, want);
        }
    }
}

/// Continuous batching: sequences join and leave between steps (a freed slot is reused), a step
/// takes any subset of the slots in any order, and each row picks its own way (greedy, or
/// sampled with its own settings, draw and penalty window). Every sequence gets the tokens a
/// session alone gets with the same draws, and the same model log-probabilities.
#[test]
fn batch_rows_join_leave_and_sample_like_single_sessions() {
    use wgpt::{BatchRow, Sampling};
    let sample = |temperature, top_k, top_p, repeat_penalty| Sampling {
        temperature,
        top_k,
        top_p,
        repeat_penalty,
        repeat_window: 8,
        ..Default::default()
    };
    let settings = [
        Sampling::default(),
        sample(0.8, 20, 1.0, 1.0),
        sample(1.2, 0, 0.9, 1.3),
        sample(0.0, 0, 1.0, 1.5), // greedy with a penalty: the sampler's path
        sample(0.9, 0, 1.0, 1.0),
    ];
    for layout in [wgpt::WeightLayout::Buffer, wgpt::WeightLayout::Texture] {
        let dir = fixture("gpt2-tiny");
        let opts = LoadOptions {
            layout,
            ..Default::default()
        };
        let model = Model::load(gpu(), &dir, &opts).unwrap();
        let e = expected(&dir);
        let prompts: Vec<Vec<u32>> = (0..settings.len())
            .map(|i| {
                (e.prompt_ids[i % 3..].iter())
                    .map(|t| (t + 7 * i as u32) % 384)
                    .collect()
            })
            .collect();
        let draws = |i: usize, k: usize| ((i * 31 + k * 17) % 97) as f32 / 97.0;
        let steps = 6;
        // Alone: one session each.
        let alone: Vec<Vec<(u32, f32)>> = (0..settings.len())
            .map(|i| {
                let mut s = Session::with_context(&model, 64).unwrap();
                s.set_top_candidates(3);
                let mut fed = prompts[i].clone();
                (0..steps)
                    .map(|k| {
                        let id = s.next_token(&fed, settings[i].pick(draws(i, k))).unwrap();
                        fed = vec![id];
                        let lp = (s.last_model_logprob())
                            .unwrap_or_else(|| s.top_candidates()[0].1.ln());
                        (id, lp)
                    })
                    .collect()
            })
            .collect();
        // Together: 3 slots for 5 sequences; sequence i starts at step 2 i / 2 ... and takes
        // the first free slot; rows go in reverse order of slot.
        let mut batch = wgpt::Batch::with_context(&model, 3, 64).unwrap();
        batch.set_top_candidates(3);
        let mut got: Vec<Vec<(u32, f32)>> = vec![Vec::new(); settings.len()];
        let mut slot_of: Vec<Option<usize>> = vec![None; settings.len()];
        let mut next: Vec<u32> = prompts.iter().map(|p| *p.last().unwrap()).collect();
        let (mut waiting, mut tick, mut worst) = (0..settings.len(), 0, 0f32);
        let mut joined = waiting.next();
        while got.iter().any(|g| g.len() < steps) {
            let busy: Vec<usize> = slot_of.iter().flatten().copied().collect();
            let free = (0..3).find(|s| !busy.contains(s));
            if let (Some(i), Some(slot)) = (joined.filter(|_| tick % 2 == 0), free) {
                batch.reset(slot);
                let p = &prompts[i];
                if p.len() > 1 {
                    batch.feed(slot, &p[..p.len() - 1]).unwrap();
                }
                slot_of[i] = Some(slot);
                joined = waiting.next();
            }
            let mut rows: Vec<(usize, BatchRow)> = (0..settings.len())
                .filter_map(|i| slot_of[i].map(|seq| (i, seq)))
                .map(|(i, seq)| {
                    let pick = settings[i].pick(draws(i, got[i].len()));
                    (
                        i,
                        BatchRow {
                            seq,
                            token: next[i],
                            pick,
                        },
                    )
                })
                .collect();
            rows.sort_by_key(|(_, r)| std::cmp::Reverse(r.seq));
            let only: Vec<BatchRow> = rows.iter().map(|(_, r)| *r).collect();
            let out = batch.decode(&only).unwrap();
            for ((i, _), t) in rows.iter().zip(out) {
                let want = alone[*i][got[*i].len()];
                worst = worst.max((t.logprob - want.1).abs());
                assert_eq!(t.top.len(), 3);
                got[*i].push((t.id, t.logprob));
                next[*i] = t.id;
                if got[*i].len() == steps {
                    slot_of[*i] = None; // leaves; its slot is reset when reused
                }
            }
            tick += 1;
        }
        let ids = |v: &Vec<Vec<(u32, f32)>>| -> Vec<Vec<u32>> {
            v.iter().map(|s| s.iter().map(|t| t.0).collect()).collect()
        };
        assert_eq!(ids(&got), ids(&alone), "{layout:?}");
        // Batched rows and one row sum in different orders: a few ulps of logits of size ~10.
        println!("{layout:?}: max |batched - alone| log-probability {worst:e}");
        assert!(worst < 1e-4, "{worst}");
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Bad batch input is an error, not a panic.
#[test]
fn batch_rejects_bad_input() {
    let (model, _) = tiny();
    assert!(wgpt::Batch::new(&model, 0).is_err());
    assert!(wgpt::Batch::new(&model, 65).is_err());
    let mut batch = wgpt::Batch::new(&model, 2).unwrap();
    let err = batch.step(&[1]).unwrap_err();
    assert!(err.to_string().contains("one token per sequence"), "{err}");
    assert!(batch.step(&[1, 100_000]).is_err());
    assert!(batch.prefill(2, &[1]).is_err());
    let row = |seq, token| wgpt::BatchRow {
        seq,
        token,
        pick: Pick::Greedy,
    };
    let err = batch.decode(&[row(1, 1), row(1, 2)]).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    let err = batch.decode(&[row(5, 1)]).unwrap_err();
    assert!(err.to_string().contains("not in the batch"), "{err}");
    assert!(batch.decode(&[]).is_err());
    assert!(wgpt::Batch::with_context(&model, 2, 0).is_err());
}
