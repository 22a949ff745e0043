//! The HTTP routes of `wgpt serve` and OpenAI's response shapes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::api::{self, ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, Settings};
use super::engine::{Event, Finish, Job};
use super::{AppState, Decoder};

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/models", get(models))
        .route("/models/{id}", get(model))
        .route("/chat/completions", post(chat))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .nest("/v1", v1)
        .fallback(|| async {
            ApiError::status(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            let msg = "wrong method for this endpoint";
            ApiError::status(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", msg)
        })
        // A long conversation's JSON can pass axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(state)
}

/// Liveness, and what the decode loop is doing (as llama-server's /health reports it).
async fn health(State(s): Shared) -> axum::Json<Value> {
    let mut out = json!({"status": "ok"});
    if let Some(d) = &s.decoder {
        let busy = d.stats.processing.load(Ordering::Relaxed);
        out["slots_idle"] = json!(d.slots.saturating_sub(busy));
        out["slots_processing"] = json!(busy);
        out["requests_waiting"] = json!(d.jobs.max_capacity() - d.jobs.capacity());
        out["tokens_generated"] = json!(d.stats.generated.load(Ordering::Relaxed));
    }
    axum::Json(out)
}

async fn authorize(State(s): Shared, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = (req.headers().get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let msg = "missing or wrong API key: send Authorization: Bearer KEY";
            return ApiError::status(StatusCode::UNAUTHORIZED, "invalid_api_key", msg)
                .into_response();
        }
    }
    next.run(req).await
}

fn model_object(s: &AppState, id: &str) -> Value {
    json!({"id": id, "object": "model", "created": s.created, "owned_by": "wgpt"})
}

async fn models(State(s): Shared) -> axum::Json<Value> {
    let ids =
        (s.decoder.iter().map(|d| d.id.as_str())).chain(s.encoder.iter().map(|e| e.0.as_str()));
    let data: Vec<Value> = ids.map(|id| model_object(&s, id)).collect();
    axum::Json(json!({"object": "list", "data": data}))
}

async fn model(State(s): Shared, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    let known = (s.decoder.iter().map(|d| &d.id)).chain(s.encoder.iter().map(|e| &e.0));
    match known.into_iter().find(|k| **k == id) {
        Some(id) => axum::Json(model_object(&s, id)).into_response(),
        None => unknown_model(&id).into_response(),
    }
}

fn unknown_model(id: &str) -> ApiError {
    let msg = format!("the model {id:?} does not exist here (GET /v1/models lists what is served)");
    ApiError::status(StatusCode::NOT_FOUND, "model_not_found", msg)
}

/// The decoder, if `requested` (when given) names it.
fn decoder<'a>(s: &'a AppState, requested: &Option<String>) -> Result<&'a Decoder, ApiError> {
    let Some(d) = &s.decoder else {
        return Err(ApiError::bad_request(
            "this server has only an embedding model: use /v1/embeddings, or start it with a decoder --model",
        ));
    };
    match requested {
        Some(m) if *m != d.id => Err(unknown_model(m)),
        _ => Ok(d),
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request ready for the decode loop: its prompt checked against the context.
struct Prepared {
    prompt: Vec<u32>,
    settings: Settings,
    top_n: usize,
    eos: Vec<u32>,
}

/// Checks the prompt against the context, picks max_tokens, queues the job.
fn submit(d: &Decoder, p: Prepared) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
    let n = p.prompt.len();
    if n == 0 {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    let max_tokens = p.settings.max_tokens()?;
    let (sampling, stop) = (p.settings.sampling()?, p.settings.stops()?);
    let wanted = max_tokens.unwrap_or(1);
    if n + wanted > d.n_ctx {
        let msg = format!(
            "this model's context is {} tokens; the prompt has {n} and {wanted} more were asked for: shorten the prompt or lower max_tokens",
            d.n_ctx
        );
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad_request(msg)
        });
    }
    let (events, rx) = mpsc::unbounded_channel();
    let eos = if p.settings.ignore_eos {
        Vec::new()
    } else {
        p.eos
    };
    let seed = (p.settings.seed).map_or_else(
        || unix_now() ^ NEXT_ID.load(Ordering::Relaxed) << 32,
        |s| s as u64,
    );
    let job = Job {
        max_tokens: max_tokens.unwrap_or(d.n_ctx - n),
        sampling,
        stop,
        seed,
        eos,
        top_n: p.top_n,
        prompt: p.prompt,
        events,
    };
    d.jobs.try_send(job).map_err(|e| {
        let msg = match e {
            mpsc::error::TrySendError::Full(_) => {
                "the server is busy (its request queue is full): retry shortly"
            }
            mpsc::error::TrySendError::Closed(_) => "the server is shutting down",
        };
        ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "server_busy", msg)
    })?;
    Ok(rx)
}

