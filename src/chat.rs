//! Chat templates: the Jinja template a model folder ships (tokenizer_config.json's
//! `chat_template`, or the `chat_template.jinja` file transformers 5 writes), rendered the way
//! transformers' `apply_chat_template` renders it: the same Jinja settings (`trim_blocks`,
//! `lstrip_blocks`, loop controls), Python's string methods, its `tojson` and
//! `raise_exception`, and the variables it passes (`messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`).
//!
//! ```no_run
//! # fn main() -> wgpt::Result<()> {
//! let dir = std::path::Path::new("SmolLM2-135M-Instruct");
//! let template = wgpt::ChatTemplate::from_dir(dir)?.expect("an instruct model has a template");
//! let text = template.render(&[wgpt::Message::user("Why is the sky blue?")], true)?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The file holding the template, the special tokens and `add_bos_token`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Where transformers 5 writes a folder's chat template.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may know others).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl Message {
    /// A turn of `role`.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system turn.
    pub fn system(content: &str) -> Message {
        Message::new("system", content)
    }

    /// A user turn.
    pub fn user(content: &str) -> Message {
        Message::new("user", content)
    }

    /// An assistant turn.
    pub fn assistant(content: &str) -> Message {
        Message::new("assistant", content)
    }
}

/// A model's chat template with the special tokens it refers to.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    /// `bos_token` as tokenizer_config.json names it ("" when it has none).
    pub bos_token: String,
    /// `eos_token` as tokenizer_config.json names it ("" when it has none).
    pub eos_token: String,
    /// Where the template came from, for errors.
    path: PathBuf,
}

/// What of tokenizer_config.json wgpt reads.
#[derive(Deserialize, Default)]
pub(crate) struct TokenizerConfig {
    chat_template: Option<serde_json::Value>,
    bos_token: Option<serde_json::Value>,
    eos_token: Option<serde_json::Value>,
    /// Whether transformers prepends the BOS token when encoding a prompt.
    pub(crate) add_bos_token: Option<bool>,
}

impl TokenizerConfig {
    /// tokenizer_config.json in `dir`, or an empty one when the folder has none.
    pub(crate) fn from_dir(dir: &Path) -> Result<TokenizerConfig> {
        let path = dir.join(TOKENIZER_CONFIG_FILE);
        if !path.is_file() {
            return Ok(TokenizerConfig::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        crate::error::parse_json(&text, &path)
    }

    /// A special token's text: a string, or an AddedToken object's `content`.
    pub(crate) fn token(v: &Option<serde_json::Value>) -> Option<String> {
        match v.as_ref()? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    }

    /// `bos_token`'s text.
    pub(crate) fn bos_token(&self) -> Option<String> {
        Self::token(&self.bos_token)
    }
}

impl ChatTemplate {
    /// The template of the model folder `dir`: `chat_template.jinja` if present, else
    /// tokenizer_config.json's `chat_template` (a string, or a list of named templates, of
    /// which `default` is taken); `None` for a model without one (a base model).
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let cfg = TokenizerConfig::from_dir(dir)?;
        let jinja = dir.join(CHAT_TEMPLATE_FILE);
        let (source, path) = if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
            (text, jinja)
        } else {
            let path = dir.join(TOKENIZER_CONFIG_FILE);
            match named_default(cfg.chat_template.as_ref(), &path)? {
                Some(text) => (text, path),
                None => return Ok(None),
            }
        };
        let template = ChatTemplate {
            source,
            bos_token: cfg.bos_token().unwrap_or_default(),
            eos_token: TokenizerConfig::token(&cfg.eos_token).unwrap_or_default(),
            path,
        };
        // A template that does not parse is refused at load, not at the first message.
        template.environment()?;
        Ok(Some(template))
    }

