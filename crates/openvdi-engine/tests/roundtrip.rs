//! Round trips through VDI: create a database, back it up through 1, 4 and 16
//! devices, restore it (REPLACE, and under another name with MOVE) and compare the
//! files byte for byte; differential and log backups restored in order; restores
//! out of order refused with SQL Server's reasons.

mod common;

use common::*;
use openvdi::vdc;
use openvdi_engine::{BackupKind, Engine, Execution};

/// Run `sql` in this process while `client` serves the devices.
fn run(engine: &Engine, sql: &str) -> Execution {
    engine.execute_detailed(sql)
}

/// Back up `db` through `n` devices; returns the per-device streams.
fn backup(engine: &Engine, db: &str, n: usize, with: &str) -> (Execution, Vec<Vec<u8>>) {
    let c = Client::start("bk", n, ClientOpts::default(), vec![]);
    let sql = format!(
        "BACKUP DATABASE [{db}] TO {} {with}",
        device_clause(&c.devices)
    );
    let r = run(engine, &sql);
    let (cfg, logs) = c.finish();
    assert!(cfg.is_ok());
    if r.error.is_none() {
        for l in &logs {
            assert_eq!(l.end, Some(Ok(())), "every device ends with VD_E_CLOSE");
            assert_eq!(
                l.commands.last(),
                Some(&vdc::VDC_Flush),
                "a backup ends with VDC_Flush"
            );
            // Writes are MAXTRANSFERSIZE (default 1 MiB), the last one shorter.
            if let Some((_, head)) = l.sizes.split_last() {
                assert!(head.iter().all(|&x| x == 1 << 20), "{:?}", l.sizes);
            }
        }
    }
    (r, logs.into_iter().map(|l| l.data).collect())
}

fn backup_log(engine: &Engine, db: &str) -> (Execution, Vec<Vec<u8>>) {
    let c = Client::start("bl", 1, ClientOpts::default(), vec![]);
    let r = run(
        engine,
        &format!("BACKUP LOG [{db}] TO {}", device_clause(&c.devices)),
    );
    let (_, logs) = c.finish();
    (r, logs.into_iter().map(|l| l.data).collect())
}

/// Restore from `streams` with the statement `head … FROM <devices> tail`.
fn restore(engine: &Engine, head: &str, tail: &str, streams: Vec<Vec<u8>>) -> Execution {
    let n = streams.len();
    let c = Client::start("rs", n, ClientOpts::default(), streams);
    let r = run(
        engine,
        &format!("{head} FROM {} {tail}", device_clause(&c.devices)),
    );
    let (cfg, _logs) = c.finish();
    assert!(cfg.is_ok());
    r
}

fn files(engine: &Engine, db: &str) -> (Vec<u8>, Vec<u8>) {
    let d = engine.dir_path();
    (
        std::fs::read(d.join(format!("{db}.mdf"))).unwrap(),
        std::fs::read(d.join(format!("{db}_log.ldf"))).unwrap(),
    )
}

trait DirPath {
    fn dir_path(&self) -> std::path::PathBuf;
}
impl DirPath for Engine {
    fn dir_path(&self) -> std::path::PathBuf {
        self.data_dir().to_path_buf()
    }
}

#[test]
fn full_backup_restore_through_1_4_16_devices() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("src", 4 << 20).unwrap();
    e.modify("src", 20).unwrap();
    for n in [1usize, 4, 16] {
        let (r, streams) = backup(&e, "src", n, "WITH CHECKSUM, STATS = 50");
        assert!(r.error.is_none(), "{:?}", r.error);
        let rep = r.backups().next().unwrap();
        assert_eq!(rep.kind, BackupKind::Full);
        assert_eq!(rep.family_count, n as u32);
        assert!(
            rep.message
                .starts_with("BACKUP DATABASE successfully processed"),
            "{}",
            rep.message
        );
        let msgs = texts(&r.outputs);
        assert!(
            msgs.iter()
                .any(|m| m
                    .starts_with("Processed 512 pages for database 'src', file 'src' on file 1.")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m == "50 percent processed."),
            "{msgs:?}"
        );
        let want = files(&e, "src");

        // Under another name with MOVE.
        let other = format!("copy{n}");
        let dp = d.path().join(format!("{other}.mdf"));
        let lp = d.path().join(format!("{other}_log.ldf"));
        let r = restore(
            &e,
            &format!("RESTORE DATABASE [{other}]"),
            &format!(
                "WITH STATS = 50, MOVE 'src' TO '{}', MOVE 'src_log' TO '{}'",
                dp.display(),
                lp.display()
            ),
            streams.clone(),
        );
        assert!(r.error.is_none(), "{:?}", r.error);
        let msgs = texts(&r.outputs);
        assert!(
            msgs.iter().any(|m| m == "100 percent processed."),
            "{msgs:?}"
        );
        assert_eq!(files(&e, &other), want, "restored files are byte-identical");
        assert!(e.database_info(&other).unwrap().state == openvdi_engine::catalog::DbState::Online);

        // Over the original with REPLACE.
        e.modify("src", 3).unwrap();
        let r = restore(&e, "RESTORE DATABASE src", "WITH REPLACE", streams);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(files(&e, "src"), want);
    }
}

