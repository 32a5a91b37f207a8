//! Real SQL Server backups (`tests/fixtures/mssql/`, copied from the shared fixtures) through the virtual-device
//! path: HEADERONLY / FILELISTONLY report what the fixtures' README lists, every
//! stream walks (VERIFYONLY), the full backups restore with every data page at its
//! place, the two stripes restore together and one alone is refused.

mod common;

use common::*;
use openvdi_engine::page::{self, PAGE_SIZE};
use openvdi_engine::{Engine, Execution, ResultSet};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Run `head FROM <devices> tail` with a client feeding `streams`.
fn with_streams(e: &Engine, head: &str, tail: &str, streams: Vec<Vec<u8>>) -> Execution {
    let c = Client::start("fx", streams.len(), ClientOpts::default(), streams);
    let r = e.execute_detailed(&format!("{head} FROM {} {tail}", device_clause(&c.devices)));
    let (cfg, logs) = c.finish();
    assert!(cfg.is_ok());
    if r.error.is_none() {
        for l in &logs {
            assert_eq!(
                l.end,
                Some(Ok(())),
                "the engine closed every device normally"
            );
        }
    }
    r
}

fn one_set(r: &Execution) -> ResultSet {
    assert!(r.error.is_none(), "{:?}", r.error);
    r.result_sets().next().expect("a result set").clone()
}

struct Expect {
    file: &'static str,
    database: &'static str,
    server: Option<&'static str>,
    backup_type: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const EXPECT: &[Expect] = &[
    Expect {
        file: "sql2008r2-db2-full.bak",
        database: "db2",
        server: Some("SQL2008"),
        backup_type: "1",
        files: &[
            ("FullRecoveryModel", "\\FullRecoveryModel.mdf"),
            ("FullRecoveryModel_log", "\\FullRecoveryModel_log.ldf"),
        ],
    },
    Expect {
        file: "sql2008r2-db2-diff.bak",
        database: "db2",
        server: Some("SQL2008"),
        backup_type: "5",
        files: &[
            ("FullRecoveryModel", "\\FullRecoveryModel.mdf"),
            ("FullRecoveryModel_log", "\\FullRecoveryModel_log.ldf"),
        ],
    },
    Expect {
        file: "sql2008r2-db1-log.trn",
        database: "db1",
        server: None,
        backup_type: "2",
        files: &[
            ("db1", "C:\\Move\\db1.mdf"),
            ("db1_1", "C:\\Move\\db1_1.ndf"),
            ("db1_log", "C:\\Tests\\db1_log.ldf"),
        ],
    },
    Expect {
        // The README calls this a full backup; its metadata says differential (msdb
        // type letter 'I', the differential flag, 10 extents of data).
        file: "sql2016-restoretimeclean2-full.bak",
        database: "RestoreTimeClean",
        server: Some("WIN-JNMR8KM0U3B\\SQL2016"),
        backup_type: "5",
        files: &[
            ("RestoreTimeClean", "\\RestoreTimeClean.mdf"),
            ("RestoreTimeClean_log", "\\RestoreTimeClean_log.LDF"),
        ],
    },
    Expect {
        file: "sql2016-restoretimeclean2-log1.trn",
        database: "RestoreTimeClean",
        server: Some("WIN-JNMR8KM0U3B\\SQL2016"),
        backup_type: "2",
        files: &[
            ("RestoreTimeClean", "\\RestoreTimeClean.mdf"),
            ("RestoreTimeClean_log", "\\RestoreTimeClean_log.LDF"),
        ],
    },
    Expect {
        // SQL Server 2012; its TAPE block declares a soft filemark block size of 8.
        file: "sql2012-pubs-full.bak",
        database: "pubs",
        server: None,
        backup_type: "1",
        files: &[("pubs", "pubs.mdf"), ("pubs_log", "pubs_log.ldf")],
    },
    Expect {
        file: "sql2008r2-stripe-1of2.bak",
        database: "RestoreTimeStripe",
        server: Some("CGE100LAP-42\\SQL2008R2SP2"),
        backup_type: "1",
        files: &[
            ("restoretimestripe", "\\restoretimestripe.mdf"),
            ("restoretimestripe_log", "\\restoretimestripe_log.LDF"),
        ],
    },
];

#[test]
fn headeronly_and_filelistonly_report_the_readme_metadata() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    for x in EXPECT {
        let h = one_set(&with_streams(
            &e,
            "RESTORE HEADERONLY",
            "",
            vec![fixture(x.file)],
        ));
        assert_eq!(h.get(0, "DatabaseName"), Some(x.database), "{}", x.file);
        if let Some(s) = x.server {
            assert_eq!(h.get(0, "ServerName"), Some(s), "{}", x.file);
        }
        assert_eq!(h.get(0, "BackupType"), Some(x.backup_type), "{}", x.file);
        assert!(h.get(0, "FirstLSN").is_some(), "{}", x.file);
        let f = one_set(&with_streams(
            &e,
            "RESTORE FILELISTONLY",
            "",
            vec![fixture(x.file)],
        ));
        assert_eq!(f.rows.len(), x.files.len(), "{}: {:?}", x.file, f.rows);
        for i in 0..f.rows.len() {
            assert_ne!(f.get(i, "Size"), Some("0"), "{}: file sizes", x.file);
        }
        for (i, (logical, physical)) in x.files.iter().enumerate() {
            assert_eq!(f.get(i, "LogicalName"), Some(*logical), "{}", x.file);
            let p = f.get(i, "PhysicalName").unwrap();
            assert!(
                p.ends_with(physical),
                "{}: {p} should end with {physical}",
                x.file
            );
        }
    }
}

