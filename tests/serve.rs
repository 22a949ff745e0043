//! `wgpt serve` on loopback: the OpenAI endpoints against `wgpt generate` on the same model,
//! streaming, concurrency (continuous batching), bad requests, the request queue's bound,
//! clients that leave mid-stream, the API key, memory over many requests, and Ctrl-C.
//! The official `openai` Python client runs tests/serve_openai.py against SmolLM2 too.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A `wgpt serve` child process on a free port; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgpt"))
            .args(["serve", "--port", "0"])
            .args(args)
            .env_remove("WGPT_ADAPTER")
            .env_remove("WGPT_API_KEY")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run wgpt serve");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    let _ = tx.send(addr.rsplit(':').next().unwrap_or("").parse::<u16>());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("wgpt serve printed no address")
            .expect("a port");
        Server { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        s
    }

    /// One HTTP/1.0 request (the body ends when the connection closes: no chunking to undo).
    fn send(&self, method: &str, path: &str, body: &str, extra: &[(&str, &str)]) -> Response {
        let mut s = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        s.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers = head
            .lines()
            .skip(1)
            .map(|l| l.to_ascii_lowercase())
            .collect();
        Response {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        self.send("POST", path, &body.to_string(), &[])
    }

    fn get(&self, path: &str) -> Response {
        self.send("GET", path, "", &[])
    }

    /// Kilobytes of resident memory.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<String>,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        (self.body.lines())
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    /// An OpenAI error object with this status; returns its message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let e = &self.json()["error"];
        assert!(e["type"].is_string(), "{}", self.body);
        e["message"].as_str().expect("an error message").to_string()
    }
}

/// Streamed chunks joined: the text, the finish reason, and whether [DONE] ended it.
fn join_stream(r: &Response, chat: bool) -> (String, String, bool) {
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.iter().any(|h| h.contains("text/event-stream")));
    let events = r.events();
    let done = events.last().map(String::as_str) == Some("[DONE]");
    let (mut text, mut finish) = (String::new(), String::new());
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        let Some(c) = v["choices"].get(0) else {
            continue;
        };
        let piece = if chat {
            &c["delta"]["content"]
        } else {
            &c["text"]
        };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish, done)
}

