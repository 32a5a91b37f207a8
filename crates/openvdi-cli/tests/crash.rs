//! A backup is stored before the engine hears that it is: a manifest that cannot be
//! written fails the BACKUP (the engine's differential base does not move), and a
//! backup SIGKILLed at any instant never leaves a listed backup that fails verify;
//! the next differential still restores on its listed parent.

mod util;

use std::process::Stdio;
use std::time::Duration;

use util::{Env, Guard};

fn engine(e: &Env) -> openvdi_engine::Engine {
    openvdi_engine::Engine::open(&e.data).unwrap()
}

/// Restores `full` with NORECOVERY, then `diff`: the engine checks the diff's base.
fn restore_chain(e: &Env, full: &str, diff: &str) {
    e.json(&["restore", full, "--replace", "--norecovery"]);
    e.json(&["restore", diff]);
}

fn parent_of(e: &Env, id: &str) -> String {
    let all = e.backups();
    let m = all.iter().find(|m| m["id"] == id).unwrap();
    m["chain"]["parent"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_manifest_that_cannot_be_stored_fails_the_backup_and_moves_nothing() {
    let e = Env::new();
    engine(&e).create_database("dur", 4 << 20).unwrap();
    let full = e.json(&["backup", "dur"]);
    let full_id = full["id"].as_str().unwrap().to_string();
    engine(&e).modify("dur", 8).unwrap();

    // A full whose manifest cannot be written: the tool fails the engine's
    // VDC_Complete, so the BACKUP fails and the differential base stays on `full`.
    let mut c = e.cmd(&["--json", "--quiet", "backup", "dur"]);
    c.env("OPENVDI_TEST_FAIL_MANIFEST", "1");
    let o = util::run(c);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("manifest"),
        "the error names the manifest: {v}"
    );
    assert_eq!(
        e.backups().len(),
        1,
        "a backup whose manifest failed is not listed"
    );

    // A diff taken now is based on `full` (the failed full did not become the base)
    // and restores on it.
    engine(&e).modify("dur", 8).unwrap();
    let diff = e.json(&["backup", "dur", "--type", "diff"]);
    let diff_id = diff["id"].as_str().unwrap().to_string();
    assert_eq!(parent_of(&e, &diff_id), full_id);
    restore_chain(&e, &full_id, &diff_id);
    let v = e.json(&["verify", "--all"]);
    assert_eq!(v["ok"], true, "{v}");
}

/// A small xorshift generator seeded from the clock (the seed is printed, so a
/// failing run can be replayed with CRASH_SEED).
fn rng() -> impl FnMut() -> u64 {
    let mut x: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("CRASH_SEED={x}");
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn sigkill_at_random_instants_never_lists_a_backup_that_fails_verify() {
    const RUNS: usize = 20;
    let e = Env::new();
    engine(&e).create_database("cr", 8 << 20).unwrap();
    e.json(&["backup", "cr"]);
    let mut next = rng();
    for i in 0..RUNS {
        engine(&e).modify("cr", 4).unwrap();
        let kind = if i % 2 == 0 { "full" } else { "diff" };
        let mut c = e.cmd(&["--quiet", "backup", "cr", "--type", kind, "--stripes", "2"]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let mut g = Guard(Some(c.spawn().unwrap()));
        // The instant: anywhere in a backup of this size (a few hundred ms in a
        // debug build), including after it finished.
        let at = Duration::from_micros(next() % 1_500_000);
        std::thread::sleep(at);
        let child = g.0.as_mut().unwrap();
        let _ = child.kill(); // SIGKILL (or nothing, if it already exited)
        let _ = child.wait();
        drop(g);
        // Whatever is listed verifies.
        let o = e.run(&["--json", "--quiet", "verify", "--all"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "run {i} ({kind}, killed at {at:?}): a listed backup fails verify: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // The next diff restores on its listed parent.
    engine(&e).modify("cr", 4).unwrap();
    let diff = e.json(&["backup", "cr", "--type", "diff"]);
    let diff_id = diff["id"].as_str().unwrap().to_string();
    let parent = parent_of(&e, &diff_id);
    assert!(!parent.is_empty(), "{diff}");
    restore_chain(&e, &parent, &diff_id);
}