#[test]
fn every_fixture_walks_verifyonly() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    for x in EXPECT.iter().filter(|x| !x.file.contains("stripe")) {
        let r = with_streams(&e, "RESTORE VERIFYONLY", "", vec![fixture(x.file)]);
        assert!(r.error.is_none(), "{}: {:?}", x.file, r.error);
        assert!(texts(&r.outputs)
            .iter()
            .any(|t| t == "The backup set on file 1 is valid."));
    }
    let r = with_streams(
        &e,
        "RESTORE VERIFYONLY",
        "",
        vec![
            fixture("sql2008r2-stripe-1of2.bak"),
            fixture("sql2008r2-stripe-2of2.bak"),
        ],
    );
    assert!(r.error.is_none(), "{:?}", r.error);
}

/// Every page of `path` is all zero (not in the backup) or names its own file id
/// and page number; returns how many name themselves.
fn check_pages(path: &std::path::Path, file_id: u16) -> usize {
    let data = std::fs::read(path).unwrap();
    assert!(
        data.len().is_multiple_of(PAGE_SIZE),
        "{} is whole pages",
        path.display()
    );
    let mut named = 0;
    for (i, p) in data.chunks(PAGE_SIZE).enumerate() {
        if p.iter().all(|&b| b == 0) {
            continue;
        }
        let h = page::header(p);
        assert_eq!(
            (h.file_id, h.page_id),
            (file_id, i as u32),
            "page {i} of {}",
            path.display()
        );
        named += 1;
    }
    named
}