/// `wgpt generate --json` on the same model: its JSON summary.
fn generate(model: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .args(["generate", "--model", model, "--json"])
        .args(args)
        .env_remove("WGPT_ADAPTER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// The fixtures' contexts are 64 positions; qwen2-tiny has a chat template (whose default
/// system turn alone fills that), llama-gqa none. Chat replies are checked on SmolLM2.
fn qwen() -> String {
    fixture("qwen2-tiny").to_string_lossy().into_owned()
}

fn plain() -> String {
    fixture("llama-gqa").to_string_lossy().into_owned()
}

fn smollm2() -> String {
    smollm2_gguf().to_string_lossy().into_owned()
}

/// Chat and completions, plain and streamed, equal `wgpt generate` (greedy) on the same
/// model; usage counts the tokens; logprobs come with their top candidates.
#[test]
fn replies_equal_wgpt_generate() {
    let model = smollm2();
    let server = Server::start(&[
        "--model",
        &model,
        "--parallel",
        "4",
        "--ctx",
        "256",
        "--alias",
        "smol",
    ]);
    assert_eq!(server.get("/health").json()["status"], "ok");
    let models = server.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "smol", "{models}");

    let want = generate(&model, &["--chat", "--prompt", "Hello there", "-n", "12"]);
    let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Hello there"}],
                      "temperature": 0, "max_tokens": 12, "logprobs": true, "top_logprobs": 3});
    let r = server.post("/v1/chat/completions", &body).json();
    assert_eq!(r["object"], "chat.completion");
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["content"], want["text"], "{r}");
    assert_eq!(choice["message"]["role"], "assistant");
    let n = want["ids"].as_array().unwrap().len();
    assert_eq!(r["usage"]["prompt_tokens"], want["prompt_tokens"]);
    assert_eq!(r["usage"]["completion_tokens"], n);
    let finish = if n == 12 { "length" } else { "stop" };
    assert_eq!(choice["finish_reason"], finish);
    // Greedy: each token is the most likely candidate, with its log-probability.
    for t in choice["logprobs"]["content"].as_array().unwrap() {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], t["token"]);
        let (lp, lp0) = (
            t["logprob"].as_f64().unwrap(),
            top[0]["logprob"].as_f64().unwrap(),
        );
        assert!(lp <= 0.0 && (lp - lp0).abs() < 1e-5, "{t}");
        assert!(top[1]["logprob"].as_f64().unwrap() <= lp0);
    }
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let s = server.post("/v1/chat/completions", &streamed);
    let (text, finish_reason, done) = join_stream(&s, true);
    assert_eq!(
        (text.as_str(), finish_reason.as_str(), done),
        (want["text"].as_str().unwrap(), finish, true)
    );
    let events = s.events();
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], n, "{usage}");

    let want = generate(&model, &["--prompt", "The weather today", "-n", "10"]);
    let body =
        json!({"prompt": "The weather today", "temperature": 0, "max_tokens": 10, "logprobs": 2});
    let r = server.post("/v1/completions", &body).json();
    assert_eq!(r["choices"][0]["text"], want["text"], "{r}");
    assert_eq!(
        r["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        want["ids"].as_array().unwrap().len()
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (text, _, done) = join_stream(&server.post("/v1/completions", &streamed), false);
    assert_eq!(
        (text.as_str(), done),
        (want["text"].as_str().unwrap(), true)
    );
    // Token ids as the prompt, and a stop string that cuts the text.
    let ids = want["prompt_ids"].clone();
    let r = server
        .post(
            "/v1/completions",
            &json!({"prompt": ids, "temperature": 0, "max_tokens": 10}),
        )
        .json();
    assert_eq!(r["choices"][0]["text"], want["text"]);
    let text = want["text"].as_str().unwrap();
    let stop: String = text.chars().skip(3).take(2).collect();
    let r = server.post("/v1/completions", &json!({"prompt": "The weather today", "temperature": 0, "max_tokens": 10, "stop": stop})).json();
    let cut = &text[..text.find(&stop).unwrap()];
    assert_eq!(r["choices"][0]["text"], cut);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    // Sampling with a seed repeats itself.
    let sampled = json!({"prompt": "The weather today", "temperature": 0.9, "top_p": 0.9, "max_tokens": 10, "seed": 7});
    let a = server.post("/v1/completions", &sampled).json();
    let b = server.post("/v1/completions", &sampled).json();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

/// Eight streams at once (continuous batching: they join while others decode) each equal the
/// same request served alone.
#[test]
fn concurrent_streams_equal_their_solo_replies() {
    let model = smollm2();
    let server = Server::start(&["--model", &model, "--parallel", "8", "--ctx", "256"]);
    let body = |i: usize| {
        let prompt = format!(
            "Request number {i} asks about {}",
            ["rivers", "trains", "owls"][i % 3]
        );
        json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0,
               "max_tokens": 8 + 3 * i, "stream": true})
    };
    let solo: Vec<String> = (0..8)
        .map(|i| join_stream(&server.post("/v1/chat/completions", &body(i)), true).0)
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (server, body) = (&server, body(i));
                s.spawn(move || join_stream(&server.post("/v1/chat/completions", &body), true).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, solo);
}

