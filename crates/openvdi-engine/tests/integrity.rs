//! The engine's own backups pass the MTF walk, and a corrupted byte in a stored
//! stream is detected on RESTORE and on VERIFYONLY — in page data (with or without
//! CHECKSUM), in a block header, or by truncation.

mod common;

use common::*;
use openvdi_engine::{Engine, Execution};

fn stored_backup(e: &Engine, with: &str) -> Vec<u8> {
    let c = Client::start("ig", 1, ClientOpts::default(), vec![]);
    let r = e.execute_detailed(&format!(
        "BACKUP DATABASE i TO {} {with}",
        device_clause(&c.devices)
    ));
    let (_, logs) = c.finish();
    assert!(r.error.is_none(), "{:?}", r.error);
    logs.into_iter().next().unwrap().data
}

fn feed(e: &Engine, sql_head: &str, tail: &str, stream: Vec<u8>) -> Execution {
    let c = Client::start("ig", 1, ClientOpts::default(), vec![stream]);
    let r = e.execute_detailed(&format!(
        "{sql_head} FROM {} {tail}",
        device_clause(&c.devices)
    ));
    let _ = c.finish();
    r
}

fn restore_tail(d: &std::path::Path) -> String {
    format!(
        "WITH MOVE 'i' TO '{}', MOVE 'i_log' TO '{}'",
        d.join("j.mdf").display(),
        d.join("j_log.ldf").display()
    )
}

/// Offset of the first data page in a stream: the MQDA data begins 512-aligned
/// after a 2-byte prefix; find the page header naming page (1:0).
fn first_page(s: &[u8]) -> usize {
    (0..s.len() - 8192)
        .step_by(512)
        .find(|&o| {
            s[o] == 1
                && s[o + 1] == 15
                && s[o + 32..o + 36] == [0, 0, 0, 0]
                && s[o + 36..o + 38] == [1, 0]
        })
        .expect("the data portion")
}

#[test]
fn own_backups_walk_and_corruption_is_detected() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("i", 2 << 20).unwrap();
    for with in ["", "WITH CHECKSUM"] {
        let good = stored_backup(&e, with);
        let r = feed(&e, "RESTORE VERIFYONLY", "", good.clone());
        assert!(r.error.is_none(), "{with}: {:?}", r.error);

        // A flipped byte inside page 10's rows.
        let mut bad = good.clone();
        let at = first_page(&good) + 10 * 8192 + 4000;
        bad[at] ^= 0x40;
        for head in ["RESTORE VERIFYONLY", "RESTORE DATABASE j"] {
            let tail = if head.contains("DATABASE") {
                restore_tail(d.path())
            } else {
                String::new()
            };
            let err = feed(&e, head, &tail, bad.clone()).error.expect("detected");
            assert_eq!(err.number(), 3183, "{with} {head}: {err}");
            assert!(err.messages[0].text.contains("(1:10)"), "{err}");
            assert!(err.has(3013));
        }

        // A flipped byte in the SSET block header.
        let mut bad = good.clone();
        bad[1536 + 20] ^= 1;
        let err = feed(&e, "RESTORE VERIFYONLY", "", bad)
            .error
            .expect("detected");
        assert_eq!(err.number(), 3189, "{err}");

        // Truncated in the middle of the data.
        let cut = good[..first_page(&good) + 5 * 8192 + 100].to_vec();
        let err = feed(&e, "RESTORE VERIFYONLY", "", cut)
            .error
            .expect("detected");
        assert_eq!(err.number(), 3241, "{err}");

        // Not MTF at all.
        let err = feed(&e, "RESTORE HEADERONLY", "", vec![0x55; 4096])
            .error
            .expect("refused");
        assert_eq!(err.number(), 3242, "{err}");
    }
    // A restore that failed leaves the database RESTORING, and it cannot be
    // recovered without a complete restore.
    let j = e.database_info("j").unwrap();
    assert_eq!(j.state, openvdi_engine::catalog::DbState::Restoring);
    let err = e.execute("RESTORE DATABASE j WITH RECOVERY").unwrap_err();
    assert_eq!(err.number(), 4333, "{err}");
    // A good backup restores over it.
    let good = stored_backup(&e, "");
    let r = feed(&e, "RESTORE DATABASE j", &restore_tail(d.path()), good);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        e.database_info("j").unwrap().state,
        openvdi_engine::catalog::DbState::Online
    );
}

