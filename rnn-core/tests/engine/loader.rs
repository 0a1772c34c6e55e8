//! Minibatches of a data set (`loader::Loader`): every epoch a partition of the sequences
//! into batches of the asked size, reproducible from the seed and the epoch, shuffled when
//! asked, bucketed by length when asked (less padding, measured in positions), and a model
//! trained through it on sequences of different lengths learns.

use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::error::RnnError;
use rnn_core::loader::{Loader, gather_rows, pad_batch};
use rnn_core::prelude::*;

/// A loader with any combination of options, and an epoch.
#[derive(Debug)]
struct Setup {
    loader: Loader,
    lengths: Vec<usize>,
    batch_size: usize,
    drop_last: bool,
    pool: Option<usize>,
    longest_first: bool,
    /// The loader without `longest_first`.
    in_order: Loader,
    epoch: u64,
}

fn loader_setup() -> impl Strategy<Value = Setup> {
    (
        prop::collection::vec(1usize..30, 1..60),
        1usize..9,
        prop::option::of(any::<u64>()),
        any::<bool>(),
        prop::option::of(1usize..5),
        any::<bool>(),
        0u64..1000,
    )
        .prop_map(
            |(lengths, batch_size, seed, drop_last, pool, longest_first, epoch)| {
                let mut loader = Loader::new(&lengths, batch_size).unwrap();
                if let Some(seed) = seed {
                    loader = loader.shuffled(seed);
                }
                if drop_last {
                    loader = loader.drop_last();
                }
                if let Some(pool) = pool {
                    loader = loader.bucketed(pool).unwrap();
                }
                let in_order = loader.clone();
                if longest_first {
                    loader = loader.longest_first();
                }
                Setup {
                    loader,
                    lengths,
                    batch_size,
                    drop_last,
                    pool,
                    longest_first,
                    in_order,
                    epoch,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Each epoch: batches of `batch_size` but one shorter (none with `drop_last`), every
    /// sequence in at most one batch and all but fewer than `batch_size` in one, as many
    /// batches as `batches_per_epoch` says, bucketed batches longest first, the same
    /// batches when asked again, and a padding share that counts `pad_batch`'s positions.
    /// `longest_first` reorders each batch and changes nothing else.
    #[test]
    fn epochs_partition_the_sequences(s in loader_setup()) {
        let Setup { loader, lengths, batch_size, drop_last, pool, longest_first, in_order, epoch } = s;
        let batches = loader.epoch(epoch);
        prop_assert_eq!(batches.len(), loader.batches_per_epoch());
        prop_assert_eq!(&batches, &loader.clone().epoch(epoch));
        let short = batches.iter().filter(|b| b.len() != batch_size).count();
        prop_assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= batch_size));
        prop_assert!(short <= usize::from(!drop_last));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        let covered = seen.len();
        prop_assert_eq!(covered, batches.iter().map(Vec::len).sum::<usize>(), "an index twice");
        prop_assert!(seen.iter().all(|&i| i < lengths.len()));
        let want = if drop_last { lengths.len() / batch_size * batch_size } else { lengths.len() };
        prop_assert_eq!(covered, want);
        let sequences: Vec<Vec<u8>> = lengths.iter().map(|&len| vec![1; len]).collect();
        let (mut computed, mut own) = (0, 0);
        for batch in &batches {
            let padded = pad_batch(&sequences, batch, 1, 0).unwrap();
            computed += padded.values.len();
            own += padded.values.iter().filter(|&&v| v == 1).count();
            if pool.is_some() || longest_first {
                let lens: Vec<usize> = batch.iter().map(|&i| lengths[i]).collect();
                prop_assert!(lens.windows(2).all(|w| w[0] >= w[1]), "not sorted {:?}", lens);
            }
        }
        let mut sorted = in_order.epoch(epoch);
        if longest_first {
            for batch in &mut sorted {
                batch.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            }
        }
        prop_assert_eq!(&batches, &sorted);
        // (No batch at all: fewer sequences than a batch, the last one dropped.)
        let want = if computed == 0 { 0.0 } else { (computed - own) as f64 / computed as f64 };
        prop_assert_eq!(loader.padding_share(epoch), want);
    }
}

/// Without `shuffled`, every epoch is the data set in order; with it, the order changes
/// from epoch to epoch, each sequence comes first in some epoch, and other seeds give
/// other orders.
#[test]
fn shuffling_changes_the_order_each_epoch() {
    let lengths = vec![3; 8];
    let plain = Loader::new(&lengths, 3).unwrap();
    let in_order = vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]];
    for epoch in [0, 1, 99] {
        assert_eq!(plain.epoch(epoch), in_order);
    }
    let shuffled = plain.clone().shuffled(5);
    let orders: Vec<Vec<Vec<usize>>> = (0..200).map(|e| shuffled.epoch(e)).collect();
    let mut firsts = [0usize; 8];
    for order in &orders {
        firsts[order[0][0]] += 1;
    }
    // 25 expected each: a fair shuffle puts every one first between 8 and 50 times.
    assert!(firsts.iter().all(|&n| (8..=50).contains(&n)), "{firsts:?}");
    assert!(orders.windows(2).filter(|w| w[0] == w[1]).count() <= 1);
    assert_ne!(plain.clone().shuffled(6).epoch(0), orders[0]);
}

