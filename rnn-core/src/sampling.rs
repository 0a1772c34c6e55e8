//! Drawing the next token from a model's output logits, for generating text or any other
//! sequence of classes: temperature, top-k and nucleus (top-p) sampling, in that order, as
//! Hugging Face's `generate` applies them.

use kernels::Float;
use rand::Rng;

use crate::error::{Result, RnnError};

/// How the next token is drawn from logits: `softmax(logits / temperature)`, cut to the
/// `top_k` likeliest tokens, then to the smallest set of the likeliest whose probability
/// reaches `top_p`, renormalised.
///
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// use rnn_core::sampling::Sampler;
/// let logits = [2.0f32, 1.0, 0.5, -1.0];
/// let mut rng = StdRng::seed_from_u64(0);
/// // Only the two likeliest tokens can come out.
/// let mut top2 = Sampler::new(1.0)?.with_top_k(2)?;
/// assert!((0..100).all(|_| top2.sample(&logits, &mut rng).unwrap() < 2));
/// // Greedy decoding: always the likeliest.
/// assert_eq!(Sampler::greedy().sample(&logits, &mut rng)?, 0);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Sampler {
    temperature: f64,
    top_k: usize,
    top_p: f64,
    /// The candidates' ids and probabilities, likeliest first (kept between draws).
    candidates: Vec<(usize, f64)>,
}

