//! stdout for results. A closed pipe (`openvdi list | head`) ends the process quietly
//! with success, as command-line tools do.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static PRINTED: AtomicBool = AtomicBool::new(false);

/// True once a command printed its result (so `main` does not print a second JSON
/// document for the error that follows it).
pub fn printed() -> bool {
    PRINTED.load(Ordering::Relaxed)
}

fn write(s: &str) {
    PRINTED.store(true, Ordering::Relaxed);
    // The last line of defence for credentials (see `redact`).
    let s = crate::redact::scrub(s);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// One JSON document on its own line.
pub fn json(v: &serde_json::Value) {
    write(&format!("{v}\n"));
}

/// Human-readable text.
pub fn text(s: &str) {
    write(s);
    if !s.ends_with('\n') {
        write("\n");
    }
}
