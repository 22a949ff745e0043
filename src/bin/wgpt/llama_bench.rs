//! `wgpt bench -o md|csv|json|jsonl`: llama-bench's tests (pp512: a prompt's prefill; tg128:
//! tokens decoded one at a time from a one-token start) and its output formats, so that wgpt's
//! figures sit next to llama-bench's. Each test's t/s is the mean ± sample standard deviation
//! over the repetitions, as llama-bench computes them.

use anyhow::{Result, bail};
use wgpt::Model;
use wgpt::bench::{Options, Report};

use super::BenchOutput;

/// One llama-bench test: its name, token counts and the seconds of each repetition.
pub struct Test {
    name: String,
    n_prompt: usize,
    n_gen: usize,
    samples_s: Vec<f64>,
}

impl Test {
    /// Tokens per second of each repetition.
    fn samples_ts(&self) -> Vec<f64> {
        let tokens = (self.n_prompt + self.n_gen) as f64;
        self.samples_s.iter().map(|s| tokens / s).collect()
    }
}

/// Mean and sample standard deviation (n - 1 in the denominator; 0 for one sample).
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Runs the pp tests (each prompt length of `pp` above 0) and the tg test (`n_gen` above 0).
pub fn measure(
    model: &Model,
    base: &Options,
    pp: &[usize],
    n_gen: usize,
) -> Result<(Report, Vec<Test>)> {
    let pp: Vec<usize> = pp.iter().copied().filter(|&p| p > 0).collect();
    if pp.is_empty() && n_gen == 0 {
        bail!("nothing to measure: give -p with a prompt length above 0, or -n above 0");
    }
    let mut tests = Vec::new();
    let mut last = None;
    if !pp.is_empty() {
        let opts = Options {
            prompt_lens: pp,
            gen_tokens: 1,
            ..base.clone()
        };
        let r = wgpt::bench::run(model, &opts)?;
        tests.extend(r.runs.iter().map(|run| Test {
            name: format!("pp{}", run.prompt_len),
            n_prompt: run.prompt_len,
            n_gen: 0,
            samples_s: run.prefill_s_samples.clone(),
        }));
        last = Some(r);
    }
    if n_gen > 0 {
        // llama-bench's tg decodes n tokens one at a time from a single start token: here the
        // one-token "prefill" is the first of those steps.
        let opts = Options {
            prompt_lens: vec![1],
            gen_tokens: n_gen,
            ..base.clone()
        };
        let r = wgpt::bench::run(model, &opts)?;
        let run = &r.runs[0];
        let samples = run.prefill_s_samples.iter().zip(&run.decode_s_samples);
        tests.push(Test {
            name: format!("tg{n_gen}"),
            n_prompt: 0,
            n_gen,
            samples_s: samples.map(|(p, d)| p + d).collect(),
        });
        last = Some(r);
    }
    Ok((last.expect("at least one test ran"), tests))
}

/// The tests in llama-bench's format `fmt`.
pub fn render(fmt: BenchOutput, r: &Report, weight_bytes: u64, tests: &[Test]) -> String {
    let m = &r.model;
    // llama-bench names a model by its file; a folder by its last component.
    let name = std::path::Path::new(&m.source).file_name();
    let name = name.map_or(m.source.clone(), |n| n.to_string_lossy().into_owned());
    let model = format!("{name} {}", m.dtype.to_uppercase());
    let backend = format!("wgpu {}", r.adapter.backend);
    let rows = tests.iter().map(|t| {
        let ts = t.samples_ts();
        let ns: Vec<u64> = t.samples_s.iter().map(|s| (s * 1e9) as u64).collect();
        let (avg_ts, sd_ts) = mean_sd(&ts);
        let (avg_ns, sd_ns) = mean_sd(&ns.iter().map(|&n| n as f64).collect::<Vec<_>>());
        serde_json::json!({
            "build_commit": format!("wgpt-{}", r.wgpt_version),
            "gpu_info": r.adapter.name,
            "backends": backend,
            "model_filename": m.source,
            "model_type": model,
            "model_size": weight_bytes,
            "model_n_params": m.params,
            "n_prompt": t.n_prompt,
            "n_gen": t.n_gen,
            "test": t.name,
            "avg_ns": avg_ns as u64,
            "stddev_ns": sd_ns as u64,
            "avg_ts": avg_ts,
            "stddev_ts": sd_ts,
            "samples_ns": ns,
            "samples_ts": ts,
        })
    });
    let rows: Vec<serde_json::Value> = rows.collect();
    match fmt {
        BenchOutput::Json => serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n",
        BenchOutput::Jsonl => rows.iter().map(|r| format!("{r}\n")).collect(),
        BenchOutput::Csv => csv(&rows),
        BenchOutput::Md => markdown(&model, weight_bytes, m.params, &backend, &rows),
    }
}

const CSV_FIELDS: &[&str] = &[
    "build_commit",
    "gpu_info",
    "backends",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_prompt",
    "n_gen",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
];

/// A header and one line per test, every field quoted as llama-bench writes them.
fn csv(rows: &[serde_json::Value]) -> String {
    let mut out = CSV_FIELDS.join(",") + "\n";
    for row in rows {
        let fields: Vec<String> = CSV_FIELDS
            .iter()
            .map(|f| match &row[*f] {
                serde_json::Value::String(s) => format!("\"{}\"", s.replace('"', "\"\"")),
                v => format!("\"{v}\""),
            })
            .collect();
        out += &(fields.join(",") + "\n");
    }
    out
}

/// llama-bench's markdown table: model, size, params, backend, test, t/s.
fn markdown(
    model: &str,
    bytes: u64,
    params: u64,
    backend: &str,
    rows: &[serde_json::Value],
) -> String {
    let size = format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64);
    let params = format!("{:.2} M", params as f64 / 1e6);
    let w = model.len().max(5);
    let mut out = format!(
        "| {:<w$} | {:>10} | {:>10} | {:<12} | {:>8} | {:>20} |\n",
        "model", "size", "params", "backend", "test", "t/s"
    );
    let dash = |n: usize| "-".repeat(n);
    out += &format!(
        "| {} | {}: | {}: | {} | {}: | {}: |\n",
        dash(w),
        dash(9),
        dash(9),
        dash(12),
        dash(7),
        dash(19)
    );
    for r in rows {
        let ts = format!(
            "{:.2} ± {:.2}",
            r["avg_ts"].as_f64().unwrap_or(0.0),
            r["stddev_ts"].as_f64().unwrap_or(0.0)
        );
        let test = r["test"].as_str().unwrap_or_default();
        out += &format!(
            "| {model:<w$} | {size:>10} | {params:>10} | {backend:<12} | {test:>8} | {ts:>20} |\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mean_sd;

    #[test]
    fn sample_standard_deviation() {
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        // sqrt(32 / 7): the sample (n - 1) form llama-bench reports.
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
    }
}