#[test]
fn full_backup_restores_with_every_page_in_place_then_its_differential() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let mdf = d.path().join("db2r.mdf");
    let ldf = d.path().join("db2r_log.ldf");
    let r = with_streams(
        &e,
        "RESTORE DATABASE db2r",
        &format!(
            "WITH NORECOVERY, MOVE 'FullRecoveryModel' TO '{}', MOVE 'FullRecoveryModel_log' TO '{}'",
            mdf.display(),
            ldf.display()
        ),
        vec![fixture("sql2008r2-db2-full.bak")],
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    let rep = r.restores().next().unwrap();
    assert!(rep
        .message
        .starts_with("RESTORE DATABASE successfully processed"));
    // The files get the sizes FILELISTONLY reports (3 MiB and 1 MiB).
    assert_eq!(std::fs::metadata(&mdf).unwrap().len(), 3 << 20);
    assert_eq!(std::fs::metadata(&ldf).unwrap().len(), 1 << 20);
    // The log portion landed where its MSTL block says (the block of FirstLSN
    // 22:326:37: VLF 22 starts at 256 KiB, block 326 is 326 * 512 bytes into it).
    let log = std::fs::read(&ldf).unwrap();
    let at = (256 << 10) + 326 * 512;
    assert!(
        log[at..at + 512].iter().any(|&b| b != 0),
        "log block at {at}"
    );
    // 166 of the 168 pages in the stream carry headers; the two zero pages stay zero.
    assert_eq!(check_pages(&mdf, 1), 166);
    assert!(
        std::fs::metadata(&ldf).unwrap().len() > 0,
        "the log portion was written"
    );
    assert!(!rep.recovered);
    // The differential of the same database applies on top (its DatabaseBackupLSN is
    // the full's CheckpointLSN).
    let r = with_streams(
        &e,
        "RESTORE DATABASE db2r",
        "WITH RECOVERY",
        vec![fixture("sql2008r2-db2-diff.bak")],
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(check_pages(&mdf, 1) >= 166);
    assert!(r.restores().next().unwrap().recovered);
}

#[test]
fn the_two_stripes_restore_together_and_one_alone_is_refused() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let s1 = fixture("sql2008r2-stripe-1of2.bak");
    let s2 = fixture("sql2008r2-stripe-2of2.bak");
    // Either order of devices: the families are matched by number.
    for (name, streams) in [
        ("st12", vec![s1.clone(), s2.clone()]),
        ("st21", vec![s2.clone(), s1.clone()]),
    ] {
        let mdf = d.path().join(format!("{name}.mdf"));
        let ldf = d.path().join(format!("{name}_log.ldf"));
        let r = with_streams(
            &e,
            &format!("RESTORE DATABASE {name}"),
            &format!(
                "WITH MOVE 'restoretimestripe' TO '{}', MOVE 'restoretimestripe_log' TO '{}'",
                mdf.display(),
                ldf.display()
            ),
            streams,
        );
        assert!(r.error.is_none(), "{:?}", r.error);
        let n = check_pages(&mdf, 1);
        assert!(n >= 160, "{n} pages restored from both stripes");
    }
    for one in [s1, s2] {
        let r = with_streams(
            &e,
            "RESTORE DATABASE alone",
            "WITH MOVE 'restoretimestripe' TO '/tmp/x.mdf'",
            vec![one],
        );
        let err = r.error.expect("one stripe alone is refused");
        assert_eq!(err.number(), 3132, "{err}");
        assert!(err.has(3013));
    }
    assert!(!e
        .list_databases()
        .unwrap()
        .iter()
        .any(|x| x.name == "alone"));
}

#[test]
fn stripes_of_different_media_sets_are_refused() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let r = with_streams(
        &e,
        "RESTORE VERIFYONLY",
        "",
        vec![
            fixture("sql2008r2-stripe-1of2.bak"),
            fixture("sql2008r2-db2-full.bak"),
        ],
    );
    let err = r.error.unwrap();
    assert_eq!(err.number(), 3227, "{err}");
}

#[test]
fn a_differential_or_log_alone_is_refused() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let r = with_streams(
        &e,
        "RESTORE DATABASE lone",
        "",
        vec![fixture("sql2016-restoretimeclean2-full.bak")],
    );
    assert_eq!(r.error.unwrap().number(), 3117);
    let r = with_streams(
        &e,
        "RESTORE LOG lone",
        "",
        vec![fixture("sql2016-restoretimeclean2-log1.trn")],
    );
    assert_eq!(r.error.unwrap().number(), 3117);
}