#[test]
fn restore_without_replace_or_move_is_refused() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("a", 1 << 20).unwrap();
    let (r, streams) = backup(&e, "a", 1, "");
    assert!(r.error.is_none());
    let r = restore(&e, "RESTORE DATABASE a", "", streams.clone());
    let err = r.error.unwrap();
    assert_eq!(err.number(), 3159, "{err}");
    assert!(err.has(3013));
    // Another name without MOVE: the files belong to 'a'.
    let r = restore(&e, "RESTORE DATABASE b", "", streams);
    let err = r.error.unwrap();
    assert!(err.has(1834) && err.has(3156) && err.has(3013), "{err}");
}

#[test]
fn differential_and_log_chain_in_order() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("c", 2 << 20).unwrap();
    let (r, full) = backup(&e, "c", 2, "");
    assert!(r.error.is_none(), "{:?}", r.error);
    let full_rep = r.backups().next().unwrap().clone();
    e.modify("c", 10).unwrap();
    let (r, log1) = backup_log(&e, "c");
    assert!(r.error.is_none(), "{:?}", r.error);
    e.modify("c", 7).unwrap();
    let (r, diff) = backup(&e, "c", 1, "WITH DIFFERENTIAL");
    assert!(r.error.is_none(), "{:?}", r.error);
    let diff_rep = r.backups().next().unwrap().clone();
    assert_eq!(diff_rep.kind, BackupKind::Differential);
    assert_eq!(diff_rep.database_backup_lsn, full_rep.checkpoint_lsn);
    assert_eq!(
        diff_rep.differential_base_lsn,
        Some(full_rep.checkpoint_lsn)
    );
    e.modify("c", 5).unwrap();
    let (r, log2) = backup_log(&e, "c");
    assert!(r.error.is_none(), "{:?}", r.error);
    let log2_rep = r.backups().next().unwrap().clone();
    let want = files(&e, "c");

    let mv = |db: &str| {
        format!(
            "MOVE 'c' TO '{}', MOVE 'c_log' TO '{}'",
            d.path().join(format!("{db}.mdf")).display(),
            d.path().join(format!("{db}_log.ldf")).display()
        )
    };
    // Full + diff + log2.
    let r = restore(
        &e,
        "RESTORE DATABASE r1",
        &format!("WITH NORECOVERY, {}", mv("r1")),
        full.clone(),
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    let r = restore(&e, "RESTORE DATABASE r1", "WITH NORECOVERY", diff.clone());
    assert!(r.error.is_none(), "{:?}", r.error);
    let r = restore(&e, "RESTORE LOG r1", "WITH RECOVERY", log2.clone());
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        files(&e, "r1"),
        want,
        "full + diff + log reproduce the database"
    );

    // Full + log1 + log2 (logs only).
    let r = restore(
        &e,
        "RESTORE DATABASE r2",
        &format!("WITH NORECOVERY, {}", mv("r2")),
        full.clone(),
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    // Out of order: log2 before log1.
    let r = restore(&e, "RESTORE LOG r2", "WITH NORECOVERY", log2.clone());
    let err = r.error.unwrap();
    assert_eq!(err.number(), 4305, "{err}");
    assert!(err.messages[0]
        .text
        .contains(&log2_rep.first_lsn.to_string()));
    assert!(err.has(3013));
    let r = restore(&e, "RESTORE LOG r2", "WITH NORECOVERY", log1.clone());
    assert!(r.error.is_none(), "{:?}", r.error);
    // log1 again: too early.
    let r = restore(&e, "RESTORE LOG r2", "WITH NORECOVERY", log1.clone());
    assert_eq!(r.error.unwrap().number(), 4326);
    let r = restore(&e, "RESTORE LOG r2", "WITH NORECOVERY", log2);
    assert!(r.error.is_none(), "{:?}", r.error);
    let r = e.execute_detailed("RESTORE DATABASE r2 WITH RECOVERY");
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        files(&e, "r2"),
        want,
        "full + log + log reproduce the database"
    );

    // A differential onto a recovered database, or without its full: 3117.
    let r = restore(&e, "RESTORE DATABASE r2", "", diff.clone());
    assert_eq!(r.error.unwrap().number(), 3117);
    let r = restore(&e, "RESTORE DATABASE nobase", "", diff);
    assert_eq!(r.error.unwrap().number(), 3117);
    // A log onto a database that is not restoring: 3117.
    let r = restore(&e, "RESTORE LOG r1", "", log1);
    assert_eq!(r.error.unwrap().number(), 3117);
}