/// Bad requests get a 4xx with an OpenAI error object; the server keeps serving.
#[test]
fn bad_requests_get_openai_errors() {
    let model = qwen();
    let server = Server::start(&["--model", &model, "--parallel", "2", "--ctx", "64"]);
    let chat = |body: &str| server.send("POST", "/v1/chat/completions", body, &[]);
    let msg = |content: &str| json!([{"role": "user", "content": content}]);
    let cases: Vec<(Response, u16, &str)> = vec![
        (chat("{\"messages\": [}"), 400, "not valid"),
        (chat(""), 400, "no body"),
        (chat("{}"), 400, "messages is required"),
        (chat("{\"messages\": []}"), 400, "must not be empty"),
        (chat("{\"messages\": \"hi\"}"), 400, "invalid type"),
        (
            chat(&json!({"messages": msg("hi"), "max_tokens": -3}).to_string()),
            400,
            "at least 1",
        ),
        (
            chat(&json!({"messages": msg("hi"), "temperature": "hot"}).to_string()),
            400,
            "invalid type",
        ),
        (
            chat(&json!({"messages": msg("hi"), "temperature": 9}).to_string()),
            400,
            "temperature",
        ),
        (
            chat(&json!({"messages": msg("hi"), "n": 2}).to_string()),
            400,
            "n = 1",
        ),
        (
            chat(&json!({"messages": msg("hi"), "model": "gpt-4o"}).to_string()),
            404,
            "does not exist",
        ),
        (
            chat(&json!({"messages": msg(&"word ".repeat(200))}).to_string()),
            400,
            "context is 64 tokens",
        ),
        (
            server.post(
                "/v1/completions",
                &json!({"prompt": "hi", "max_tokens": 500}),
            ),
            400,
            "context is 64 tokens",
        ),
        (
            server.post("/v1/completions", &json!({"prompt": [1, 2, 999999]})),
            400,
            "outside the vocabulary",
        ),
        (
            server.post("/v1/completions", &json!({"max_tokens": 3})),
            400,
            "prompt is required",
        ),
        (
            server.post("/v1/completions", &json!({"prompt": "a", "max_tokens": 0})),
            400,
            "at least 1",
        ),
        (
            server.post(
                "/v1/completions",
                &json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}),
            ),
            400,
            "at most 4",
        ),
        (
            server.post("/v1/embeddings", &json!({"input": "hi"})),
            400,
            "no embedding model",
        ),
        (server.get("/v1/nothing"), 404, "no such endpoint"),
        (server.get("/v1/chat/completions"), 405, "wrong method"),
    ];
    for (i, (r, status, needle)) in cases.iter().enumerate() {
        let m = r.error(*status);
        assert!(m.contains(needle), "case {i}: {needle:?} not in {m:?}");
    }
    let long = chat(&json!({"messages": msg(&"word ".repeat(200))}).to_string());
    assert_eq!(long.json()["error"]["code"], "context_length_exceeded");
    // Still serving.
    let ok = server.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}));
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A model without a chat template has no chat endpoint.
    let plain = Server::start(&["--model", &plain(), "--parallel", "1"]);
    let r = plain.post("/v1/chat/completions", &json!({"messages": msg("hi")}));
    assert!(r.error(400).contains("no chat template"));
}

/// With --api-key, the /v1 endpoints want `Authorization: Bearer KEY`; /health does not.
#[test]
fn api_key_is_required_when_set() {
    let model = plain();
    let server = Server::start(&["--model", &model, "--api-key", "s3cret", "--parallel", "1"]);
    server.get("/v1/models").error(401);
    let wrong = [("Authorization", "Bearer nope")];
    server.send("GET", "/v1/models", "", &wrong).error(401);
    let right = [("Authorization", "Bearer s3cret")];
    assert_eq!(server.send("GET", "/v1/models", "", &right).status, 200);
    assert_eq!(server.get("/health").status, 200);
}