impl Sampler {
    /// Sampling at `temperature` (1: the model's own distribution; lower: safer; higher:
    /// more varied) from every token.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `temperature` is finite and positive.
    pub fn new(temperature: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(RnnError::Config(format!(
                "sampling temperature = {temperature}: it must be finite and positive \
                 (Sampler::greedy takes the likeliest token)"
            )));
        }
        Ok(Self {
            temperature,
            top_k: usize::MAX,
            top_p: 1.0,
            candidates: Vec::new(),
        })
    }

    /// Always the likeliest token (the first of equals): greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            candidates: Vec::new(),
        }
    }

    /// This sampler drawing only from the `k` likeliest tokens.
    ///
    /// # Errors
    /// [`RnnError::Config`] for `k = 0`.
    pub fn with_top_k(self, k: usize) -> Result<Self> {
        if k == 0 {
            return Err(RnnError::Config("top-k = 0 leaves no token to draw".into()));
        }
        Ok(Self { top_k: k, ..self })
    }

    /// This sampler drawing only from the smallest set of the likeliest tokens whose
    /// probability reaches `p` (nucleus sampling; the likeliest token always stays).
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `0 < p <= 1`.
    pub fn with_top_p(self, p: f64) -> Result<Self> {
        if !(p > 0.0 && p <= 1.0) {
            return Err(RnnError::Config(format!(
                "top-p = {p}: it must be in (0, 1]"
            )));
        }
        Ok(Self { top_p: p, ..self })
    }

    /// The token drawn from `logits` (one per class) with `rng`. The same sampler, logits and
    /// generator state give the same token.
    ///
    /// # Errors
    /// [`RnnError::Empty`] for no logits, [`RnnError::NonFiniteInput`] for a NaN or infinite
    /// one.
    pub fn sample<T: Float>(&mut self, logits: &[T], rng: &mut impl Rng) -> Result<usize> {
        if logits.is_empty() {
            return Err(RnnError::Empty { what: "logits" });
        }
        crate::batch::finite("logits", logits)?;
        self.candidates_of(logits);
        let total: f64 = self.candidates.iter().map(|&(_, p)| p).sum();
        let mut left = rng.random_range(0.0..total);
        for &(id, p) in &self.candidates {
            if left < p {
                return Ok(id);
            }
            left -= p;
        }
        // Rounding in the subtraction can leave a sliver past the last candidate.
        Ok(self.candidates.last().expect("at least one candidate").0)
    }

    /// The tokens that may be drawn, likeliest first, with their unnormalised probabilities.
    fn candidates_of<T: Float>(&mut self, logits: &[T]) {
        let max = logits.iter().fold(f64::NEG_INFINITY, |m, l| m.max(l.f64()));
        self.candidates.clear();
        self.candidates.extend(
            (logits.iter().enumerate())
                .map(|(id, l)| (id, ((l.f64() - max) / self.temperature).exp())),
        );
        // Likeliest first; equals keep their order, so the first of equals leads.
        self.candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.candidates.truncate(self.top_k);
        if self.top_p < 1.0 {
            let total: f64 = self.candidates.iter().map(|&(_, p)| p).sum();
            let mut reached = 0.0;
            let keep = self
                .candidates
                .iter()
                .position(|&(_, p)| {
                    reached += p;
                    reached >= self.top_p * total
                })
                .map_or(self.candidates.len(), |last| last + 1);
            self.candidates.truncate(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    /// The share of `n` draws that gave each token.
    fn shares(s: &mut Sampler, logits: &[f64], n: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits, &mut rng).unwrap()] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn close(got: &[f64], want: &[f64], tol: f64) {
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "token {k}: {g} vs {w} ({got:?})");
        }
    }

    /// Probabilities 0.5, 0.3, 0.15, 0.05 as logits.
    fn logits() -> [f64; 4] {
        [0.5f64, 0.3, 0.15, 0.05].map(f64::ln)
    }

    #[test]
    fn draws_follow_the_tempered_softmax() {
        let n = 40_000;
        close(
            &shares(&mut Sampler::new(1.0).unwrap(), &logits(), n),
            &[0.5, 0.3, 0.15, 0.05],
            0.01,
        );
        // Temperature 0.5 squares the probabilities (then renormalises).
        let sq: Vec<f64> = [0.25, 0.09, 0.0225, 0.0025]
            .iter()
            .map(|p| p / 0.365)
            .collect();
        close(
            &shares(&mut Sampler::new(0.5).unwrap(), &logits(), n),
            &sq,
            0.01,
        );
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail_then_renormalise() {
        let n = 20_000;
        let mut top2 = Sampler::new(1.0).unwrap().with_top_k(2).unwrap();
        close(
            &shares(&mut top2, &logits(), n),
            &[0.625, 0.375, 0.0, 0.0],
            0.012,
        );
        // 0.5 + 0.3 reaches 0.79: the nucleus is two tokens; for 0.81, three.
        let mut p80 = Sampler::new(1.0).unwrap().with_top_p(0.79).unwrap();
        close(
            &shares(&mut p80, &logits(), n),
            &[0.625, 0.375, 0.0, 0.0],
            0.012,
        );
        let mut p81 = Sampler::new(1.0).unwrap().with_top_p(0.81).unwrap();
        let got = shares(&mut p81, &logits(), n);
        assert!(got[2] > 0.1 && got[3] == 0.0, "{got:?}");
        // Top-k first, top-p of what is left: in the top 3 (0.95), 0.9 of it needs all 3.
        let mut both = Sampler::new(1.0)
            .unwrap()
            .with_top_k(3)
            .unwrap()
            .with_top_p(0.9)
            .unwrap();
        let got = shares(&mut both, &logits(), n);
        assert!(got[2] > 0.1 && got[3] == 0.0, "{got:?}");
        // A tiny nucleus, and greedy decoding, keep only the likeliest, the first of equals.
        let mut tiny = Sampler::new(2.0).unwrap().with_top_p(1e-9).unwrap();
        assert_eq!(shares(&mut tiny, &logits(), 100), [1.0, 0.0, 0.0, 0.0]);
        let tied = [0.0, 3.0, 3.0, 1.0];
        assert_eq!(
            shares(&mut Sampler::greedy(), &tied, 100),
            [0.0, 1.0, 0.0, 0.0]
        );
    }

    #[test]
    fn the_same_generator_state_draws_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|k| (k * 7 % 13) as f32 / 4.0).collect();
        let mut s = Sampler::new(0.8)
            .unwrap()
            .with_top_k(20)
            .unwrap()
            .with_top_p(0.95)
            .unwrap();
        let draws = |s: &mut Sampler| {
            let mut rng = StdRng::seed_from_u64(3);
            (0..200)
                .map(|_| s.sample(&logits, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        let first = draws(&mut s);
        assert_eq!(first, draws(&mut s.clone()));
        assert!(first.iter().collect::<std::collections::HashSet<_>>().len() > 5);
    }

    #[test]
    fn bad_settings_and_logits_are_typed_errors() {
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(Sampler::new(t), Err(RnnError::Config(_))), "{t}");
        }
        let s = Sampler::new(1.0).unwrap();
        assert!(s.clone().with_top_k(0).is_err());
        for p in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(s.clone().with_top_p(p).is_err(), "{p}");
        }
        let mut rng = StdRng::seed_from_u64(0);
        let mut s = s;
        assert!(matches!(
            s.sample::<f32>(&[], &mut rng),
            Err(RnnError::Empty { what: "logits" })
        ));
        let e = s.sample(&[0.0f32, f32::NAN], &mut rng).unwrap_err();
        assert!(
            matches!(
                e,
                RnnError::NonFiniteInput {
                    what: "logits",
                    index: 1,
                    ..
                }
            ),
            "{e}"
        );
    }
}