/// A generated token: its id, log-probability and the top candidates with probabilities.
type Scored = (u32, f32, Vec<(u32, f32)>);

/// A whole reply, for a request that does not stream.
#[derive(Default)]
struct Reply {
    text: String,
    tokens: Vec<Scored>,
    finish: Option<Finish>,
    prompt_tokens: usize,
    completion_tokens: usize,
}

async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Reply, ApiError> {
    let mut r = Reply::default();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token {
                id,
                piece,
                logprob,
                top,
            } => {
                r.text.push_str(&piece);
                r.tokens.extend(id.map(|id| (id, logprob, top)));
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                r.finish = Some(finish);
                r.prompt_tokens = prompt_tokens;
                r.completion_tokens = completion_tokens;
            }
            Event::Failed(e) => return Err(gpu_failed(e)),
        }
    }
    match r.finish {
        Some(_) => Ok(r),
        None => Err(gpu_failed("the server is shutting down".into())),
    }
}

fn gpu_failed(e: String) -> ApiError {
    ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "generation_failed", e)
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A token's text for logprobs (a partial character shows as U+FFFD, as OpenAI's do).
fn token_text(d: &Decoder, id: u32) -> String {
    d.tokenizer.decode(&[id]).unwrap_or_default()
}

/// One token of chat logprobs: `{token, logprob, bytes, top_logprobs}`.
fn chat_logprob(d: &Decoder, id: u32, logprob: f32, top: &[(u32, f32)]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(d, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let mut e = entry(id, logprob);
    let tops: Vec<Value> = top.iter().map(|&(t, p)| entry(t, p.ln())).collect();
    e["top_logprobs"] = Value::Array(tops);
    e
}

async fn chat(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req: ChatRequest = api::parse(&body)?;
    let d = decoder(&s, &req.settings.model)?;
    let Some(template) = &d.template else {
        return Err(ApiError::bad_request(format!(
            "{} has no chat template: use /v1/completions",
            d.id
        )));
    };
    let messages = match &req.messages {
        None => return Err(ApiError::param("messages", "messages is required")),
        Some(m) if m.is_empty() => {
            return Err(ApiError::param("messages", "messages must not be empty"));
        }
        Some(m) => m,
    };
    let turns = (messages.iter().enumerate())
        .map(|(i, m)| Ok(wgpt::Message::new(&m.role, &m.text(i)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let text = template
        .render(&turns, true)
        .map_err(|e| ApiError::param("messages", format!("the chat template refused them: {e}")))?;
    let prompt =
        (d.tokenizer.encode_plain(&text)).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let top_n = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > 20 => {
            return Err(ApiError::param(
                "top_logprobs",
                "top_logprobs is at most 20",
            ));
        }
        (false, Some(n)) if n > 0 => {
            return Err(ApiError::param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        (_, n) => n.unwrap_or(0) as usize,
    };
    let (stream, include_usage) = (
        req.settings.stream,
        req.settings
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    );
    let rx = submit(
        d,
        Prepared {
            prompt,
            settings: req.settings,
            top_n,
            eos: d.chat_eos.clone(),
        },
    )?;
    let head = reply_head(Kind::Chat, &d.id);
    if stream {
        let role = json!({"role": "assistant", "content": ""});
        let mut first = chunk(Kind::Chat, &head, None, Value::Null, None);
        first["choices"][0]["delta"] = role;
        let st = Streamed {
            kind: Kind::Chat,
            first: Some(first),
            head,
            logprobs: req.logprobs,
            include_usage,
            offset: 0,
        };
        return Ok(stream_reply(s.clone(), rx, st));
    }
    let r = collect(rx).await?;
    let logprobs = req.logprobs.then(|| {
        let content: Vec<Value> = r
            .tokens
            .iter()
            .map(|(id, lp, top)| chat_logprob(d, *id, *lp, top))
            .collect();
        json!({"content": content})
    });
    let mut out = head;
    out["choices"] = json!([{
        "index": 0,
        "message": {"role": "assistant", "content": r.text},
        "logprobs": logprobs,
        "finish_reason": r.finish.map(Finish::as_str),
    }]);
    out["usage"] = usage(r.prompt_tokens, r.completion_tokens);
    Ok(axum::Json(out).into_response())
}

/// The two shapes of a streamed reply's chunks.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `chat.completion.chunk`: `delta.content`, logprobs `{content: [...]}`.
    Chat,
    /// `text_completion`: `text`, legacy logprobs.
    Completion,
}

/// The fields every reply and chunk of one request share: a fresh id, the object, the time,
/// the model.
fn reply_head(kind: Kind, model: &str) -> Value {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (id, object) = match kind {
        Kind::Chat => (format!("chatcmpl-{n}"), "chat.completion"),
        Kind::Completion => (format!("cmpl-{n}"), "text_completion"),
    };
    json!({"id": id, "object": object, "created": unix_now(), "model": model, "system_fingerprint": null})
}

/// One chunk of a streamed reply: `piece` of text, its logprobs, the finish reason.
fn chunk(kind: Kind, head: &Value, piece: Option<&str>, lp: Value, finish: Option<&str>) -> Value {
    let mut c = head.clone();
    c["choices"] = match kind {
        Kind::Chat => {
            c["object"] = json!("chat.completion.chunk");
            let delta = piece.map_or(json!({}), |p| json!({"content": p}));
            json!([{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}])
        }
        Kind::Completion => {
            let text = piece.unwrap_or("");
            json!([{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}])
        }
    };
    c
}

/// Server-sent events: `first` (chat's role, or completions' echo), a chunk per token (or
/// text piece), then the finish reason, usage when asked, and `[DONE]`. A client that goes
/// away drops the stream, which cancels the reply.
struct Streamed {
    kind: Kind,
    head: Value,
    first: Option<Value>,
    logprobs: bool,
    include_usage: bool,
    /// Bytes of text before the reply (completions' echo): where text_offset starts.
    offset: usize,
}

fn stream_reply(
    s: Arc<AppState>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    st: Streamed,
) -> Response {
    sse(move |tx| async move {
        let d = s.decoder.as_ref().expect("replies run on a decoder");
        let send = |v: Value| tx.send(Ok(Sse::default().data(v.to_string())));
        if let Some(first) = st.first.clone() {
            if send(first).await.is_err() {
                return;
            }
        }
        let mut offset = st.offset;
        while let Some(event) = rx.recv().await {
            let out = match event {
                Event::Token {
                    id,
                    piece,
                    logprob,
                    top,
                } => {
                    let lp = match (st.logprobs, id, st.kind) {
                        (true, Some(id), Kind::Chat) => {
                            json!({"content": [chat_logprob(d, id, logprob, &top)]})
                        }
                        (true, Some(id), Kind::Completion) => {
                            completion_logprobs(d, &[(id, logprob, top)], offset)
                        }
                        _ => Value::Null,
                    };
                    offset += piece.len();
                    if piece.is_empty() && lp.is_null() {
                        continue;
                    }
                    chunk(st.kind, &st.head, Some(&piece), lp, None)
                }
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let last = chunk(st.kind, &st.head, None, Value::Null, Some(finish.as_str()));
                    if send(last).await.is_err() || !st.include_usage {
                        break;
                    }
                    let mut u = chunk(st.kind, &st.head, None, Value::Null, None);
                    u["choices"] = json!([]);
                    u["usage"] = usage(prompt_tokens, completion_tokens);
                    u
                }
                Event::Failed(e) => json!({"error": {"message": e, "type": "server_error"}}),
            };
            if send(out).await.is_err() {
                return; // the client left: dropping `rx` cancels the reply
            }
        }
        let _ = tx.send(Ok(Sse::default().data("[DONE]"))).await;
    })
}

/// An SSE response fed by `produce`, which runs as its own task and writes events to `tx`.
fn sse<F, Fut>(produce: F) -> Response
where
    F: FnOnce(mpsc::Sender<Result<Sse, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(produce(tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    axum::response::Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Legacy completions' logprobs: `{tokens, token_logprobs, top_logprobs, text_offset}`.
fn completion_logprobs(d: &Decoder, tokens: &[Scored], offset0: usize) -> Value {
    let mut offset = offset0;
    let (mut texts, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (id, lp, top) in tokens {
        let t = token_text(d, *id);
        offsets.push(offset);
        offset += t.len();
        texts.push(t);
        lps.push(*lp);
        let m: serde_json::Map<String, Value> = top
            .iter()
            .map(|&(id, p)| (token_text(d, id), json!(p.ln())))
            .collect();
        tops.push(Value::Object(m));
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

async fn completions(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = api::parse(&body)?;
    let d = decoder(&s, &req.settings.model)?;
    if req.suffix.is_some() {
        return Err(ApiError::param("suffix", "suffix is not supported"));
    }
    let (prompt_text, prompt) = match req.prompt {
        None => return Err(ApiError::param("prompt", "prompt is required")),
        Some(api::Prompt::Text(t)) => (t.clone(), d.tokenizer.encode(&t)),
        Some(api::Prompt::Texts(v)) if v.len() == 1 => (v[0].clone(), d.tokenizer.encode(&v[0])),
        Some(api::Prompt::Texts(_)) => {
            return Err(ApiError::param("prompt", "one prompt per request"));
        }
        Some(api::Prompt::Ids(ids)) => {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= d.vocab_size) {
                return Err(ApiError::param(
                    "prompt",
                    format!(
                        "token id {bad} is outside the vocabulary ({})",
                        d.vocab_size
                    ),
                ));
            }
            (d.tokenizer.decode(&ids).unwrap_or_default(), Ok(ids))
        }
    };
    let prompt = prompt.map_err(|e| ApiError::param("prompt", e.to_string()))?;
    let top_n = match req.logprobs {
        Some(n) if n > 20 => return Err(ApiError::param("logprobs", "logprobs is at most 20")),
        n => n.unwrap_or(0) as usize,
    };
    let stream = req.settings.stream;
    let include_usage = req
        .settings
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let rx = submit(
        d,
        Prepared {
            prompt,
            settings: req.settings,
            top_n,
            eos: d.eos.clone(),
        },
    )?;
    let head = reply_head(Kind::Completion, &d.id);
    let echo = req.echo.then_some(prompt_text);
    if stream {
        let st = Streamed {
            kind: Kind::Completion,
            first: (echo.as_deref())
                .map(|e| chunk(Kind::Completion, &head, Some(e), Value::Null, None)),
            head,
            logprobs: req.logprobs.is_some(),
            include_usage,
            offset: echo.as_ref().map_or(0, String::len),
        };
        return Ok(stream_reply(s.clone(), rx, st));
    }
    let r = collect(rx).await?;
    let text = format!("{}{}", echo.as_deref().unwrap_or(""), r.text);
    let offset0 = echo.as_ref().map_or(0, String::len);
    let logprobs = req
        .logprobs
        .map(|_| completion_logprobs(d, &r.tokens, offset0));
    let mut out = head;
    out["choices"] = json!([{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": r.finish.map(Finish::as_str)}]);
    out["usage"] = usage(r.prompt_tokens, r.completion_tokens);
    Ok(axum::Json(out).into_response())
}

async fn embeddings(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = api::parse(&body)?;
    let Some((id, model)) = &s.encoder else {
        return Err(ApiError::bad_request(
            "this server has no embedding model: start it with --embedding-model DIR (e.g. all-MiniLM-L6-v2)",
        ));
    };
    if let Some(m) = req.model.as_ref().filter(|m| *m != id) {
        return Err(unknown_model(m));
    }
    let texts = match req.input {
        None => return Err(ApiError::param("input", "input is required")),
        Some(i) => i.into_vec(),
    };
    if texts.is_empty() || texts.iter().any(String::is_empty) {
        return Err(ApiError::param("input", "input must be non-empty strings"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::param(
                "encoding_format",
                format!("encoding_format must be float or base64, not {f:?}"),
            ));
        }
    };
    if req.dimensions.is_some_and(|n| n as usize != model.dim()) {
        return Err(ApiError::param(
            "dimensions",
            format!("this model's embeddings have {} dimensions", model.dim()),
        ));
    }
    let model = model.clone();
    let (e, tokens) = tokio::task::spawn_blocking(move || {
        let tokens: usize = texts
            .iter()
            .map(|t| model.tokenize(t).map_or(0, |t| t.ids.len()))
            .sum();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        model.embed(&refs).map(|e| (e, tokens))
    })
    .await
    .map_err(|e| gpu_failed(e.to_string()))?
    .map_err(|e| gpu_failed(e.to_string()))?;
    let data: Vec<Value> = e
        .rows()
        .enumerate()
        .map(|(i, row)| {
            let embedding = match base64 {
                true => {
                    use base64::Engine as _;
                    json!(base64::engine::general_purpose::STANDARD.encode(bytemuck_bytes(row)))
                }
                false => json!(row),
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data, "model": id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response())
}

/// f32s as little-endian bytes (OpenAI's base64 embeddings).
fn bytemuck_bytes(row: &[f32]) -> Vec<u8> {
    row.iter().flat_map(|v| v.to_le_bytes()).collect()
}