#[test]
fn with_checksum_a_damaged_csum_is_detected() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("i", 1 << 20).unwrap();
    let good = stored_backup(&e, "WITH CHECKSUM");
    // The first CSUM stream follows the MQDA data; damage its value.
    let pos = good
        .windows(4)
        .position(|w| w == b"CSUM")
        .expect("a CSUM stream");
    let mut bad = good.clone();
    bad[pos + 22] ^= 0xff;
    let err = feed(&e, "RESTORE VERIFYONLY", "", bad)
        .error
        .expect("detected");
    assert_eq!(err.number(), 3189, "{err}");
    assert!(err.messages[0].text.contains("CSUM"), "{err}");
}

#[test]
fn headeronly_of_an_own_backup() {
    let d = data_dir();
    let e = Engine::open(d.path())
        .unwrap()
        .with_server_name("HOST\\INST");
    e.create_database("i", 1 << 20).unwrap();
    let s = stored_backup(
        &e,
        "WITH NAME = N'nightly', DESCRIPTION = 'd', CHECKSUM, COPY_ONLY",
    );
    let r = feed(&e, "RESTORE HEADERONLY", "", s.clone());
    let h = r.result_sets().next().expect("rows").clone();
    assert_eq!(h.get(0, "DatabaseName"), Some("i"));
    assert_eq!(h.get(0, "ServerName"), Some("HOST\\INST"));
    assert_eq!(h.get(0, "BackupName"), Some("nightly"));
    assert_eq!(h.get(0, "BackupType"), Some("1"));
    assert_eq!(h.get(0, "HasBackupChecksums"), Some("1"));
    assert_eq!(h.get(0, "IsCopyOnly"), Some("1"));
    let r = feed(&e, "RESTORE FILELISTONLY", "", s.clone());
    let f = r.result_sets().next().unwrap().clone();
    assert_eq!(f.get(0, "LogicalName"), Some("i"));
    assert_eq!(f.get(1, "LogicalName"), Some("i_log"));
    assert_eq!(f.get(1, "Type"), Some("L"));
    let r = feed(&e, "RESTORE LABELONLY", "", s);
    let l = r.result_sets().next().unwrap().clone();
    assert_eq!(l.get(0, "FamilyCount"), Some("1"));
}

#[test]
fn large_blocksize_streams_end_in_soft_filemarks() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("i", 1 << 20).unwrap();
    let s = stored_backup(&e, "WITH BLOCKSIZE = 65536, MAXTRANSFERSIZE = 131072");
    assert_eq!(s.len() % 65536, 0, "a whole number of blocks");
    // Padding is soft filemark blocks, each a valid MTF block.
    let eset = s.windows(4).rposition(|w| w == b"ESET").unwrap();
    let mut at = s[eset..].windows(4).position(|w| w == b"SFMB").unwrap() + eset;
    while at < s.len() {
        assert_eq!(&s[at..at + 4], b"SFMB", "at {at}");
        at += 512;
    }
    let r = feed(&e, "RESTORE VERIFYONLY", "WITH BLOCKSIZE = 65536", s);
    assert!(r.error.is_none(), "{:?}", r.error);
}

#[test]
fn only_file_1_exists_on_a_stream() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("i", 1 << 20).unwrap();
    let s = stored_backup(&e, "");
    let err = feed(&e, "RESTORE DATABASE k", "WITH FILE = 2", s)
        .error
        .expect("refused");
    assert_eq!(err.number(), 4038, "{err}");
}