    /// A GGUF file's template (`tokenizer.chat_template`), with the BOS and EOS tokens its
    /// metadata names; `None` when it has none.
    pub fn from_gguf(g: &crate::gguf::Gguf) -> Result<Option<ChatTemplate>> {
        use crate::gguf::Value;
        let Some(source) = g.get("tokenizer.chat_template").and_then(Value::as_str) else {
            return Ok(None);
        };
        let tokens = match g.get("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => t.as_slice(),
            _ => &[],
        };
        let token = |key: &str| {
            let id = g.get(key).and_then(Value::as_u64)?;
            tokens.get(id as usize)?.as_str().map(str::to_string)
        };
        let template = ChatTemplate {
            source: source.to_string(),
            bos_token: token("tokenizer.ggml.bos_token_id").unwrap_or_default(),
            eos_token: token("tokenizer.ggml.eos_token_id").unwrap_or_default(),
            path: g.path().to_path_buf(),
        };
        template.environment()?;
        Ok(Some(template))
    }

    /// A template from its source text and special tokens.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let template = ChatTemplate {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            path: PathBuf::from("<chat template>"),
        };
        template.environment()?;
        Ok(template)
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The conversation as the model reads it, ending with the assistant's header when
    /// `add_generation_prompt` (transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`). Encode it without adding special tokens: the template
    /// writes them.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let template = env.get_template("chat").map_err(|e| self.error(e))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        template.render(ctx).map_err(|e| self.error(e))
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        // transformers' ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, _> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template("chat", &self.source)
            .map_err(|e| self.error(e))?;
        Ok(env)
    }

    fn error(&self, e: minijinja::Error) -> Error {
        Error::ChatTemplate {
            path: self.path.clone(),
            msg: format!("{e:#}"),
        }
    }
}

/// The ids that end a reply: the model's end-of-sequence ids and the template's `eos_token`
/// (Qwen2.5's `<|im_end|>`, Llama 3's `<|eot_id|>`).
pub fn end_of_turn_ids(template: &ChatTemplate, tok: &crate::Tokenizer, eos: &[u32]) -> Vec<u32> {
    let mut ids = eos.to_vec();
    let extra = tok
        .token_id(&template.eos_token)
        .filter(|id| !ids.contains(id));
    ids.extend(extra);
    ids
}

/// A `chat_template` value: the string, or the `default` of a list of `{name, template}`.
fn named_default(v: Option<&serde_json::Value>, path: &Path) -> Result<Option<String>> {
    let bad = |msg: &str| Error::ChatTemplate {
        path: path.to_path_buf(),
        msg: msg.into(),
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(n))
            };
            let t = named("default")
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| bad("chat_template is a list without a \"default\" template"))?;
            Ok(Some(t.to_string()))
        }
        Some(_) => Err(bad(
            "chat_template is neither a string nor a list of named templates",
        )),
    }
}

/// Jinja's `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent)`: keys in their order, `", "` and `": "` between items on one line, no
/// HTML escaping.
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, minijinja::Error> {
    let mut out = String::new();
    dump(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn dump(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => out.push_str(&serde_json::Value::String(v.to_string()).to_string()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { sep } else { "" });
                newline(out, depth + 1);
                dump(item, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                out.push_str(if i > 0 { sep } else { "" });
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.to_string()).to_string());
                out.push_str(": ");
                dump(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => out.push_str(&serde_json::Value::String(v.to_string()).to_string()),
    }
    Ok(())
}

/// transformers' `strftime_now(format)` (Llama 3.1+ templates date their system turn): the
/// current UTC date in the strftime directives those templates use.
fn strftime_now(format: String) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_python_style_templates() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m['role'] | upper }}: {{ m.content.strip() }}\n{% endfor %}\
             {% if add_generation_prompt %}{{ bos_token }}>{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let out = t.render(&[Message::user("  hi \n")], true).unwrap();
        assert_eq!(out, "USER: hi\n<s>>");
        let e = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = e.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn tojson_speaks_pythons_json() {
        let t = ChatTemplate::new("{{ {'a': [1, 'é<'], 'b': none} | tojson }}", "", "").unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": [1, "é<"], "b": null}"#
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
