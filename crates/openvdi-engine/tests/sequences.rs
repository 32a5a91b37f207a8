//! Restore sequences SQL Server accepts, through `DISK` devices: full → diff → diff
//! on one base, full → log → diff → log, the real 2016 full → diff → log1 → log2
//! and SimpleBackTest full → diff1 → diff2; and what a database restored WITH
//! RECOVERY keeps (its differential base, log chain and seed), so the backups
//! taken right after a restore work and restore byte for byte.

mod common;

use common::*;
use openvdi_engine::{Engine, Execution};
use std::path::{Path, PathBuf};

fn ok(r: Execution) -> Execution {
    assert!(r.error.is_none(), "{:?}", r.error);
    r
}

fn run(e: &Engine, sql: &str) -> Execution {
    ok(e.execute_detailed(sql))
}

fn bak(d: &Path, name: &str) -> PathBuf {
    d.join(format!("{name}.bak"))
}

fn read(d: &Path, f: &str) -> Vec<u8> {
    std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
}

/// Restore `db` under the name `to` (files `to.mdf`, `to_log.ldf`) from `file`.
fn restore_as(e: &Engine, d: &Path, db: &str, to: &str, file: &Path, with: &str) -> Execution {
    e.execute_detailed(&format!(
        "RESTORE DATABASE {to} FROM DISK = '{}' WITH MOVE '{db}' TO '{}', MOVE '{db}_log' TO '{}'{with}",
        file.display(),
        d.join(format!("{to}.mdf")).display(),
        d.join(format!("{to}_log.ldf")).display(),
    ))
}

#[test]
fn full_diff_diff_and_full_log_diff_log_restore_byte_for_byte() {
    let dir = data_dir();
    let d = dir.path();
    let e = Engine::open(d).unwrap();
    e.create_database("src", 2 << 20).unwrap();
    e.modify("src", 5).unwrap();
    run(
        &e,
        &format!(
            "BACKUP DATABASE src TO DISK = '{}'",
            bak(d, "full").display()
        ),
    );
    e.modify("src", 5).unwrap();
    run(
        &e,
        &format!("BACKUP LOG src TO DISK = '{}'", bak(d, "log1").display()),
    );
    e.modify("src", 5).unwrap();
    run(
        &e,
        &format!(
            "BACKUP DATABASE src TO DISK = '{}' WITH DIFFERENTIAL",
            bak(d, "diff1").display()
        ),
    );
    e.modify("src", 5).unwrap();
    run(
        &e,
        &format!(
            "BACKUP DATABASE src TO DISK = '{}' WITH DIFFERENTIAL",
            bak(d, "diff2").display()
        ),
    );
    let at_diff2 = read(d, "src.mdf");
    e.modify("src", 5).unwrap();
    run(
        &e,
        &format!("BACKUP LOG src TO DISK = '{}'", bak(d, "log2").display()),
    );
    let at_log2 = read(d, "src.mdf");

    // full → diff1 → diff2 (same base).
    ok(restore_as(
        &e,
        d,
        "src",
        "a",
        &bak(d, "full"),
        ", NORECOVERY",
    ));
    run(
        &e,
        &format!(
            "RESTORE DATABASE a FROM DISK = '{}' WITH NORECOVERY",
            bak(d, "diff1").display()
        ),
    );
    run(
        &e,
        &format!(
            "RESTORE DATABASE a FROM DISK = '{}' WITH RECOVERY",
            bak(d, "diff2").display()
        ),
    );
    assert!(
        read(d, "a.mdf") == at_diff2,
        "full → diff1 → diff2 gives the data at diff2"
    );

    // full → log1 → diff2 (matching base) → log2.
    ok(restore_as(
        &e,
        d,
        "src",
        "b",
        &bak(d, "full"),
        ", NORECOVERY",
    ));
    run(
        &e,
        &format!(
            "RESTORE LOG b FROM DISK = '{}' WITH NORECOVERY",
            bak(d, "log1").display()
        ),
    );
    run(
        &e,
        &format!(
            "RESTORE DATABASE b FROM DISK = '{}' WITH NORECOVERY",
            bak(d, "diff2").display()
        ),
    );
    run(
        &e,
        &format!(
            "RESTORE LOG b FROM DISK = '{}' WITH RECOVERY",
            bak(d, "log2").display()
        ),
    );
    assert!(
        read(d, "b.mdf") == at_log2,
        "full → log1 → diff2 → log2 gives the data at log2"
    );

    // A differential older than what is restored is refused (3136): diff1 after
    // diff2 would roll the database back.
    ok(restore_as(
        &e,
        d,
        "src",
        "c",
        &bak(d, "full"),
        ", NORECOVERY",
    ));
    run(
        &e,
        &format!(
            "RESTORE DATABASE c FROM DISK = '{}' WITH NORECOVERY",
            bak(d, "diff2").display()
        ),
    );
    let err = e
        .execute(&format!(
            "RESTORE DATABASE c FROM DISK = '{}' WITH NORECOVERY",
            bak(d, "diff1").display()
        ))
        .unwrap_err();
    assert_eq!(err.number(), 3136, "{err}");
}

