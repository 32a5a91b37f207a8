//! Crash consistency of RESTORE: a `RESTORE … WITH REPLACE` runs in its own engine
//! process and is killed with SIGKILL at random instants. After every kill the
//! catalog must say RESTORING, or ONLINE with exactly the files it had before the
//! restore (the kill came before anything was touched) or exactly the backup's
//! files (the restore had finished) — never ONLINE with anything else.
//!
//! The seed is printed; set `OPENVDI_CRASH_SEED` to replay a run.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use openvdi_engine::catalog::{Catalog, DbState};

const ROUNDS: usize = 20;

fn files(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join("cr.mdf")).unwrap(),
        std::fs::read(dir.join("cr_log.ldf")).unwrap(),
    )
}

/// xorshift64*: enough randomness for kill instants, reproducible from the seed.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn a_restore_killed_at_any_instant_is_restoring_or_consistent() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let bak = root.path().join("cr.bak");
    let (code, out) = run_engine(&dir, &["create-database", "cr", "--size", "32M"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run_engine(
        &dir,
        &[
            "exec",
            &format!("BACKUP DATABASE cr TO DISK = '{}' WITH INIT", bak.display()),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let backup_files = files(&dir);
    let restore_sql = format!(
        "RESTORE DATABASE cr FROM DISK = '{}' WITH REPLACE",
        bak.display()
    );

    // How long a whole restore takes (process start included): kills fall in
    // 0..that.
    let (code, out) = run_engine(&dir, &["modify", "cr", "--pages", "40"]);
    assert_eq!(code, Some(0), "{out}");
    let t = Instant::now();
    let (code, out, _) = ChildGuard::engine_exec(&dir, &restore_sql, &[]).wait();
    let full = t.elapsed();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        files(&dir),
        backup_files,
        "a completed restore gives the backup's files"
    );

    let seed = std::env::var("OPENVDI_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash_restore: seed {seed} (OPENVDI_CRASH_SEED), a full restore takes {full:?}");
    let mut rng = seed;
    let window = (full.as_micros() as u64).max(1);
    let (mut restoring, mut untouched, mut finished) = (0, 0, 0);
    for round in 0..ROUNDS {
        let before = Catalog::load(&dir, "cr").unwrap();
        let before_files = files(&dir);
        let child = ChildGuard::engine_exec(&dir, &restore_sql, &[]);
        let delay = Duration::from_micros(next(&mut rng) % window);
        // The sleep is the random instant of the kill itself, not a wait for a
        // condition.
        std::thread::sleep(delay);
        let mut child = child;
        if let Some(c) = child.0.as_mut() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
        let after = Catalog::load(&dir, "cr").unwrap();
        match after.state {
            DbState::Restoring => restoring += 1,
            DbState::Online => {
                let now = files(&dir);
                if now == backup_files {
                    finished += 1;
                } else {
                    assert!(
                        before.state == DbState::Online && now == before_files,
                        "seed {seed}, round {round}, kill after {delay:?}: ONLINE with files that are neither the backup's nor the previous ones"
                    );
                    untouched += 1;
                }
                // Make the next round's "before" differ from the backup again.
                let (code, out) = run_engine(&dir, &["modify", "cr", "--pages", "7"]);
                assert_eq!(code, Some(0), "{out}");
            }
        }
    }
    eprintln!(
        "crash_restore: {restoring} left RESTORING, {untouched} killed before touching anything, {finished} finished"
    );
    // Whatever the last kill left, a complete restore brings it online with the
    // backup's files.
    let (code, out, _) = ChildGuard::engine_exec(&dir, &restore_sql, &[]).wait();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(Catalog::load(&dir, "cr").unwrap().state, DbState::Online);
    assert_eq!(files(&dir), backup_files);
}
