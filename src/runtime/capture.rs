//! A debug path for seeing attention: when switched on ([`Session::set_attention_capture`]),
//! each step copies every layer's `qkv` rows (T, 3C) into one readback buffer between the
//! layers' compute passes, and the queries and keys come back to the host after the step. The
//! attention probabilities softmax(q·k / sqrt(HS)) of any recorded token, layer and head are then
//! computed on the CPU ([`Session::attention_weights`]): the same numbers `attention.wgsl` forms
//! inside its online softmax, which never materialises them. Switched off (the default), nothing
//! is allocated, copied or read: the forward pass is recorded exactly as without it.

use super::Session;
use crate::{Error, Result};

/// Recorded queries and keys, per layer, one row of C per position.
pub(super) struct Capture {
    /// Mappable, (L, t_max, 3C) f32: each layer's qkv of the last step.
    pub(super) buf: wgpu::Buffer,
    /// Bytes between layers in `buf`.
    pub(super) layer_stride: u64,
    /// Per layer: (positions, C) queries and keys, from position `from`.
    q: Vec<Vec<f32>>,
    k: Vec<Vec<f32>>,
    /// First recorded position: 0 when capture was on since the sequence began; positions
    /// before it are unknown (and with them, every query's full row).
    from: usize,
    /// Set if a step ran that was not recorded (a gap in the history).
    gap: bool,
    /// (first position, rows) of the submitted step to read back when its token is collected.
    pub(super) in_flight: Option<(usize, usize)>,
}

impl Session {
    /// Turns the attention debug path on or off. On: every following step also copies each
    /// layer's queries and keys back to the host (L x T x (NH + 2 NKV) HS floats per step), for
    /// [`Session::attention_weights`]. Turn it on before the prompt (or after [`Session::reset`])
    /// to see every token's attention. Off (the default) costs nothing.
    pub fn set_attention_capture(&mut self, on: bool) {
        if !on {
            self.capture = None;
            return;
        }
        if self.capture.is_some() {
            return;
        }
        let cfg = &self.model.config;
        let layer_stride = (self.t_max * cfg.qkv_width() * 4) as u64;
        let buf = self
            .model
            .gpu
            .readback("attention_capture", layer_stride * cfg.n_layer as u64);
        self.capture = Some(Capture {
            buf,
            layer_stride,
            q: vec![Vec::new(); cfg.n_layer],
            k: vec![Vec::new(); cfg.n_layer],
            from: self.pos,
            gap: false,
            in_flight: None,
        });
    }

    /// Whether attention capture is on.
    pub fn attention_capture(&self) -> bool {
        self.capture.is_some()
    }

    /// Positions whose attention can be shown: 0 ..= the returned value - 1 (0 when capture is
    /// off, started mid-sequence, or missed a step).
    pub fn attention_positions(&self) -> usize {
        match &self.capture {
            Some(c) if c.from == 0 && !c.gap => c.q[0].len() / self.model.config.q_width(),
            _ => 0,
        }
    }

    /// The attention probabilities of the token at position `query` in `layer`, `head`: a
    /// distribution over the positions 0 ..= `query` it attends to (causal), summing to 1.
    /// Needs capture on since the sequence began (see [`Session::set_attention_capture`]).
    pub fn attention_weights(&self, layer: usize, head: usize, query: usize) -> Result<Vec<f32>> {
        let cfg = &self.model.config;
        let Some(cap) = &self.capture else {
            return Err(Error::Input(
                "attention capture is off: call Session::set_attention_capture(true) first".into(),
            ));
        };
        if layer >= cfg.n_layer || head >= cfg.n_head {
            return Err(Error::Input(format!(
                "layer {layer}, head {head}: the model has {} layers of {} heads",
                cfg.n_layer, cfg.n_head
            )));
        }
        if query >= self.attention_positions() {
            return Err(Error::Input(format!(
                "position {query} was not recorded: {} positions were, from the start of the \
                 sequence only if capture was on before it",
                self.attention_positions()
            )));
        }
        let (qw, kw, hs) = (cfg.q_width(), cfg.kv_width(), cfg.head_size());
        let (q, k) = (&cap.q[layer], &cap.k[layer]);
        let scale = 1.0 / (hs as f32).sqrt();
        let qh = &q[query * qw + head * hs..query * qw + (head + 1) * hs];
        // Grouped-query attention: query head h reads key head h / (NH / NKV).
        let kh0 = head / (cfg.n_head / cfg.n_kv_head) * hs;
        let mut w: Vec<f32> = (0..=query)
            .map(|j| {
                let kh = &k[j * kw + kh0..j * kw + kh0 + hs];
                qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale
            })
            .collect();
        let max = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in &mut w {
            *x = (*x - max).exp();
            sum += *x;
        }
        w.iter_mut().for_each(|x| *x /= sum);
        Ok(w)
    }

    /// After a step of `rows` tokens from position `pos0` has run: reads back its queries and
    /// keys (blocking; the step is done or about to be) when capture is on.
    pub(super) fn capture_step(&mut self, pos0: usize, rows: usize) -> Result<()> {
        let Some(cap) = &mut self.capture else {
            return Ok(());
        };
        let cfg = &self.model.config;
        let (qw, kw, w) = (cfg.q_width(), cfg.kv_width(), cfg.qkv_width());
        if cap.from + cap.q[0].len() / qw != pos0 {
            cap.gap = true;
        }
        let gpu = &self.model.gpu;
        let bytes = gpu.read(&cap.buf, cap.layer_stride * cfg.n_layer as u64)?;
        let floats: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let stride = cap.layer_stride as usize / 4;
        for l in 0..cfg.n_layer {
            for r in 0..rows {
                let row = &floats[l * stride + r * w..l * stride + (r + 1) * w];
                cap.q[l].extend_from_slice(&row[..qw]);
                cap.k[l].extend_from_slice(&row[qw..qw + kw]);
            }
        }
        Ok(())
    }

    /// Forgets the recorded history (with the sequence, on reset).
    pub(super) fn capture_reset(&mut self) {
        if let Some(cap) = &mut self.capture {
            cap.q
                .iter_mut()
                .chain(cap.k.iter_mut())
                .for_each(Vec::clear);
            cap.from = 0;
            cap.gap = false;
            cap.in_flight = None;
        }
    }
}