#[test]
fn a_restored_database_keeps_its_chain_and_seed() {
    let dir = data_dir();
    let d = dir.path();
    let e = Engine::open(d).unwrap();
    e.create_database("src", 2 << 20).unwrap();
    e.modify("src", 5).unwrap();
    run(
        &e,
        &format!(
            "BACKUP DATABASE src TO DISK = '{}'",
            bak(d, "s-full").display()
        ),
    );
    ok(restore_as(&e, d, "src", "r", &bak(d, "s-full"), ""));

    // Differential and log backups right after the restore succeed.
    e.modify("r", 3).unwrap();
    run(
        &e,
        &format!(
            "BACKUP DATABASE r TO DISK = '{}' WITH DIFFERENTIAL",
            bak(d, "r-diff0").display()
        ),
    );
    run(
        &e,
        &format!("BACKUP LOG r TO DISK = '{}'", bak(d, "r-log0").display()),
    );

    // restore → full backup → modify → log backup → restore full + log: identical.
    run(
        &e,
        &format!(
            "BACKUP DATABASE r TO DISK = '{}'",
            bak(d, "r-full").display()
        ),
    );
    e.modify("r", 5).unwrap();
    run(
        &e,
        &format!("BACKUP LOG r TO DISK = '{}'", bak(d, "r-log").display()),
    );
    let want = read(d, "r.mdf");
    ok(restore_as(
        &e,
        d,
        "src",
        "q",
        &bak(d, "r-full"),
        ", NORECOVERY",
    ));
    run(
        &e,
        &format!(
            "RESTORE LOG q FROM DISK = '{}' WITH RECOVERY",
            bak(d, "r-log").display()
        ),
    );
    assert!(
        read(d, "q.mdf") == want,
        "the data file is identical to the source"
    );

    // The restored copy can go on: change, log, restore, identical again.
    e.modify("q", 4).unwrap();
    run(
        &e,
        &format!("BACKUP LOG q TO DISK = '{}'", bak(d, "q-log").display()),
    );
    let want = read(d, "q.mdf");
    ok(restore_as(
        &e,
        d,
        "src",
        "p",
        &bak(d, "r-full"),
        ", NORECOVERY",
    ));
    run(
        &e,
        &format!(
            "RESTORE LOG p FROM DISK = '{}' WITH NORECOVERY",
            bak(d, "r-log").display()
        ),
    );
    run(
        &e,
        &format!(
            "RESTORE LOG p FROM DISK = '{}' WITH RECOVERY",
            bak(d, "q-log").display()
        ),
    );
    assert!(read(d, "p.mdf") == want);
}