/// Bucketing on a spread of lengths (16-256 steps, batches of 32) computes far fewer
/// padded positions than shuffled batches (0.47 of them padding; pools of 16 batches 0.05),
/// and shuffled bucketed batches still mix: epochs differ in which sequences share a batch.
#[test]
fn bucketing_cuts_padding() {
    let mut rng = StdRng::seed_from_u64(1);
    let lengths: Vec<usize> = (0..1024).map(|_| rng.random_range(16..=256)).collect();
    let shuffled = Loader::new(&lengths, 32).unwrap().shuffled(0);
    let bucketed = shuffled.clone().bucketed(16).unwrap();
    let (plain_share, bucketed_share) = (shuffled.padding_share(0), bucketed.padding_share(0));
    assert!(plain_share > 0.4, "{plain_share}");
    assert!(bucketed_share < 0.06, "{bucketed_share}");
    assert_ne!(pairs_of(bucketed.epoch(0)), pairs_of(bucketed.epoch(1)));
    // A pool of every batch sorts the whole set: each epoch batches of the same lengths,
    // in another order, sequences of equal length trading places.
    let sorted = shuffled.bucketed(32).unwrap();
    let batch_lengths = |epoch| {
        let batches = sorted.epoch(epoch);
        let lengths = |b: &Vec<usize>| b.iter().map(|&i| lengths[i]).collect::<Vec<_>>();
        let in_order: Vec<Vec<usize>> = batches.iter().map(lengths).collect();
        let mut by_length = in_order.clone();
        by_length.sort();
        (in_order, by_length, batches)
    };
    let ((order_0, set_0, batches_0), (order_1, set_1, batches_1)) =
        (batch_lengths(0), batch_lengths(1));
    assert_ne!(order_0, order_1);
    assert_eq!(set_0, set_1);
    assert_ne!(pairs_of(batches_0), pairs_of(batches_1));
}

/// Which sequences share a batch, whatever the order of the batches and within them.
fn pairs_of(mut batches: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
    batches.iter_mut().for_each(|b| b.sort_unstable());
    batches.sort();
    batches
}

