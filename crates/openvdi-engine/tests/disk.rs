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
