//! Gradient accumulation: the gradients of several micro-batches summed into one update
//! ([`crate::trainer::Trainer::accumulate`]), for batches too big for memory at once.
//!
//! Each micro-batch's pass runs with the `sum` reduction, so what is summed here is the
//! gradient of the summed loss; the update divides the total by the total weight a `mean`
//! divides by (scored positions, times `O` for float targets, or their class weights). So
//! the update is the one a single batch holding every micro-batch's sequences would make,
//! however unevenly the micro-batches' positions, lengths, ignored labels and class weights
//! fall: PyTorch's usual `loss / n_micro` recipe is that only when every micro-batch scores
//! as many positions.
//!
//! A loss of the caller's own ([`crate::trainer::Trainer::accumulate_with`]) has no
//! positions to count: each of its micro-batches counts as one, so a `mean` update is the
//! mean of their gradients (the `loss / n_micro` recipe) and a `sum` update their sum. The
//! two kinds do not mix in one update.

use kernels::Float;
use kernels::aligned::AlignedVec;
use kernels::reduce::axpy;

use crate::error::{Result, RnnError, out_of_memory};
use crate::io::Extras;

/// The checkpoint extras that hold waiting micro-batches ([`Accumulator::save`]): the
/// summed gradients as a tensor, the counts and sums as metadata.
const GRADS: &str = "accumulated.grads";
const KEYS: [&str; 3] = [
    "accumulated.micro_batches",
    "accumulated.loss",
    "accumulated.divisor",
];
/// Present (`true`) when the waiting micro-batches are of a loss of the caller's own; a
/// checkpoint without it holds built-in ones.
const OWN: &str = "accumulated.own";

/// Sums of the micro-batches accumulated since the last update.
#[derive(Clone, Debug, Default)]
pub struct Accumulator<T> {
    /// The summed gradients of the micro-batches' summed losses (empty until first used,
    /// then kept, so accumulating does not allocate after the first update).
    grads: AlignedVec<T>,
    /// Their summed losses (`sum` reduction), in f64.
    loss: f64,
    /// What a `mean` over all of them divides by ([`crate::network`]'s `mean_divisor`).
    divisor: f64,
    /// How many micro-batches were added.
    micro_batches: u64,
    /// Whether they are of a loss of the caller's own (each counting one in the divisor).
    own: bool,
}

impl<T: Float> Accumulator<T> {
    /// How many micro-batches are waiting for an update.
    pub fn micro_batches(&self) -> u64 {
        self.micro_batches
    }

    /// Whether a micro-batch of a loss of the caller's own (`own`) or of the built-in one
    /// may join the waiting ones.
    ///
    /// # Errors
    /// [`RnnError::Accumulation`] when micro-batches of the other kind wait.
    pub(crate) fn admits(&self, own: bool) -> Result<()> {
        if self.micro_batches == 0 || self.own == own {
            return Ok(());
        }
        let (waiting, this) = if own {
            ("a built-in loss", "a loss of your own")
        } else {
            ("a loss of your own", "the built-in loss")
        };
        Err(RnnError::Accumulation(format!(
            "{} micro-batches of {waiting} wait for apply_accumulated(): a micro-batch of \
             {this} cannot join their update (their means count different things)",
            self.micro_batches
        )))
    }

    /// Room for the sum of gradients of `params` parameters, made before a micro-batch's
    /// pass so that memory that is not there refuses the micro-batch
    /// ([`RnnError::OutOfMemory`]) before anything is computed or added.
    pub(crate) fn reserve(&mut self, params: usize) -> Result<()> {
        (self.grads.try_reserve(params)).map_err(out_of_memory("the accumulated gradients"))
    }

    /// Adds a micro-batch's summed loss, its gradient and its mean divisor (`own`: of a
    /// loss of the caller's own, its divisor 1), of a kind [`Accumulator::admits`].
    pub(crate) fn add(&mut self, loss: T, grads: &[T], divisor: f64, own: bool) {
        debug_assert!(self.admits(own).is_ok(), "micro-batches of two kinds");
        self.own = own;
        if self.micro_batches == 0 {
            self.grads.resize(grads.len());
            self.grads.copy_from_slice(grads);
        } else {
            axpy(&mut self.grads, T::one(), grads);
        }
        self.loss += loss.f64();
        self.divisor += divisor;
        self.micro_batches += 1;
    }