#[test]
fn differential_on_the_wrong_full_is_refused() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("w", 1 << 20).unwrap();
    let (_, full1) = backup(&e, "w", 1, "");
    e.modify("w", 3).unwrap();
    let (r, _full2) = backup(&e, "w", 1, "");
    assert!(r.error.is_none());
    e.modify("w", 3).unwrap();
    let (r, diff) = backup(&e, "w", 1, "WITH DIFFERENTIAL");
    assert!(r.error.is_none());
    let r = restore(&e, "RESTORE DATABASE w", "WITH REPLACE, NORECOVERY", full1);
    assert!(r.error.is_none(), "{:?}", r.error);
    let r = restore(&e, "RESTORE DATABASE w", "", diff);
    let err = r.error.unwrap();
    assert_eq!(err.number(), 3136, "{err}");
}

#[test]
fn chain_errors_before_any_transfer() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("n", 1 << 20).unwrap();
    // No full yet: no differential, no log (the engine refuses before opening the set).
    let err = e
        .execute("BACKUP DATABASE n TO VIRTUAL_DEVICE='x' WITH DIFFERENTIAL")
        .unwrap_err();
    assert_eq!(err.number(), 3035);
    let err = e.execute("BACKUP LOG n TO VIRTUAL_DEVICE='x'").unwrap_err();
    assert_eq!(err.number(), 4214);
    let err = e
        .execute("BACKUP DATABASE nope TO VIRTUAL_DEVICE='x'")
        .unwrap_err();
    assert_eq!(err.number(), 911);
    assert!(err.has(3013));
    assert_eq!(
        err.messages.last().unwrap().text,
        "BACKUP DATABASE is terminating abnormally."
    );
}

#[test]
fn copy_only_does_not_move_the_chain() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("k", 1 << 20).unwrap();
    let (r, _) = backup(&e, "k", 1, "");
    let full = r.backups().next().unwrap().clone();
    let (r, _) = backup(&e, "k", 1, "WITH COPY_ONLY");
    let copy = r.backups().next().unwrap().clone();
    assert!(copy.copy_only);
    e.modify("k", 2).unwrap();
    let (r, _) = backup(&e, "k", 1, "WITH DIFFERENTIAL");
    let diff = r.backups().next().unwrap().clone();
    assert_eq!(diff.database_backup_lsn, full.checkpoint_lsn);
    assert_eq!(
        diff.differential_base_guid.as_deref(),
        Some(full.backup_set_guid.as_str())
    );
}

#[test]
fn no_client_means_cannot_open_backup_device() {
    let d = data_dir();
    let e = Engine::open(d.path())
        .unwrap()
        .with_open_timeout(std::time::Duration::from_millis(200));
    e.create_database("t", 1 << 20).unwrap();
    let err = e
        .execute(&format!(
            "BACKUP DATABASE t TO VIRTUAL_DEVICE='{}'",
            set_name("none")
        ))
        .unwrap_err();
    assert_eq!(err.number(), 3201, "{err}");
    assert!(
        err.to_string().contains("0x80770003"),
        "VD_E_TIMEOUT: {err}"
    );
}

#[test]
fn device_count_mismatch_is_refused_and_the_client_aborted() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("t", 1 << 20).unwrap();
    let c = Client::start("dc", 2, ClientOpts::default(), vec![]);
    let err = e
        .execute(&format!("BACKUP DATABASE t TO VIRTUAL_DEVICE='{}'", c.name))
        .unwrap_err();
    assert_eq!(err.number(), 3201, "{err}");
    let (cfg, _) = c.finish();
    assert_eq!(cfg.unwrap_err(), openvdi::HResult::VD_E_ABORT);
}
