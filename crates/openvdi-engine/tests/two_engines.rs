//! Two engines, each its own process on its own data directory: a restore in one
//! (under another name, with or without MOVE) never touches the other's files,
//! `drop` deletes only what its own catalog lists, and while one engine process
//! works on a database, no other engine process can write or delete its files
//! (the files' exclusive locks).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use openvdi::{ClientSet, Timeout, VdConfig};

fn exec(dir: &Path, sql: &str) -> (Option<i32>, String) {
    let (code, out, err) = ChildGuard::engine_exec(dir, sql, &[]).wait();
    (code, format!("{out}{err}"))
}

/// Content and mtime of every file under `dir`.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            (p.clone(), std::fs::read(&p).unwrap(), m.modified().unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_restore_or_drop_in_one_data_dir_never_touches_the_other() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("engine-a");
    let b = root.path().join("engine-b");
    let bak = root.path().join("a.bak");
    let (code, out) = run_engine(&a, &["create-database", "a", "--size", "2M"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = exec(
        &a,
        &format!("BACKUP DATABASE a TO DISK = '{}' WITH INIT", bak.display()),
    );
    assert_eq!(code, Some(0), "{out}");
    let before = snapshot(&a);

    // Without MOVE the recorded paths (engine A's files) give only file names:
    // the restore lands in B's data directory.
    let (code, out) = exec(
        &b,
        &format!("RESTORE DATABASE a FROM DISK = '{}'", bak.display()),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(b.join("a.mdf").is_file() && b.join("a_log.ldf").is_file());
    assert_eq!(snapshot(&a), before, "engine A's files changed");

    // Under another name, the same recorded file names are database a's in B: 1834.
    let (code, out) = exec(
        &b,
        &format!("RESTORE DATABASE a2 FROM DISK = '{}'", bak.display()),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Msg 1834"), "{out}");
    assert!(out.contains("It is being used by database 'a'"), "{out}");

    // MOVE onto engine A's files: they exist and are no file of c: refused, even
    // WITH REPLACE.
    let (code, out) = exec(
        &b,
        &format!(
            "RESTORE DATABASE c FROM DISK = '{}' WITH REPLACE, MOVE 'a' TO '{}', MOVE 'a_log' TO '{}'",
            bak.display(),
            a.join("a.mdf").display(),
            a.join("a_log.ldf").display()
        ),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Msg 3142"), "{out}");
    assert_eq!(snapshot(&a), before, "engine A's files changed");

    // AS another name with MOVE inside B works.
    let (code, out) = exec(
        &b,
        &format!(
            "RESTORE DATABASE c FROM DISK = '{}' WITH MOVE 'a' TO '{}', MOVE 'a_log' TO '{}'",
            bak.display(),
            b.join("c.mdf").display(),
            b.join("c_log.ldf").display()
        ),
    );
    assert_eq!(code, Some(0), "{out}");

    // drop removes its own files only.
    let (code, out) = run_engine(&b, &["drop", "a"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!b.join("a.mdf").exists() && !b.join("a_log.ldf").exists());
    assert!(b.join("c.mdf").is_file() && b.join("c_log.ldf").is_file());
    let (code, out) = run_engine(&b, &["drop", "c"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(snapshot(&a), before, "engine A's files changed");
    let (code, out) = run_engine(&a, &["list"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ONLINE"), "{out}");
}

#[test]
fn a_second_engine_process_cannot_write_or_drop_files_the_first_holds() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("engine-a");
    let b = root.path().join("engine-b");
    let bak = root.path().join("a.bak");
    let (code, out) = run_engine(&a, &["create-database", "a", "--size", "2M"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = exec(
        &a,
        &format!("BACKUP DATABASE a TO DISK = '{}' WITH INIT", bak.display()),
    );
    assert_eq!(code, Some(0), "{out}");
    // Engine B's catalog lists engine A's files (a copied catalog: two engines
    // configured onto the same files).
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(a.join("a.openvdi.json"), b.join("a.openvdi.json")).unwrap();
    let data_before = std::fs::read(a.join("a.mdf")).unwrap();
    let log_len = std::fs::metadata(a.join("a_log.ldf")).unwrap().len();

    // Engine A starts a backup and holds the files while it waits for the client;
    // the set's configuration arriving proves A has them (it locks before opening
    // the set).
    let name = set_name("lock");
    let set = ClientSet::create(
        &name,
        &VdConfig {
            device_count: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let holder = ChildGuard::engine_exec(
        &a,
        &format!("BACKUP DATABASE a TO VIRTUAL_DEVICE = '{name}'"),
        &[],
    );
    set.get_configuration(Timeout::from_millis(DEADLINE.as_millis() as i64))
        .expect("engine A opened the set");

    // Another process on the same data directory.
    let (code, out) = run_engine(&a, &["drop", "a"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("in use by another engine process"), "{out}");
    let (code, out) = run_engine(&a, &["modify", "a", "--pages", "3"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("in use by another engine process"), "{out}");
    // Another data directory whose catalog names the same files.
    let (code, out) = exec(
        &b,
        &format!(
            "RESTORE DATABASE a FROM DISK = '{}' WITH REPLACE",
            bak.display()
        ),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("Msg 5120") && out.contains("32(The process cannot access"),
        "{out}"
    );
    let (code, out) = exec(
        &b,
        &format!(
            "BACKUP DATABASE a TO DISK = '{}' WITH INIT",
            root.path().join("b.bak").display()
        ),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Msg 5120"), "{out}");
    let (code, out) = run_engine(&b, &["drop", "a"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(a.join("a.mdf").is_file() && a.join("a_log.ldf").is_file());
    assert_eq!(std::fs::read(a.join("a.mdf")).unwrap(), data_before);
    assert!(std::fs::metadata(a.join("a_log.ldf")).unwrap().len() >= log_len);

    // Engine A gives up (the client aborts); its locks die with the statement.
    let _ = set.signal_abort();
    let (code, out, _) = holder.wait();
    assert_eq!(code, Some(1), "{out}");
    let _ = set.close();
    let (code, out) = run_engine(&a, &["modify", "a", "--pages", "3"]);
    assert_eq!(
        code,
        Some(0),
        "the lock, not something else, refused it: {out}"
    );
}