    /// Hands the summed gradients over to `grads` (by swapping buffers, no copy) and
    /// forgets the micro-batches; returns their summed loss and what a `mean` over all of
    /// them divides by.
    pub(crate) fn take_into(&mut self, grads: &mut AlignedVec<T>) -> (f64, f64) {
        std::mem::swap(&mut self.grads, grads);
        let totals = (self.loss, self.divisor);
        self.clear();
        totals
    }

    /// Forgets the micro-batches (the buffer stays allocated).
    pub(crate) fn clear(&mut self) {
        self.loss = 0.0;
        self.divisor = 0.0;
        self.micro_batches = 0;
    }

    /// Writes the waiting micro-batches into a checkpoint's `extras`: their summed
    /// gradients (no values when none waits) and, as exact decimal metadata, their count,
    /// summed loss and mean divisor.
    pub(crate) fn save(&self, extras: &mut Extras<T>) {
        let grads = if self.micro_batches == 0 {
            Vec::new()
        } else {
            self.grads.to_vec()
        };
        extras.tensors.retain(|(name, _)| name != GRADS);
        extras.tensors.push((GRADS.into(), grads));
        let values = [
            self.micro_batches.to_string(),
            self.loss.to_string(),
            self.divisor.to_string(),
        ];
        for (key, value) in KEYS.into_iter().zip(values) {
            extras.metadata.insert(key.into(), value);
        }
        if self.own {
            extras.metadata.insert(OWN.into(), "true".into());
        } else {
            extras.metadata.remove(OWN);
        }
    }

    /// Takes the micro-batches [`Accumulator::save`] wrote, for a model of `params`
    /// parameters, in place of any waiting here.
    ///
    /// # Errors
    /// [`RnnError::Format`] naming an entry that is missing, malformed or inconsistent (a
    /// gradient count other than `params`, or than 0 with no micro-batch); nothing changes
    /// then.
    pub(crate) fn restore(&mut self, extras: &Extras<T>, params: usize) -> Result<()> {
        let micro_batches: u64 = extras.value(KEYS[0])?;
        let loss: f64 = extras.value(KEYS[1])?;
        let divisor: f64 = extras.value(KEYS[2])?;
        let own = match extras.metadata.get(OWN) {
            None => false,
            Some(_) => extras.value(OWN)?,
        };
        let grads = extras.tensor(GRADS)?;
        let want = if micro_batches == 0 { 0 } else { params };
        if grads.len() != want {
            return Err(RnnError::Format(format!(
                "checkpoint's {GRADS} holds {} values; {micro_batches} waiting micro-batches \
                 of a model of {params} parameters need {want}",
                grads.len()
            )));
        }
        // Only finite losses are accumulated, and a mean's divisor is a count or a sum of
        // non-negative weights.
        if !(loss.is_finite() && divisor.is_finite() && divisor >= 0.0) {
            return Err(RnnError::Format(format!(
                "checkpoint's accumulated loss {loss} or divisor {divisor} is out of range"
            )));
        }
        if micro_batches > 0 {
            self.grads.resize(params);
            self.grads.copy_from_slice(grads);
        }
        (self.micro_batches, self.loss, self.divisor) = (micro_batches, loss, divisor);
        self.own = own;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room the memory cannot give refuses the micro-batch with an error naming the sum;
    /// what was accumulated stays.
    #[test]
    fn room_past_the_memory_is_an_error() {
        let mut acc = Accumulator::<f32>::default();
        acc.reserve(3).unwrap();
        acc.add(1.0, &[1.0, 2.0, 3.0], 1.0, false);
        let err = acc.reserve(1 << 60).unwrap_err();
        assert!(
            matches!(err, RnnError::OutOfMemory { ref what, .. } if what == "the accumulated gradients"),
            "{err:?}"
        );
        assert_eq!(
            (acc.micro_batches(), &acc.grads[..]),
            (1, &[1.0, 2.0, 3.0][..])
        );
    }
}
