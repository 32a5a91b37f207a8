//! `DISK = 'path'` devices: the same family streams in plain files, so a backup
//! made through VDI and stored by a client restores from the file, and the real
//! fixtures can be read without a VDI client.

mod common;

use common::*;
use openvdi_engine::Engine;

#[test]
fn backup_to_disk_and_restore_from_disk_byte_identical() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("dk", 2 << 20).unwrap();
    e.modify("dk", 7).unwrap();
    let a = d.path().join("dk-a.bak");
    let b = d.path().join("dk-b.bak");
    let r = e.execute_detailed(&format!(
        "BACKUP DATABASE dk TO DISK = '{}', DISK = '{}' WITH INIT, CHECKSUM",
        a.display(),
        b.display()
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.backups().next().unwrap().family_count, 2);
    assert!(!d.path().join("dk-a.bak.partial").exists());
    // Without INIT an existing file is not appended to.
    let err = e
        .execute(&format!("BACKUP DATABASE dk TO DISK = '{}'", a.display()))
        .unwrap_err();
    assert_eq!(err.number(), 50000, "{err}");
    let r = e.execute_detailed(&format!(
        "RESTORE DATABASE dl FROM DISK = '{}', DISK = '{}' WITH MOVE 'dk' TO '{}', MOVE 'dk_log' TO '{}'",
        b.display(),
        a.display(),
        d.path().join("dl.mdf").display(),
        d.path().join("dl_log.ldf").display()
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    for (x, y) in [("dk.mdf", "dl.mdf"), ("dk_log.ldf", "dl_log.ldf")] {
        assert_eq!(
            std::fs::read(d.path().join(x)).unwrap(),
            std::fs::read(d.path().join(y)).unwrap()
        );
    }
    // One stripe alone is refused here too.
    let err = e
        .execute(&format!("RESTORE VERIFYONLY FROM DISK = '{}'", a.display()))
        .unwrap_err();
    assert_eq!(err.number(), 3132, "{err}");
}

#[test]
fn a_stream_stored_by_a_vdi_client_restores_from_the_file() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("vd", 1 << 20).unwrap();
    let c = Client::start("dk", 1, ClientOpts::default(), vec![]);
    let r = e.execute_detailed(&format!(
        "BACKUP DATABASE vd TO {}",
        device_clause(&c.devices)
    ));
    let (_, logs) = c.finish();
    assert!(r.error.is_none(), "{:?}", r.error);
    let f = d.path().join("vd.bak");
    std::fs::write(&f, &logs[0].data).unwrap();
    let r = e.execute_detailed(&format!("RESTORE VERIFYONLY FROM DISK = '{}'", f.display()));
    assert!(r.error.is_none(), "{:?}", r.error);
}

#[test]
fn real_backups_read_from_disk() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let full = fixtures().join("sql2008r2-db2-full.bak");
    let r = e.execute_detailed(&format!(
        "RESTORE HEADERONLY FROM DISK = N'{}'",
        full.display()
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        r.result_sets().next().unwrap().get(0, "DatabaseName"),
        Some("db2")
    );
    let r = e.execute_detailed(&format!(
        "RESTORE DATABASE st FROM DISK = '{}', DISK = '{}' WITH MOVE 'restoretimestripe' TO '{}', MOVE 'restoretimestripe_log' TO '{}'",
        fixtures().join("sql2008r2-stripe-2of2.bak").display(),
        fixtures().join("sql2008r2-stripe-1of2.bak").display(),
        d.path().join("st.mdf").display(),
        d.path().join("st_log.ldf").display()
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    let err = e
        .execute("RESTORE HEADERONLY FROM DISK = '/nonexistent/x.bak'")
        .unwrap_err();
    assert_eq!(err.number(), 3201, "{err}");
}

/// The differential bitmap a restore sequence leaves (collected while the pages were
/// written and redone) is the set a read of the data file finds: every page after
/// the base full's checkpoint. A differential right after the restore then holds
/// exactly those pages.
#[test]
fn a_restored_databases_changed_pages_are_those_its_data_file_says() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("cs", 4 << 20).unwrap();
    let bak = |n: &str| d.path().join(format!("cs-{n}.bak"));
    let run = |sql: String| {
        let r = e.execute_detailed(&sql);
        assert!(r.error.is_none(), "{sql}: {:?}", r.error);
    };
    run(format!(
        "BACKUP DATABASE cs TO DISK = '{}'",
        bak("full").display()
    ));
    e.modify("cs", 5).unwrap();
    run(format!(
        "BACKUP DATABASE cs TO DISK = '{}' WITH DIFFERENTIAL",
        bak("diff").display()
    ));
    e.modify("cs", 7).unwrap();
    run(format!(
        "BACKUP LOG cs TO DISK = '{}'",
        bak("log").display()
    ));
    let mv = |db: &str| {
        format!(
            "MOVE 'cs' TO '{}', MOVE 'cs_log' TO '{}'",
            d.path().join(format!("{db}.mdf")).display(),
            d.path().join(format!("{db}_log.ldf")).display()
        )
    };
    run(format!(
        "RESTORE DATABASE ct FROM DISK = '{}' WITH NORECOVERY, {}",
        bak("full").display(),
        mv("ct")
    ));
    run(format!(
        "RESTORE DATABASE ct FROM DISK = '{}' WITH NORECOVERY",
        bak("diff").display()
    ));
    let dir = openvdi_engine::db::DataDir::open(d.path()).unwrap();
    // Collected while writing, not left to a read of the file at recovery.
    let mid = dir.database("ct").unwrap();
    assert!(mid.cat.restore.as_ref().unwrap().changed.is_some());
    run(format!(
        "RESTORE LOG ct FROM DISK = '{}' WITH RECOVERY",
        bak("log").display()
    ));
    let db = dir.database("ct").unwrap();
    let base = db.cat.last_full.as_ref().unwrap().checkpoint_lsn;
    let read = db.pages_changed_after(base).unwrap();
    assert!(read.len() >= 5, "{read:?}");
    assert_eq!(db.cat.changed(), read);
    // And the source agrees: the same pages changed since its full.
    let src = dir.database("cs").unwrap();
    assert_eq!(src.cat.changed(), read);
}
