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

/// Kills per campaign: `CRASH_RUNS`, 50 by default (the issue's figure).
fn runs() -> usize {
    std::env::var("CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

/// `--engine-cmd` for the external engine (openvdi-sqlcmd on the same data dir).
fn external(e: &Env) -> String {
    format!(
        "'{}' -S . -b --data-dir '{}' -Q {{sql}}",
        util::sqlcmd().display(),
        e.data.display()
    )
}

/// Runs `args` in its own process group and SIGKILLs the tool at `at` after the
/// start (or not at all, if it finished before). An external engine survives the
/// tool, as SQL Server would; the run is over when the whole group is gone (it
/// notices its dead client by itself), within a deadline.
fn run_and_kill(e: &Env, args: &[&str], at: Duration) -> Duration {
    use std::os::unix::process::CommandExt;
    let mut c = e.cmd(args);
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let t0 = std::time::Instant::now();
    let mut g = Guard(Some(c.spawn().unwrap()));
    let child = g.0.as_mut().unwrap();
    let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    // The instant is the experiment's variable, not a wait for a condition.
    while t0.elapsed() < at {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    let took = t0.elapsed();
    drop(g);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rustix::process::test_kill_process_group(pgid).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine of a killed run did not exit within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    took
}

/// How long an undisturbed run takes, so the kills spread over all of it.
fn duration_of(e: &Env, args: &[&str]) -> Duration {
    let t0 = std::time::Instant::now();
    e.ok(args);
    t0.elapsed()
}

fn ids(e: &Env) -> std::collections::BTreeSet<String> {
    e.backups()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

fn backup_campaign(external_engine: bool) {
    let e = Env::new();
    engine(&e).create_database("cr", 8 << 20).unwrap();
    let ext = external(&e);
    let with_engine = |args: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if external_engine {
            v.extend(["--engine-cmd".to_string(), ext.clone()]);
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let full = with_engine(&["--quiet", "backup", "cr", "--stripes", "2"]);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let span = duration_of(&e, &full);
    let mut next = rng();
    let mut listed = ids(&e);
    for i in 0..runs() {
        engine(&e).modify("cr", 4).unwrap();
        let kind = ["full", "diff", "log"][i % 3];
        let args = with_engine(&["--quiet", "backup", "cr", "--stripes", "2", "--type", kind]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Anywhere in the run, and a little after it.
        let at = Duration::from_micros(next() % (span.as_micros() as u64 * 6 / 5 + 1));
        run_and_kill(&e, &args, at);
        // Whatever the killed run left listed verifies.
        let now = ids(&e);
        for id in now.difference(&listed) {
            let o = e.run(&["--json", "--quiet", "verify", id]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "run {i} ({kind}, external {external_engine}, killed at {at:?}): \
                 listed backup {id} fails verify: {}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        listed = now;
    }
    // The next diff restores on its listed parent.
    engine(&e).modify("cr", 4).unwrap();
    let diff = e.json(&["backup", "cr", "--type", "diff"]);
    let diff_id = diff["id"].as_str().unwrap().to_string();
    let parent = parent_of(&e, &diff_id);
    assert!(!parent.is_empty(), "{diff}");
    restore_chain(&e, &parent, &diff_id);
}

#[test]
fn backup_sigkilled_at_random_instants_never_lists_a_backup_that_fails_verify() {
    backup_campaign(false);
}

#[test]
fn backup_through_an_external_engine_sigkilled_at_random_instants() {
    backup_campaign(true);
}

fn data_of(e: &Env, db: &str) -> Option<(openvdi_engine::catalog::DbState, Vec<u8>)> {
    let info = engine(e).database_info(db).ok()?;
    let bytes = std::fs::read(&info.files[0].path).unwrap_or_default();
    Some((info.state, bytes))
}

fn restore_campaign(external_engine: bool) {
    use openvdi_engine::catalog::DbState;
    let e = Env::new();
    engine(&e).create_database("rr", 8 << 20).unwrap();
    engine(&e).modify("rr", 40).unwrap();
    let id = e.json(&["backup", "rr", "--stripes", "2"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, backed_up) = data_of(&e, "rr").unwrap();
    let ext = external(&e);
    let mut args: Vec<&str> = Vec::new();
    if external_engine {
        args.extend(["--engine-cmd", ext.as_str()]);
    }
    args.extend(["--quiet", "restore", id.as_str(), "--replace"]);
    engine(&e).modify("rr", 40).unwrap();
    let span = duration_of(&e, &args);
    let mut next = rng();
    for i in 0..runs() {
        // The live database differs from the backup before every kill.
        engine(&e).modify("rr", 40).unwrap();
        let (_, live) = data_of(&e, "rr").unwrap();
        assert_ne!(live, backed_up);
        let at = Duration::from_micros(next() % (span.as_micros() as u64 * 6 / 5 + 1));
        run_and_kill(&e, &args, at);
        match data_of(&e, "rr") {
            Some((DbState::Online, now)) => assert!(
                now == live || now == backed_up,
                "run {i} (external {external_engine}, killed at {at:?}): the database is \
                 ONLINE with files that match neither its state before nor the backup"
            ),
            Some((DbState::Restoring, _)) => {}
            None => panic!("run {i}: the database is gone from the catalog"),
        }
        // Finish the job undisturbed: the backup restores whatever the kill left.
        e.ok(&args);
        assert_eq!(
            data_of(&e, "rr").unwrap(),
            (DbState::Online, backed_up.clone())
        );
    }
}

#[test]
fn restore_replace_sigkilled_at_random_instants_never_leaves_a_wrong_online_database() {
    restore_campaign(false);
}

#[test]
fn restore_through_an_external_engine_sigkilled_at_random_instants() {
    restore_campaign(true);
}
