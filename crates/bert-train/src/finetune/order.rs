//! Fine-tuning's data: each epoch a seeded order of the training rows (optionally grouped by
//! length), cut into batches of `batch_size` rows; step `s` takes the batches
//! `s · per_step .. (s + 1) · per_step` of the run, so the position follows from the step alone
//! and a resumed run serves what an uninterrupted one would.

use anyhow::Result;
use bert_data::seeds;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::trainer::DataSource;

/// The order of the training rows in `epoch`: a seeded shuffle and, with `group_by_length`,
/// transformers' length grouping (`get_length_grouped_indices`): mega-batches of
/// `min(n / (4 · batch_size), 50)` batches (at least one), each sorted longest first, and the
/// first row of the mega-batch holding the longest row swapped with the very first row.
pub fn epoch_order(
    lengths: &[usize],
    seed: u64,
    epoch: u64,
    batch_size: usize,
    group_by_length: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seeds::epoch_order(seed, epoch),
    ));
    if !group_by_length || order.is_empty() {
        return order;
    }
    let batch_size = batch_size.max(1);
    let mega = (lengths.len() / (4 * batch_size)).clamp(1, 50) * batch_size;
    for chunk in order.chunks_mut(mega) {
        // Stable, so ties keep the shuffled order.
        chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    let longest = (0..order.len())
        .step_by(mega)
        .max_by_key(|&start| (lengths[order[start]], std::cmp::Reverse(start)))
        .unwrap_or(0);
    order.swap(0, longest);
    order
}

/// The batches (lists of training row indices) of a fine-tuning run.
#[derive(Debug)]
pub struct EpochBatches<'a> {
    lengths: &'a [usize],
    batch_size: usize,
    seed: u64,
    group_by_length: bool,
    /// Batches in all, when the run is bounded by epochs.
    last_batch: Option<u64>,
    order: (u64, Vec<usize>),
    epoch: u64,
}

impl<'a> EpochBatches<'a> {
    /// Batches of `batch_size` rows over rows of token counts `lengths`, for `epochs` passes
    /// (unbounded when `None`).
    pub fn new(
        lengths: &'a [usize],
        batch_size: usize,
        seed: u64,
        group_by_length: bool,
        epochs: Option<u64>,
    ) -> Self {
        let batch_size = batch_size.max(1);
        let per_epoch = lengths.len().div_ceil(batch_size) as u64;
        Self {
            lengths,
            batch_size,
            seed,
            group_by_length,
            last_batch: epochs.map(|e| e * per_epoch),
            order: (u64::MAX, Vec::new()),
            epoch: 0,
        }
    }

    /// Batches per epoch.
    pub fn per_epoch(&self) -> u64 {
        self.lengths.len().div_ceil(self.batch_size) as u64
    }

    /// Optimizer steps of `epochs` passes at `per_step` batches a step.
    pub fn steps(&self, epochs: u64, per_step: u64) -> u64 {
        (epochs * self.per_epoch()).div_ceil(per_step.max(1))
    }
}

impl DataSource<Vec<usize>> for EpochBatches<'_> {
    type Position = ();

    fn next_step(&mut self, step: u64, count: usize) -> Result<Vec<Vec<usize>>> {
        let per_epoch = self.per_epoch().max(1);
        let count = count as u64;
        let mut out = Vec::new();
        for b in step * count..(step + 1) * count {
            if self.last_batch.is_some_and(|l| b >= l) {
                break;
            }
            let epoch = b / per_epoch;
            self.epoch = epoch;
            if self.order.0 != epoch {
                let order = epoch_order(
                    self.lengths,
                    self.seed,
                    epoch,
                    self.batch_size,
                    self.group_by_length,
                );
                self.order = (epoch, order);
            }
            let start = (b % per_epoch) as usize * self.batch_size;
            let end = (start + self.batch_size).min(self.lengths.len());
            out.push(self.order.1[start..end].to_vec());
        }
        Ok(out)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn position(&self) {}
}

#[cfg(test)]
mod tests {
    use super::epoch_order;

    /// Padded tokens of the batches of `order` (each batch padded to its longest row).
    fn padded(order: &[usize], lengths: &[usize], batch_size: usize) -> usize {
        order
            .chunks(batch_size)
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
            .sum()
    }

    #[test]
    fn group_by_length_sorts_mega_batches_and_puts_the_longest_row_first() {
        // 1,000 rows of pseudo-random lengths 5..=132; batch 8 → mega-batches of 31 · 8 = 248.
        let lengths: Vec<usize> = (0..1000u64)
            .map(|i| 5 + ((i * 7919) % 128) as usize)
            .collect();
        let (batch, mega) = (8, 248);
        for epoch in 0..3 {
            let plain = epoch_order(&lengths, 42, epoch, batch, false);
            let grouped = epoch_order(&lengths, 42, epoch, batch, true);
            assert_eq!(
                grouped,
                epoch_order(&lengths, 42, epoch, batch, true),
                "seeded"
            );
            let mut sorted = grouped.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "a permutation");
            // The same rows in each mega-batch as the plain shuffle, longest first.
            for (g, p) in grouped.chunks(mega).zip(plain.chunks(mega)).skip(1) {
                let (mut a, mut b) = (g.to_vec(), p.to_vec());
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b);
            }
            let first = grouped[0];
            assert_eq!(lengths[first], 132, "the longest row leads");
            let skip_swapped =
                |c: &[usize]| c[1..].windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]);
            assert!(
                grouped.chunks(mega).all(skip_swapped),
                "sorted longest first"
            );
            // Far less padding than the plain shuffle.
            let (pg, pp) = (
                padded(&grouped, &lengths, batch),
                padded(&plain, &lengths, batch),
            );
            assert!(pg * 10 < pp * 8, "padded tokens {pg} vs {pp}");
        }
        // Off: the plain seeded shuffle, different per epoch.
        assert_ne!(
            epoch_order(&lengths, 42, 0, batch, false),
            epoch_order(&lengths, 42, 1, batch, false)
        );
        assert!(epoch_order(&[], 1, 0, 8, true).is_empty());
    }
}
