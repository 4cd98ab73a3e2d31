//! The terminal [`Reporter`]: one progress bar per download plus a total bar
//! (bytes, rate, ETA) on a terminal; plain notes on stderr otherwise; nothing but
//! errors under `--quiet`. [`Live`]: a status line for waits.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use hearth_builder::report::{Reporter, TaskId};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<TaskId, ProgressBar>>,
    total: ProgressBar,
    draw: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let draw = !quiet && std::io::stderr().is_terminal();
        let target = if draw { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>8.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Progress { multi, bars: Mutex::new(BTreeMap::new()), total, draw, quiet }
    }

    /// Prints a line without tearing the bars.
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.draw {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}

impl Reporter for Progress {
    fn fetch_start(&self, id: TaskId, label: &str, total: Option<u64>) {
        let bar = self.multi.insert_before(&self.total, ProgressBar::new(total.unwrap_or(0)));
        bar.set_style(
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        self.bars.lock().expect("bars").insert(id, bar);
        if !self.draw {
            self.line(&format!("fetching {label}"));
        }
    }
    fn fetch_resumed(&self, id: TaskId, already: u64) {
        if let Some(bar) = self.bars.lock().expect("bars").get(&id) {
            let back = bar.position();
            bar.set_position(already);
            self.total.set_position((self.total.position() + already).saturating_sub(back));
        }
        if already > 0 && !self.draw {
            self.line(&format!("resuming after {already} bytes"));
        }
    }
    fn fetch_progress(&self, id: TaskId, bytes: u64) {
        if let Some(bar) = self.bars.lock().expect("bars").get(&id) {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
    }
    fn fetch_done(&self, id: TaskId) {
        if let Some(bar) = self.bars.lock().expect("bars").remove(&id) {
            bar.finish_and_clear();
        }
    }
    fn total_grow(&self, bytes: u64) {
        self.total.inc_length(bytes);
    }
    fn note(&self, message: &str) {
        self.line(&format!("note: {message}"));
    }
}

/// A status line that redraws in place on a terminal and is printed only when
/// it says something new otherwise.
pub struct Live {
    bar: Option<ProgressBar>,
    last: std::cell::RefCell<String>,
    quiet: bool,
}

impl Live {
    pub fn new(quiet: bool) -> Live {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Live { bar, last: std::cell::RefCell::new(String::new()), quiet }
    }

    /// Shows `text` as the live line.
    pub fn update(&self, text: &str) {
        match &self.bar {
            Some(b) => b.set_message(text.to_owned()),
            None => {
                // The seconds counter at the end changes every time: compare without it.
                let key = text.rsplit_once(" (").map_or(text, |(k, _)| k).to_owned();
                let mut last = self.last.borrow_mut();
                if key != *last && !self.quiet {
                    eprintln!("{text}");
                    *last = key;
                }
            }
        }
    }

    /// Prints a line above the live line.
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
