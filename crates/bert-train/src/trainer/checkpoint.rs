//! The run directory's files: checkpoints (`checkpoints/step-N/` with the task's weights,
//! optimizer moments and the trainer state, written under a temporary name and renamed),
//! model directories (`best/`, `final/`), `metrics.jsonl`, and the Ctrl-C flag.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use bert_model::checkpoint::{read_checkpoint, write_atomically, write_safetensors};
use burn::module::AutodiffModule;
use burn::tensor::Device;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::TrainerState;
use super::optim::AdamW;
use crate::config::TrainingSection;

/// Appends JSON lines to `metrics.jsonl` (flushed per line, so a plot can follow a live run).
#[derive(Debug)]
pub struct Metrics {
    /// `None` on the ranks of a multi-node run other than rank 0, which write nothing.
    file: Option<std::fs::File>,
}

impl Metrics {
    /// Opens `dir/metrics.jsonl` for appending.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { file: Some(file) })
    }

    /// Metrics that go nowhere (a rank other than 0 of a multi-node run).
    pub fn sink() -> Self {
        Self { file: None }
    }

    /// Writes one line.
    pub fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        if let Some(file) = &mut self.file {
            writeln!(file, "{value}")?;
            file.flush()?;
        }
        Ok(())
    }
}

/// Complete checkpoints of a run, oldest first: `(step, directory)`.
pub fn checkpoint_dirs(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Refuses to overwrite a run (or to resume nothing); returns the checkpoint to resume from.
pub fn check_resume(out: &Path, resume: bool) -> Result<Option<PathBuf>> {
    let existing = checkpoint_dirs(out);
    if !resume && !existing.is_empty() {
        anyhow::bail!(
            "{} already has checkpoints: pass --resume to continue, or choose another output.dir",
            out.display()
        );
    }
    if resume && existing.is_empty() {
        anyhow::bail!("nothing to resume: {} has no checkpoint", out.display());
    }
    Ok(existing.last().map(|(_, d)| d.clone()))
}

/// Writes `checkpoints/step-N/` (the model through `save_model`, `optimizer.safetensors`,
/// `trainer_state.json`) atomically, then deletes all but the newest `keep`.
pub fn save_checkpoint<B, S>(
    out: &Path,
    step: u64,
    save_model: impl FnOnce(&Path) -> Result<()>,
    opt: &AdamW<B>,
    state: &S,
    keep: usize,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    S: Serialize,
{
    let root = out.join("checkpoints");
    std::fs::create_dir_all(&root)?;
    let name = format!("step-{step:08}");
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    save_model(&tmp)?;
    let (_, moments) = opt.state();
    write_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
    write_atomically(
        &tmp.join("trainer_state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    sync_tree(&tmp)?;
    let target = root.join(&name);
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    sync_dir(&root)?;
    let all = checkpoint_dirs(out);
    if all.len() > keep.max(1) {
        for (_, old) in &all[..all.len() - keep.max(1)] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(target)
}

/// Reads a checkpoint's trainer state and restores its optimizer moments into `opt` (the
/// weights are the task's to load).
pub fn load_state<B: AutodiffBackend, M: AutodiffModule<B>>(
    dir: &Path,
    opt: &mut AdamW<B>,
    model: &M,
    device: &Device<B>,
) -> Result<TrainerState> {
    let text = std::fs::read_to_string(dir.join("trainer_state.json"))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: bad trainer state", dir.display()))?;
    let moments = read_checkpoint(&dir.join("optimizer.safetensors"))?
        .into_iter()
        .map(|(k, s)| {
            s.to_data()
                .map(|d| (k, d))
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    opt.load_state(state.step, moments, model, device)
        .with_context(|| format!("cannot resume from {}", dir.display()))?;
    Ok(state)
}

/// Writes a model directory (`best/`, `final/`) atomically: `fill` writes it under a
/// temporary name, which is then renamed over the old one.
pub fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let tmp = dir.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    sync_tree(&tmp)?;
    let old = dir.with_file_name(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot write {}", dir.display()))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Flushes every file of `dir` (not recursive: model directories are flat) and then `dir`
/// itself to the disk, so that the rename that publishes it never points at data still in
/// the page cache (a power loss would leave an empty "complete" directory).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot flush {}", path.display()))?;
        }
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (a rename into it) to the disk.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush {}", dir.display()))
}

/// The error that stops a run that diverged at `step` (counting from 1): `what` says how
/// (`loss is NaN`, …). Nothing of that step is saved.
pub fn diverged(what: &str, step: u64, out: &Path) -> anyhow::Error {
    let kept = match checkpoint_dirs(out).last() {
        Some((s, dir)) => format!(
            "the last good checkpoint (step {s}) is kept in {}",
            dir.display()
        ),
        None => "no checkpoint had been written yet".to_string(),
    };
    anyhow::anyhow!("{what} at step {step}: stopping; {kept}")
}

/// Whether something is due at `step` when it happens every `every` steps (0: never).
pub fn due(every: u64, step: u64) -> bool {
    every > 0 && step.is_multiple_of(every)
}

/// Whether to checkpoint and stop before the end: Ctrl-C, or `training.stop_after_steps`.
pub fn stop_requested(
    interrupted: &AtomicBool,
    training: &TrainingSection,
    step: u64,
    total: u64,
) -> bool {
    interrupted.load(Ordering::SeqCst)
        || training
            .stop_after_steps
            .is_some_and(|s| step >= s && step < total)
}

/// Set on Ctrl-C; the loop saves a checkpoint and exits.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler = flag.clone();
    let _ = ctrlc::set_handler(move || handler.store(true, Ordering::SeqCst));
    flag
}