/// Bad input is a typed error.
#[test]
fn bad_input_is_refused() {
    assert!(matches!(
        Loader::new(&[], 4),
        Err(RnnError::Empty { what: "sequences" })
    ));
    assert!(matches!(
        Loader::new(&[3], 0),
        Err(RnnError::Empty { what: "batch_size" })
    ));
    assert!(matches!(
        Loader::new(&[3, 0, 2], 2),
        Err(RnnError::LengthOutOfRange {
            index: 1,
            length: 0,
            seq_len: 3
        })
    ));
    let loader = Loader::new(&[3], 1).unwrap();
    assert!(matches!(
        loader.bucketed(0),
        Err(RnnError::Empty { what: "pool" })
    ));
    let sequences = [vec![1.0f32, 2.0], vec![3.0]];
    let err = pad_batch(&sequences, &[1, 2], 1, 0.0).unwrap_err();
    assert!(err.to_string().contains("indices[1]"), "{err}");
    assert!(matches!(
        pad_batch(&sequences, &[], 1, 0.0),
        Err(RnnError::Empty { .. })
    ));
    let one = pad_batch(&sequences, &[0], 2, 0.0).unwrap();
    assert_eq!(
        (one.values, one.lengths, one.seq_len),
        (vec![1.0, 2.0], vec![1], 1)
    );
    assert!(matches!(
        pad_batch(&sequences, &[1], 2, 0.0),
        Err(RnnError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gather_rows(&[1, 2, 3], &[0], 0),
        Err(RnnError::Empty { what: "width" })
    ));
    assert!(matches!(
        gather_rows(&[1, 2, 3], &[0], 2),
        Err(RnnError::ShapeMismatch { .. })
    ));
    let err = gather_rows(&[1, 2, 3, 4], &[1, 2], 2).unwrap_err();
    assert!(err.to_string().contains("indices[1]"), "{err}");
    assert_eq!(
        gather_rows(&[1, 2, 3, 4], &[1, 1, 0], 2).unwrap(),
        [3, 4, 3, 4, 1, 2]
    );
}

/// A GRU trained through a shuffled, bucketed loader on sequences of 2-24 steps learns
/// whether a sequence's values sum above zero, scored at each sequence's own last step:
/// from chance to more than 90 % of held-out sequences right.
#[test]
fn a_model_learns_through_the_loader() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut data = |n: usize| -> (Vec<Vec<f32>>, Vec<usize>) {
        let xs: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                let len = rng.random_range(2..=24);
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            })
            .collect();
        let labels = xs
            .iter()
            .map(|x| usize::from(x.iter().sum::<f32>() > 0.0))
            .collect();
        (xs, labels)
    };
    let (train_x, train_y) = data(512);
    let (test_x, test_y) = data(256);
    let spec = LossSpec::last_step(LossKind::CrossEntropy);
    let mut trainer =
        Trainer::<f32>::new(RnnConfig::gru(1, 16, 2), spec, OptimizerKind::adam(1e-2), 0).unwrap();
    let all: Vec<usize> = (0..test_x.len()).collect();
    let test = pad_batch(&test_x, &all, 1, 0.0).unwrap();
    let accuracy = |trainer: &mut Trainer<f32>| {
        let batch = Batch::new(
            test.seq_len,
            all.len(),
            &test.values,
            Target::Classes(&test_y),
        );
        trainer
            .accuracy(&Batch {
                lengths: Some(&test.lengths),
                ..batch
            })
            .unwrap()
    };
    let before = accuracy(&mut trainer);
    let lengths: Vec<usize> = train_x.iter().map(Vec::len).collect();
    let loader = Loader::new(&lengths, 32)
        .unwrap()
        .shuffled(9)
        .bucketed(4)
        .unwrap();
    for epoch in 0..15 {
        for indices in loader.epoch(epoch) {
            let x = pad_batch(&train_x, &indices, 1, 0.0).unwrap();
            let y = gather_rows(&train_y, &indices, 1).unwrap();
            let batch = Batch::new(x.seq_len, indices.len(), &x.values, Target::Classes(&y));
            trainer
                .step(&Batch {
                    lengths: Some(&x.lengths),
                    ..batch
                })
                .unwrap();
        }
    }
    let after = accuracy(&mut trainer);
    assert!(before < 0.7, "{before}");
    assert!(after > 0.9, "{before} -> {after}");
}
