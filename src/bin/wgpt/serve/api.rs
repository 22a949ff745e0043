//! OpenAI's request bodies, as `wgpt serve` reads them, and its error object. Fields wgpt does
//! not use are ignored, as OpenAI-compatible servers do; fields it cannot honour (n > 1, a
//! non-zero presence penalty) are refused by name rather than silently dropped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::bad_request(message)
        }
    }

    pub fn status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: Some(code),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => "server_busy",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let retry = HeaderValue::from_static("1");
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}

/// Parses a JSON body into `T`, naming what is wrong (serde's message says which field and
/// where).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request has no body: send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// A string or a list of strings (`stop`, `input`, `prompt`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The settings /v1/chat/completions and /v1/completions share.
#[derive(Deserialize, Debug, Default)]
pub struct Settings {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extensions llama-server and vLLM accept too.
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// Keep going past the end-of-turn token (as llama-server and vLLM allow): replies of a
    /// fixed length, for benchmarks.
    #[serde(default)]
    pub ignore_eos: bool,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

impl Settings {
    /// The sampling settings; OpenAI's default temperature is 1.
    pub fn sampling(&self) -> Result<wgpt::Sampling, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::param("n", "only n = 1 is supported"));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::param(
                    name,
                    format!("{name} is not supported; use repeat_penalty (e.g. 1.1)"),
                ));
            }
        }
        let s = wgpt::Sampling {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            ..Default::default()
        };
        let named = |p: &'static str, e: wgpt::Error| ApiError::param(p, e.to_string());
        s.validate().map_err(|e| {
            let msg = e.to_string();
            match () {
                _ if msg.contains("temperature") => named("temperature", e),
                _ if msg.contains("top_p") => named("top_p", e),
                _ if msg.contains("min_p") => named("min_p", e),
                _ => named("repeat_penalty", e),
            }
        })?;
        if s.temperature > 2.0 {
            return Err(ApiError::param(
                "temperature",
                format!("temperature must be in [0, 2], not {}", s.temperature),
            ));
        }
        Ok(s)
    }

    /// max_tokens (or max_completion_tokens), checked; `None` when not given.
    pub fn max_tokens(&self) -> Result<Option<usize>, ApiError> {
        let (name, v) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", v),
            (None, Some(v)) => ("max_tokens", v),
            (None, None) => return Ok(None),
        };
        if v < 1 {
            return Err(ApiError::param(
                if name == "max_tokens" {
                    "max_tokens"
                } else {
                    "max_completion_tokens"
                },
                format!("{name} must be at least 1, not {v}"),
            ));
        }
        Ok(Some(v as usize))
    }

    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stops.len() > 4 {
            return Err(ApiError::param("stop", "at most 4 stop sequences"));
        }
        Ok(stops)
    }
}

/// /v1/chat/completions.
#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    #[serde(flatten)]
    pub settings: Settings,
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
}

#[derive(Deserialize, Debug)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

/// A message's content: a string, or parts of which wgpt reads the text ones.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl ChatMessage {
    pub fn text(&self, i: usize) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(ApiError::param(
                        "messages",
                        format!("messages[{i}]: content parts of type {kind:?} are not supported (text only)"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.concat()),
        }
    }
}

/// /v1/completions.
#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    #[serde(flatten)]
    pub settings: Settings,
    pub prompt: Option<Prompt>,
    /// The number of top candidates per token (0-20).
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
}

/// A completion prompt: text, or token ids.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

/// /v1/embeddings.
#[derive(Deserialize, Debug)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Option<OneOrMany>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
}