/// Past --queue waiting requests, new ones get 503 with Retry-After.
#[test]
fn queue_is_bounded() {
    let model = plain();
    let server = Server::start(&["--model", &model, "--parallel", "1", "--queue", "1"]);
    let long = json!({"prompt": "Once", "max_tokens": 40, "temperature": 0, "ignore_eos": true});
    let statuses: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|_| s.spawn(|| server.post("/v1/completions", &long)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<&Response> = statuses.iter().filter(|r| r.status == 503).collect();
    assert!(
        !busy.is_empty() && busy.len() < 5,
        "{:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        busy[0]
            .headers
            .iter()
            .any(|h| h.starts_with("retry-after:"))
    );
    busy[0].error(503);
}

/// A client that drops its stream halfway cancels the generation and frees its KV slot: the
/// server stops after a few of the 1000 tokens asked for, and the next request runs at once.
#[test]
fn dropped_stream_cancels_and_frees_its_slot() {
    let model = smollm2();
    let server = Server::start(&["--model", &model, "--parallel", "1", "--ctx", "1100"]);
    let mut s = server.connect();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0,
                      "stream": true, "ignore_eos": true})
    .to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while seen.matches("data:").count() < 3 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    let next = server.post(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(next.status, 200, "{}", next.body);
    // The loop marks the slot free just after the reply goes out.
    let t0 = Instant::now();
    let health = loop {
        let h = server.get("/health").json();
        if h["slots_processing"] == 0 || t0.elapsed() > Duration::from_secs(5) {
            break h;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(health["slots_processing"], 0, "{health}");
    // The dropped request's tokens until the server saw the client go, and the next one's 4.
    let generated = health["tokens_generated"].as_u64().unwrap();
    println!("tokens generated in all: {generated}");
    assert!(generated < 100, "{health}");
}

/// Resident memory stays flat over many requests (no per-request leak of buffers, channels
/// or KV state), on a Llama and a GPT-2 (whose texture-layout LayerNorm once made lavapipe
/// compile a shader variant, and keep 3.6 MB, at every dispatch).
#[test]
fn memory_stays_flat_over_many_requests() {
    for name in ["llama-gqa", "gpt2-tiny"] {
        let model = fixture(name).to_string_lossy().into_owned();
        let server = Server::start(&["--model", &model, "--parallel", "4"]);
        let run = |n: usize| {
            for i in 0..n {
                let body = json!({"prompt": format!("question {i}"), "max_tokens": 6, "stream": i % 2 == 0});
                assert_eq!(server.post("/v1/completions", &body).status, 200);
            }
        };
        run(40);
        let before = server.rss_kb();
        run(200);
        let after = server.rss_kb();
        println!("{name}: resident memory {before} kB after 40 requests, {after} kB after 240");
        // Allocator noise is a few MB; a leak of even 20 kB per request would pass 4 MB here.
        assert!(after < before + 4096, "{name}: {before} kB -> {after} kB");
    }
}

/// Ctrl-C lets the request in flight finish (all its tokens, its finish reason, `[DONE]`),
/// then the server exits cleanly.
#[test]
fn ctrl_c_finishes_in_flight_requests_and_exits() {
    let model = smollm2();
    let mut server = Server::start(&["--model", &model, "--parallel", "2", "--ctx", "256"]);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0,
                      "stream": true, "ignore_eos": true, "stream_options": {"include_usage": true}})
    .to_string();
    let mut s = server.connect();
    let req = format!(
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&raw).contains("data:") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before its first chunk");
        raw.extend_from_slice(&buf[..n]);
    }
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    let reply = Response {
        status: 200,
        headers: vec!["content-type: text/event-stream".into()],
        body: body.to_string(),
    };
    let (text, finish, done) = join_stream(&reply, false);
    assert!(done && finish == "length" && !text.is_empty(), "{body}");
    let events = reply.events();
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 120, "{usage}");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still running after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// Embeddings equal `wgpt embed`'s, as floats and as base64.
#[test]
fn embeddings_equal_wgpt_embed() {
    let dir = minilm_dir();
    let dir = dir.to_string_lossy();
    let server = Server::start(&[
        "--model",
        &plain(),
        "--embedding-model",
        &dir,
        "--parallel",
        "1",
    ]);
    let texts = ["A cat sits on the mat.", "Rust has no garbage collector."];
    let out = Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .args(["embed", "--model", &dir, texts[0], texts[1]])
        .output()
        .unwrap();
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = server
        .post("/v1/embeddings", &json!({"input": texts}))
        .json();
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    for i in 0..2 {
        let got: Vec<f64> = serde_json::from_value(r["data"][i]["embedding"].clone()).unwrap();
        let exp: Vec<f64> = serde_json::from_value(want["embeddings"][i].clone()).unwrap();
        // One text or two per pass: the same sums in the texture layout, a few ulps apart in
        // the buffer layout's gemv and tiled matmul.
        let d = got
            .iter()
            .zip(&exp)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(got.len() == exp.len() && d < 1e-6, "text {i}: {d}");
    }
    let r = server
        .post(
            "/v1/embeddings",
            &json!({"input": texts[1], "encoding_format": "base64"}),
        )
        .json();
    let b64 = r["data"][0]["embedding"].as_str().unwrap();
    assert!(b64.len() > 100 && !b64.contains('['));
    let models = server.get("/v1/models").json();
    assert_eq!(models["data"].as_array().unwrap().len(), 2, "{models}");
}

/// The official `openai` Python package as the client (tests/serve_openai.py), on SmolLM2.
#[test]
fn openai_python_client() {
    let gguf = smollm2_gguf();
    let gguf = gguf.to_string_lossy();
    let minilm = minilm_dir();
    let server = Server::start(&[
        "--model",
        &gguf,
        "--embedding-model",
        &minilm.to_string_lossy(),
        "--alias",
        "smollm2",
    ]);
    let pydeps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pydeps");
    let out = Command::new("python3")
        .arg(fixture("../serve_openai.py"))
        .args(["--url", &format!("http://127.0.0.1:{}/v1", server.port)])
        .args([
            "--wgpt",
            env!("CARGO_BIN_EXE_wgpt"),
            "--model",
            &gguf,
            "--minilm",
            &minilm.to_string_lossy(),
        ])
        .env("PYTHONPATH", pydeps)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "tests/serve_openai.py failed (it needs the openai package: pip install openai, as .ci/run does):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
