//! Every seed stream of a run, in one place: each random draw of pretraining and fine-tuning
//! (initial weights, data order, masking, dropout) comes from [`derive_seed`] over the run's
//! `training.seed`, the position it is drawn at, and one of the salts below. The salts keep
//! the streams independent; changing one changes every run that uses it.

/// Derives an independent seed from a base seed and a position (SplitMix64 over the parts).
pub fn derive_seed(parts: &[u64]) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        x ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(x << 6)
            .wrapping_add(x >> 2);
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x = z ^ (z >> 31);
    }
    x
}

/// The initial weights of a new model (or head): `[seed, INIT]`.
pub const INIT: u64 = 0;
/// The pretraining stream's document order of an epoch: `[seed, epoch, DOCUMENT_ORDER]`.
pub const DOCUMENT_ORDER: u64 = 1;
/// Pairs and masks of a document under static masking: `[seed, doc, copy, STATIC_MASKING]`.
pub const STATIC_MASKING: u64 = 2;
/// Pairs and masks of a document under dynamic masking: `[seed, epoch, doc, DYNAMIC_MASKING]`.
pub const DYNAMIC_MASKING: u64 = 3;
/// The order of a window's instances: `[seed, epoch, window, WINDOW_SHUFFLE]`.
pub const WINDOW_SHUFFLE: u64 = 4;
/// Dropout masks of the `m`-th micro-batch of an optimizer step (counted over every replica of
/// every process, in the order they split the step's batches): `[seed, step, DROPOUT]` for the
/// first, `[seed, step, DROPOUT, m]` after.
pub const DROPOUT: u64 = 5;
/// Fine-tuning's row order of an epoch: `[seed, epoch, EPOCH_ORDER]`.
pub const EPOCH_ORDER: u64 = 7;
/// The held-out pretraining stream (the same at every evaluation): `[seed, EVAL_STREAM]`.
pub const EVAL_STREAM: u64 = 99;

/// The seed of the initial weights.
pub fn init(seed: u64) -> u64 {
    derive_seed(&[seed, INIT])
}

/// The dropout seed of the `micro_batch`-th micro-batch of optimizer step `step`.
pub fn dropout(seed: u64, step: u64, micro_batch: usize) -> u64 {
    match micro_batch {
        0 => derive_seed(&[seed, step, DROPOUT]),
        m => derive_seed(&[seed, step, DROPOUT, m as u64]),
    }
}

/// The seed of fine-tuning's row order in `epoch`.
pub fn epoch_order(seed: u64, epoch: u64) -> u64 {
    derive_seed(&[seed, epoch, EPOCH_ORDER])
}

/// The seed of the held-out pretraining stream.
pub fn eval_stream(seed: u64) -> u64 {
    derive_seed(&[seed, EVAL_STREAM])
}
