//! Progress: a bar per stripe on a terminal, plain periodic lines otherwise, JSON
//! lines (on stderr, so stdout stays one JSON result) with `--json`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pipeline::Counters;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Bars,
    Lines,
    Json,
}

impl Mode {
    pub fn pick(json: bool, quiet: bool) -> Mode {
        if quiet {
            Mode::Off
        } else if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// A running reporter; `finish` stops it and prints the last state.
#[derive(Debug)]
pub struct Reporter {
    stop: Option<Sender<bool>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

impl Reporter {
    /// Starts reporting `counters` (one per stripe). `totals` are the expected raw sizes
    /// when known (restore), for ETA.
    pub fn start(
        mode: Mode,
        op: &str,
        counters: Vec<Arc<Counters>>,
        totals: Option<Vec<u64>>,
    ) -> Reporter {
        if mode == Mode::Off {
            return Reporter {
                stop: None,
                handle: None,
            };
        }
        let (tx, rx) = bounded::<bool>(1);
        let op = op.to_string();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let period = match mode {
                Mode::Bars => Duration::from_millis(100),
                Mode::Json => Duration::from_secs(1),
                _ => Duration::from_secs(5),
            };
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let bars: Vec<ProgressBar> = if mode == Mode::Bars {
                counters
                    .iter()
                    .enumerate()
                    .map(|(i, _)| {
                        let total = totals.as_ref().map(|t| t[i]);
                        let b = multi.add(match total {
                            Some(t) => ProgressBar::new(t),
                            None => ProgressBar::no_length(),
                        });
                        let tmpl = if total.is_some() {
                            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
                        } else {
                            "{prefix} {spinner} {bytes} {binary_bytes_per_sec} {elapsed}"
                        };
                        b.set_style(
                            ProgressStyle::with_template(tmpl)
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        b.set_prefix(format!("{op} stripe {}", i + 1));
                        b
                    })
                    .collect()
            } else {
                Vec::new()
            };
            // `last`: the final report; `ok`: the operation succeeded (a failed or
            // interrupted one leaves its bars where they were, not at 100 %).
            let emit = |last: bool, ok: bool| {
                let secs = started.elapsed().as_secs_f64().max(1e-6);
                match mode {
                    Mode::Bars => {
                        for (b, c) in bars.iter().zip(&counters) {
                            b.set_position(c.raw.load(Ordering::Relaxed));
                            if last && ok {
                                b.finish();
                            } else if last {
                                b.abandon();
                            }
                        }
                    }
                    Mode::Lines => {
                        let parts: Vec<String> = counters
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                let raw = c.raw.load(Ordering::Relaxed) as f64;
                                format!(
                                    "stripe {}: {} ({}/s)",
                                    i + 1,
                                    human(raw),
                                    human(raw / secs)
                                )
                            })
                            .collect();
                        eprintln!("{op}: {:.0}s {}", secs, parts.join(", "));
                    }
                    Mode::Json => {
                        let stripes: Vec<serde_json::Value> = counters
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                serde_json::json!({
                                    "stripe": i + 1,
                                    "raw_bytes": c.raw.load(Ordering::Relaxed),
                                    "stored_bytes": c.stored.load(Ordering::Relaxed),
                                    "done": c.done.load(Ordering::Relaxed),
                                })
                            })
                            .collect();
                        let line = serde_json::json!({
                            "event": "progress", "operation": op, "seconds": secs,
                            "final": last, "stripes": stripes,
                        });
                        let mut line = line;
                        if last {
                            line["outcome"] = serde_json::json!(if ok { "done" } else { "failed" });
                        }
                        let mut e = std::io::stderr().lock();
                        let _ = writeln!(e, "{line}");
                    }
                    Mode::Off => {}
                }
            };
            loop {
                match rx.recv_timeout(period) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => emit(false, false),
                    Ok(ok) => {
                        emit(true, ok);
                        return;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        emit(true, false);
                        return;
                    }
                }
            }
        });
        Reporter {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops reporting; `ok` says whether the operation succeeded (the final
    /// report says so, and bars of a failed one stay where they stopped).
    pub fn finish(mut self, ok: bool) {
        self.stop_now(ok);
    }

    fn stop_now(&mut self, ok: bool) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(ok);
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_now(false);
    }
}