#[test]
fn a_log_backup_after_changing_5_pages_carries_a_few_pages() {
    let dir = data_dir();
    let d = dir.path();
    let e = Engine::open(d).unwrap();
    e.create_database("lg", 8 << 20).unwrap();
    run(
        &e,
        &format!(
            "BACKUP DATABASE lg TO DISK = '{}'",
            bak(d, "lg-full").display()
        ),
    );
    e.modify("lg", 5).unwrap();
    let r = run(
        &e,
        &format!("BACKUP LOG lg TO DISK = '{}'", bak(d, "lg-log").display()),
    );
    let rep = r.backups().next().unwrap();
    assert!(
        rep.pages <= 4,
        "{} pages for 5 changes: {}",
        rep.pages,
        rep.message
    );
    // And it restores: full + log gives the source's data file.
    let want = read(d, "lg.mdf");
    ok(restore_as(
        &e,
        d,
        "lg",
        "lh",
        &bak(d, "lg-full"),
        ", NORECOVERY",
    ));
    run(
        &e,
        &format!(
            "RESTORE LOG lh FROM DISK = '{}' WITH RECOVERY",
            bak(d, "lg-log").display()
        ),
    );
    assert!(read(d, "lh.mdf") == want);
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn restore_fixture(e: &Engine, db: &str, file: &str, with: &str) -> Execution {
    e.execute_detailed(&format!(
        "RESTORE {} {db} FROM DISK = '{}' WITH {with}",
        if file.ends_with(".trn") {
            "LOG"
        } else {
            "DATABASE"
        },
        fixture(file).display()
    ))
}

#[test]
fn real_2016_full_diff_log1_log2() {
    let dir = data_dir();
    let e = Engine::open(dir.path()).unwrap();
    ok(restore_fixture(
        &e,
        "rt",
        "sql2016-restoretimeclean-full.bak",
        "NORECOVERY",
    ));
    ok(restore_fixture(
        &e,
        "rt",
        "sql2016-restoretimeclean2-full.bak",
        "NORECOVERY",
    ));
    let mdf = read(dir.path(), "RestoreTimeClean.mdf");
    ok(restore_fixture(
        &e,
        "rt",
        "sql2016-restoretimeclean2-log1.trn",
        "NORECOVERY",
    ));
    let r = ok(restore_fixture(
        &e,
        "rt",
        "sql2016-restoretimeclean2-log2.trn",
        "RECOVERY",
    ));
    let t = texts(&r.outputs);
    assert!(
        t.iter()
            .any(|m| m.contains("reflect the differential backup")
                && m.contains("2 log backups restored after it were stored but not applied")),
        "{t:?}"
    );
    assert!(
        read(dir.path(), "RestoreTimeClean.mdf") == mdf,
        "log records of a real log are not applied: the data is the differential's"
    );
    // log1 again now is too early (4326 while restoring; the database is online).
}

#[test]
fn real_simplebacktest_full_diff1_diff2() {
    let dir = data_dir();
    let e = Engine::open(dir.path()).unwrap();
    ok(restore_fixture(
        &e,
        "sb",
        "sql2008r2-simplebacktest-full.bak",
        "NORECOVERY",
    ));
    ok(restore_fixture(
        &e,
        "sb",
        "sql2008r2-simplebacktest-diff1.bak",
        "NORECOVERY",
    ));
    ok(restore_fixture(
        &e,
        "sb",
        "sql2008r2-simplebacktest-diff2.bak",
        "RECOVERY",
    ));
    let a = read(dir.path(), "SimpleBackTest.mdf");
    // The same as full → diff2 directly: differentials are cumulative.
    let dir2 = data_dir();
    let e2 = Engine::open(dir2.path()).unwrap();
    ok(restore_fixture(
        &e2,
        "sb",
        "sql2008r2-simplebacktest-full.bak",
        "NORECOVERY",
    ));
    ok(restore_fixture(
        &e2,
        "sb",
        "sql2008r2-simplebacktest-diff2.bak",
        "RECOVERY",
    ));
    assert!(a == read(dir2.path(), "SimpleBackTest.mdf"));
    // diff1 after diff2 is refused (it lies before what is restored).
    let dir3 = data_dir();
    let e3 = Engine::open(dir3.path()).unwrap();
    ok(restore_fixture(
        &e3,
        "sb",
        "sql2008r2-simplebacktest-full.bak",
        "NORECOVERY",
    ));
    ok(restore_fixture(
        &e3,
        "sb",
        "sql2008r2-simplebacktest-diff2.bak",
        "NORECOVERY",
    ));
    let err = restore_fixture(
        &e3,
        "sb",
        "sql2008r2-simplebacktest-diff1.bak",
        "NORECOVERY",
    )
    .error
    .unwrap();
    assert_eq!(err.number(), 3136, "{err}");
}
