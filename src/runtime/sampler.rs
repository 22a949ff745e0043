//! Sampling settings: what `wgpt generate` and [`crate::generate_ids`] turn into a [`Pick`] per
//! step. The work happens on the GPU (`shaders/sample.wgsl`); the CPU twin is
//! [`crate::reference::sample_filtered`].

use crate::runtime::Pick;
use crate::{Error, Result};

/// How to choose tokens. The default is greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (the other settings are then ignored).
    pub temperature: f32,
    /// Keep the k most likely tokens (ties at the k-th included); 0 = off.
    pub top_k: u32,
    /// Keep the smallest set of most likely tokens holding this much probability; 1 = off.
    pub top_p: f32,
    /// Keep tokens at least this fraction as likely as the most likely one; 0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this; 1 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens (prompt included) the penalty looks at.
    pub repeat_window: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_window: 64,
        }
    }
}

impl Sampling {
    /// Checks the ranges, naming the option at fault.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::option(
                "Sampling::temperature",
                t,
                "a finite number >= 0 (0 = greedy)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::option(
                "Sampling::top_p",
                self.top_p,
                "in (0, 1] (1 = off)",
            ));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(Error::option(
                "Sampling::min_p",
                self.min_p,
                "in [0, 1) (0 = off)",
            ));
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(Error::option(
                "Sampling::repeat_penalty",
                r,
                "a finite number > 0 (1 = off)",
            ));
        }
        Ok(())
    }

    /// Whether these settings always take the most likely token (temperature 0 or top-k 1);
    /// a repetition penalty can still change which token that is.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// The step's choice given `u`, uniform in [0, 1).
    pub fn pick(&self, u: f32) -> Pick {
        if self.is_greedy() && self.repeat_penalty == 1.0 {
            Pick::Greedy
        } else {
            Pick::Sample(*self, u)
        }
    }
}

impl std::fmt::Display for Sampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_greedy() && self.repeat_penalty == 1.0 {
            return f.write_str("greedy");
        }
        write!(f, "T={}", self.temperature)?;
        if self.top_k > 0 {
            write!(f, " top-k={}", self.top_k)?;
        }
        if self.top_p < 1.0 {
            write!(f, " top-p={}", self.top_p)?;
        }
        if self.min_p > 0.0 {
            write!(f, " min-p={}", self.min_p)?;
        }
        if self.repeat_penalty != 1.0 {
            write!(
                f,
                " repeat-penalty={} over {}",
                self.repeat_penalty, self.repeat_window
            )?;
        }
        Ok(())
    }
}
