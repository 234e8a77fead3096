//! Progress reporting: a bar on a terminal, nothing on a pipe (CI logs stay readable).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `len` items, drawn on stderr only when it is a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// A training loop's progress: on a terminal, a bar showing the latest loss with messages
/// printed above it; on a pipe, no bar, the periodic train lines and messages as plain lines.
#[derive(Debug)]
pub struct TrainingProgress {
    bar: ProgressBar,
    tty: bool,
    what: &'static str,
}

impl TrainingProgress {
    /// Steps `start..total` of `what` ("pretraining", "fine-tuning").
    pub fn new(total: u64, start: u64, what: &'static str) -> Self {
        let bar = bar(total, what);
        bar.set_position(start);
        Self {
            bar,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            what,
        }
    }

    /// One step done, ending at `loss`.
    pub fn step(&self) {
        self.bar.inc(1);
    }

    /// The loss the bar shows (the last one read from the device).
    pub fn set_loss(&self, loss: f64) {
        if self.tty {
            self.bar
                .set_message(format!("{} loss {loss:.4}", self.what));
        }
    }

    /// A periodic train line: a plain line on a pipe, nothing on a terminal (the bar has it).
    pub fn log(&self, line: impl FnOnce() -> String) {
        if !self.tty {
            eprintln!("{}", line());
        }
    }

    /// A message (an evaluation, a saved best): above the bar, or a plain line.
    pub fn say(&self, line: String) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
