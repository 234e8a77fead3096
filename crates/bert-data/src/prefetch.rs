//! Batches prepared on a worker thread, ahead of the training loop.
//!
//! A training step should never wait for its data: [`Prefetcher`] runs a producer (e.g.
//! [`crate::pretraining::PretrainingStream::next_batch`]) on a scoped worker thread that stays up
//! to `depth` items ahead, and counts how long the consumer waited ([`Prefetcher::take_waited`]),
//! so that a run can show that it did not. It is an [`Iterator`]; items arrive in production
//! order, so a deterministic producer gives the same sequence with or without the worker.
//!
//! ```
//! use bert_data::prefetch::Prefetcher;
//!
//! let squares: Vec<u64> = std::thread::scope(|scope| {
//!     let mut n = 0u64;
//!     let ahead = Prefetcher::new(scope, 2, move || {
//!         n += 1;
//!         (n <= 4).then_some(n * n)
//!     });
//!     ahead.collect()
//! });
//! assert_eq!(squares, [1, 4, 9, 16]);
//! ```

use std::fmt;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::Scope;
use std::time::{Duration, Instant};

/// The producer of a [`Prefetcher`]: `None` ends the sequence.
type Produce<'scope, T> = Box<dyn FnMut() -> Option<T> + Send + 'scope>;

enum Source<'scope, T> {
    /// `depth == 0`: produced on the consumer's thread when asked for.
    Inline(Produce<'scope, T>),
    /// Produced on a worker thread into a bounded channel.
    Worker(Receiver<T>),
}

/// Items produced up to `depth` ahead of the consumer on a scoped worker thread (or inline with
/// `depth == 0`). Dropping it stops the worker after the item it is making.
pub struct Prefetcher<'scope, T> {
    source: Source<'scope, T>,
    waited: Duration,
}

impl<T> fmt::Debug for Prefetcher<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefetcher")
            .field("worker", &matches!(self.source, Source::Worker(_)))
            .field("waited", &self.waited)
            .finish()
    }
}

impl<'scope, T: Send + 'scope> Prefetcher<'scope, T> {
    /// Starts `produce` on a worker thread of `scope`, which keeps up to `depth` items ready;
    /// `depth == 0` produces each item inline by `next` instead.
    pub fn new<'env>(
        scope: &'scope Scope<'scope, 'env>,
        depth: usize,
        mut produce: impl FnMut() -> Option<T> + Send + 'scope,
    ) -> Self {
        if depth == 0 {
            return Self {
                source: Source::Inline(Box::new(produce)),
                waited: Duration::ZERO,
            };
        }
        // The worker holds one finished item while the channel holds `depth - 1`.
        let (sender, receiver) = sync_channel(depth - 1);
        scope.spawn(move || {
            while let Some(item) = produce() {
                if sender.send(item).is_err() {
                    break; // the consumer is gone
                }
            }
        });
        Self {
            source: Source::Worker(receiver),
            waited: Duration::ZERO,
        }
    }

    /// Time the consumer spent by `next` since the last call (for inline
    /// production, the production time itself); resets the count.
    pub fn take_waited(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }
}

impl<T> Iterator for Prefetcher<'_, T> {
    type Item = T;

    /// The next item, `None` once the producer is exhausted.
    fn next(&mut self) -> Option<T> {
        let start = Instant::now();
        let item = match &mut self.source {
            Source::Inline(produce) => produce(),
            Source::Worker(receiver) => receiver.recv().ok(),
        };
        self.waited += start.elapsed();
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(depth: usize, n: u32) -> Vec<u32> {
        std::thread::scope(|scope| {
            let mut i = 0;
            let p = Prefetcher::new(scope, depth, move || {
                i += 1;
                (i <= n).then_some(i)
            });
            p.collect()
        })
    }

    #[test]
    fn same_sequence_inline_and_on_a_worker() {
        let inline = counted(0, 50);
        assert_eq!(inline, (1..=50).collect::<Vec<_>>());
        for depth in [1, 2, 8] {
            assert_eq!(counted(depth, 50), inline, "depth {depth}");
        }
    }

    #[test]
    fn the_worker_works_ahead_and_the_wait_is_counted() {
        std::thread::scope(|scope| {
            let mut p = Prefetcher::new(scope, 2, || {
                std::thread::sleep(Duration::from_millis(20));
                Some(())
            });
            // Inline production of one item would take 20 ms; ahead, the first wait is
            // 20 ms and then the worker is ready before we ask.
            p.next();
            let first = p.take_waited();
            assert!(first >= Duration::from_millis(15), "{first:?}");
            std::thread::sleep(Duration::from_millis(200));
            p.next();
            let ready = p.take_waited();
            assert!(ready < Duration::from_millis(15), "{ready:?}");
        });
    }

    #[test]
    fn dropping_the_consumer_stops_an_endless_worker() {
        std::thread::scope(|scope| {
            let mut p = Prefetcher::new(scope, 3, || Some(0u8));
            assert_eq!(p.next(), Some(0));
            drop(p);
        }); // returns: the worker's send failed and it ended
    }
}
