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
    server: &'static str,
    backup_type: &'static str,
    software_major: u32,
    /// (logical name, end of the physical name, FILELISTONLY Type).
    files: &'static [(&'static str, &'static str, &'static str)],
}

/// Every fixture, with what its README (and, where the README's file name misleads,
/// its own metadata) says. `sql2016-restoretimeclean2-full.bak` is a differential
/// despite its name (msdb type letter `I`; see the README).
const EXPECT: &[Expect] = &[
    Expect {
        file: "sql2008r2-db2-full.bak",
        database: "db2",
        server: "SQL2008",
        backup_type: "1",
        software_major: 10,
        files: &[
            ("FullRecoveryModel", "\\FullRecoveryModel.mdf", "D"),
            ("FullRecoveryModel_log", "\\FullRecoveryModel_log.ldf", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-db2-diff.bak",
        database: "db2",
        server: "SQL2008",
        backup_type: "5",
        software_major: 10,
        files: &[
            ("FullRecoveryModel", "\\FullRecoveryModel.mdf", "D"),
            ("FullRecoveryModel_log", "\\FullRecoveryModel_log.ldf", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-db1-log.trn",
        database: "db1",
        server: "SQL2008",
        backup_type: "2",
        software_major: 10,
        files: &[
            ("db1", "C:\\Move\\db1.mdf", "D"),
            ("db1_1", "C:\\Move\\db1_1.ndf", "D"),
            ("db1_log", "C:\\Tests\\db1_log.ldf", "L"),
        ],
    },
    Expect {
        file: "sql2016-restoretimeclean-full.bak",
        database: "RestoreTimeClean",
        server: "WIN-JNMR8KM0U3B\\SQL2016",
        backup_type: "1",
        software_major: 13,
        files: &[
            ("RestoreTimeClean", "\\RestoreTimeClean.mdf", "D"),
            ("RestoreTimeClean_log", "\\RestoreTimeClean_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2016-restoretimeclean2-full.bak",
        database: "RestoreTimeClean",
        server: "WIN-JNMR8KM0U3B\\SQL2016",
        backup_type: "5",
        software_major: 13,
        files: &[
            ("RestoreTimeClean", "\\RestoreTimeClean.mdf", "D"),
            ("RestoreTimeClean_log", "\\RestoreTimeClean_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2016-restoretimeclean2-log1.trn",
        database: "RestoreTimeClean",
        server: "WIN-JNMR8KM0U3B\\SQL2016",
        backup_type: "2",
        software_major: 13,
        files: &[
            ("RestoreTimeClean", "\\RestoreTimeClean.mdf", "D"),
            ("RestoreTimeClean_log", "\\RestoreTimeClean_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2016-restoretimeclean2-log2.trn",
        database: "RestoreTimeClean",
        server: "WIN-JNMR8KM0U3B\\SQL2016",
        backup_type: "2",
        software_major: 13,
        files: &[
            ("RestoreTimeClean", "\\RestoreTimeClean.mdf", "D"),
            ("RestoreTimeClean_log", "\\RestoreTimeClean_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-dbareports-full.bak",
        database: "dbareports",
        server: "SQL2008",
        backup_type: "1",
        software_major: 10,
        files: &[
            ("dbareports", "\\dbareports.mdf", "D"),
            ("dbareports_log", "\\dbareports_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-dbareports-log1.trn",
        database: "dbareports",
        server: "SQL2008",
        backup_type: "2",
        software_major: 10,
        files: &[
            ("dbareports", "\\dbareports.mdf", "D"),
            ("dbareports_log", "\\dbareports_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-dbareports-log2.trn",
        database: "dbareports",
        server: "SQL2008",
        backup_type: "2",
        software_major: 10,
        files: &[
            ("dbareports", "\\dbareports.mdf", "D"),
            ("dbareports_log", "\\dbareports_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-simplebacktest-full.bak",
        database: "SimpleBackTest",
        server: "CGE100LAP-42\\SQL2008R2SP2",
        backup_type: "1",
        software_major: 10,
        files: &[
            ("SimpleBackTest", "\\SimpleBackTest.mdf", "D"),
            ("SimpleBackTest_log", "\\SimpleBackTest_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-simplebacktest-diff1.bak",
        database: "SimpleBackTest",
        server: "CGE100LAP-42\\SQL2008R2SP2",
        backup_type: "5",
        software_major: 10,
        files: &[
            ("SimpleBackTest", "\\SimpleBackTest.mdf", "D"),
            ("SimpleBackTest_log", "\\SimpleBackTest_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-simplebacktest-diff2.bak",
        database: "SimpleBackTest",
        server: "CGE100LAP-42\\SQL2008R2SP2",
        backup_type: "5",
        software_major: 10,
        files: &[
            ("SimpleBackTest", "\\SimpleBackTest.mdf", "D"),
            ("SimpleBackTest_log", "\\SimpleBackTest_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2019-northwind-full.bak",
        database: "Northwind",
        server: "DESKTOP-8G1N3T8",
        backup_type: "1",
        software_major: 15,
        files: &[
            ("Northwind", "\\NORTHWND.MDF", "D"),
            ("Northwind_log", "\\NORTHWND_log.ldf", "L"),
        ],
    },
    Expect {
        file: "sql2012-pubs-full.bak",
        database: "pubs",
        server: "DESKTOP-7789AN9\\SQLEXPRESS",
        backup_type: "1",
        software_major: 11,
        files: &[
            ("pubs", "\\pubs.mdf", "D"),
            ("pubs_log", "\\pubs_log.ldf", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-stripe-1of2.bak",
        database: "RestoreTimeStripe",
        server: "CGE100LAP-42\\SQL2008R2SP2",
        backup_type: "1",
        software_major: 10,
        files: &[
            ("restoretimestripe", "\\restoretimestripe.mdf", "D"),
            ("restoretimestripe_log", "\\restoretimestripe_log.LDF", "L"),
        ],
    },
    Expect {
        file: "sql2008r2-stripe-2of2.bak",
        database: "RestoreTimeStripe",
        server: "CGE100LAP-42\\SQL2008R2SP2",
        backup_type: "1",
        software_major: 10,
        files: &[
            ("restoretimestripe", "\\restoretimestripe.mdf", "D"),
            ("restoretimestripe_log", "\\restoretimestripe_log.LDF", "L"),
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
        assert_eq!(h.get(0, "ServerName"), Some(x.server), "{}", x.file);
        assert_eq!(
            h.get(0, "SoftwareVersionMajor"),
            Some(x.software_major.to_string().as_str()),
            "{}",
            x.file
        );
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
        for (i, (logical, physical, ty)) in x.files.iter().enumerate() {
            assert_eq!(f.get(i, "LogicalName"), Some(*logical), "{}", x.file);
            assert_eq!(f.get(i, "Type"), Some(*ty), "{}: {logical}", x.file);
            let fg = if *ty == "D" { Some("PRIMARY") } else { None };
            assert_eq!(f.get(i, "FileGroupName"), fg, "{}: {logical}", x.file);
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
            &format!(
                "WITH MOVE 'restoretimestripe' TO '{}'",
                d.path().join("alone.mdf").display()
            ),
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

fn expect(file: &str) -> &'static Expect {
    EXPECT
        .iter()
        .find(|x| x.file == file)
        .expect("fixture listed")
}

/// The file a restore without MOVE puts a recorded file at: the data directory
/// plus the last component of the Windows path.
fn restored_path(d: &std::path::Path, physical_end: &str) -> std::path::PathBuf {
    d.join(physical_end.rsplit('\\').next().unwrap())
}

#[test]
fn every_full_restores_with_every_page_in_place_and_the_data_file_typed_d() {
    for file in [
        "sql2008r2-db2-full.bak",
        "sql2008r2-dbareports-full.bak",
        "sql2008r2-simplebacktest-full.bak",
        "sql2016-restoretimeclean-full.bak",
        "sql2019-northwind-full.bak",
        "sql2012-pubs-full.bak",
    ] {
        let d = data_dir();
        let e = Engine::open(d.path()).unwrap();
        let r = with_streams(&e, "RESTORE DATABASE r", "", vec![fixture(file)]);
        assert!(r.error.is_none(), "{file}: {:?}", r.error);
        assert!(r.restores().next().unwrap().recovered, "{file}");
        let x = expect(file);
        let (logical, physical, ty) = x.files[0];
        assert_eq!(ty, "D");
        let n = check_pages(&restored_path(d.path(), physical), 1);
        assert!(n >= 100, "{file}: {logical}: only {n} pages in place");
        let db = e.list_databases().unwrap();
        assert_eq!(db.len(), 1, "{file}");
    }
}

/// One walk over the fixture directory itself, so a file added there without a row
/// in `EXPECT` fails: HEADERONLY and FILELISTONLY report what the README lists,
/// VERIFYONLY and VERIFYONLY WITH CHECKSUM say the set is valid, and every full
/// backup (the two stripes together) restores with every data page in its place.
#[test]
fn every_file_of_the_fixture_directory_reads_verifies_and_restores() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .flatten()
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bak") || n.ends_with(".trn"))
        .collect();
    names.sort();
    assert_eq!(names.len(), EXPECT.len(), "{names:?}");
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let mut fulls = 0;
    for name in names.iter().filter(|n| !n.contains("stripe-2of2")) {
        let x = expect(name);
        let streams = if name.contains("stripe") {
            vec![
                fixture("sql2008r2-stripe-1of2.bak"),
                fixture("sql2008r2-stripe-2of2.bak"),
            ]
        } else {
            vec![fixture(name)]
        };
        let h = one_set(&with_streams(&e, "RESTORE HEADERONLY", "", streams.clone()));
        assert_eq!(
            (
                h.get(0, "DatabaseName"),
                h.get(0, "ServerName"),
                h.get(0, "BackupType")
            ),
            (Some(x.database), Some(x.server), Some(x.backup_type)),
            "{name}"
        );
        assert_eq!(
            h.get(0, "SoftwareVersionMajor"),
            Some(x.software_major.to_string().as_str()),
            "{name}"
        );
        let f = one_set(&with_streams(
            &e,
            "RESTORE FILELISTONLY",
            "",
            streams.clone(),
        ));
        assert_eq!(f.rows.len(), x.files.len(), "{name}");
        for (i, (logical, physical, ty)) in x.files.iter().enumerate() {
            assert_eq!(f.get(i, "LogicalName"), Some(*logical), "{name}");
            assert_eq!(f.get(i, "Type"), Some(*ty), "{name}: {logical}");
            assert!(
                f.get(i, "PhysicalName").unwrap().ends_with(physical),
                "{name}: {logical}"
            );
        }
        for tail in ["", "WITH CHECKSUM"] {
            let r = with_streams(&e, "RESTORE VERIFYONLY", tail, streams.clone());
            assert!(r.error.is_none(), "{name} {tail}: {:?}", r.error);
            assert!(
                texts(&r.outputs)
                    .iter()
                    .any(|t| t == "The backup set on file 1 is valid."),
                "{name} {tail}"
            );
        }
        if x.backup_type == "1" {
            fulls += 1;
            let rd = data_dir();
            let re = Engine::open(rd.path()).unwrap();
            let r = with_streams(&re, "RESTORE DATABASE r", "WITH CHECKSUM", streams);
            assert!(r.error.is_none(), "{name}: {:?}", r.error);
            let (logical, physical, ty) = x.files[0];
            assert_eq!(ty, "D", "{name}");
            let n = check_pages(&restored_path(rd.path(), physical), 1);
            assert!(n >= 100, "{name}: {logical}: only {n} pages in place");
        }
    }
    assert_eq!(fulls, 7, "seven full backups among the fixtures");
}

/// The log an MSTL block records, straight from the fixture's bytes: its range
/// (block-specific bytes +8/+16 after the 52-byte header) and the first
/// `end - start` bytes of its MQTL stream (after the 2-byte prefix).
fn mstl_log(bak: &[u8], block_at: usize) -> (u64, Vec<u8>) {
    let u16_at = |i: usize| u16::from_le_bytes([bak[i], bak[i + 1]]) as usize;
    let u64_at = |i: usize| u64::from_le_bytes(bak[i..i + 8].try_into().unwrap());
    assert_eq!(&bak[block_at..block_at + 4], b"MSTL");
    let (start, end) = (u64_at(block_at + 52 + 8), u64_at(block_at + 52 + 16));
    let mut at = block_at + u16_at(block_at + 8);
    loop {
        at = (at + 3) & !3;
        let len = u64_at(at + 8) as usize;
        if &bak[at..at + 4] == b"MQTL" {
            let data = &bak[at + 22 + 2..at + 22 + len];
            return (start, data[..(end - start) as usize].to_vec());
        }
        assert_ne!(
            &bak[at..at + 4],
            b"SPAD",
            "no MQTL in the block at {block_at}"
        );
        at += 22 + len;
    }
}

#[test]
fn a_wrapped_log_lands_at_the_offsets_its_blocks_record_then_the_empty_log_is_too_early() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let r = with_streams(
        &e,
        "RESTORE DATABASE dr",
        "WITH NORECOVERY",
        vec![fixture("sql2008r2-dbareports-full.bak")],
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    let ldf = d.path().join("dbareports_log.LDF");
    let before = std::fs::read(&ldf).unwrap();
    assert_eq!(before.len(), 0x90000, "the log file has its recorded size");
    // The full's own log portion went to the range its block records, and nothing
    // past it: the block's MQTL is 64 KiB, the range 0x6400..0xb000.
    let full = fixture("sql2008r2-dbareports-full.bak");
    let (at, log) = mstl_log(&full, 1712640);
    assert_eq!((at, log.len()), (0x6400, 0x4c00));
    assert_eq!(&before[at as usize..at as usize + log.len()], &log[..]);
    assert!(before[..at as usize].iter().all(|&b| b == 0));
    assert!(before[at as usize + log.len()..].iter().all(|&b| b == 0));

    let trn = fixture("sql2008r2-dbareports-log1.trn");
    let r = with_streams(&e, "RESTORE LOG dr", "WITH NORECOVERY", vec![trn.clone()]);
    assert!(r.error.is_none(), "{:?}", r.error);
    let t = texts(&r.outputs);
    assert!(
        t.iter().any(|m| m.contains("were not applied")),
        "a real log restore says its records were not applied: {t:?}"
    );
    let after = std::fs::read(&ldf).unwrap();
    assert_eq!(after.len(), before.len());
    // The log wrapped: the first block holds the file's end, the second its start.
    let mut want = before.clone();
    let blocks = [mstl_log(&trn, 6656), mstl_log(&trn, 205312)];
    assert_eq!((blocks[0].0, blocks[0].1.len()), (0x6dc00, 0x22400));
    assert_eq!(blocks[0].0 as usize + blocks[0].1.len(), after.len());
    assert_eq!((blocks[1].0, blocks[1].1.len()), (0x4000, 0xa000));
    for (at, log) in &blocks {
        want[*at as usize..*at as usize + log.len()].copy_from_slice(log);
    }
    assert!(
        after == want,
        "the log file is the full's log with exactly the recorded ranges replaced"
    );

    // log2 is empty (FirstLSN = LastLSN = log1's LastLSN): SQL Server refuses it
    // with 4326, the log terminates too early to apply.
    let r = with_streams(
        &e,
        "RESTORE LOG dr",
        "WITH RECOVERY",
        vec![fixture("sql2008r2-dbareports-log2.trn")],
    );
    let err = r.error.expect("the empty log is refused");
    assert_eq!(err.number(), 4326, "{err}");
    let r = e.execute_detailed("RESTORE DATABASE dr WITH RECOVERY");
    assert!(r.error.is_none(), "{:?}", r.error);
}

/// The data pages of a SQL Server stream: (offset in the file, page) for every
/// 8 KiB page of every MQDA stream, found by walking the blocks (soft filemark
/// size from the TAPE block).
fn mqda_pages(bak: &[u8]) -> Vec<(usize, &[u8])> {
    let u16_at = |i: usize| u16::from_le_bytes([bak[i], bak[i + 1]]) as usize;
    let u64_at = |i: usize| u64::from_le_bytes(bak[i..i + 8].try_into().unwrap()) as usize;
    let sfmb = u16_at(64).max(1) * 512;
    let mut out = Vec::new();
    let mut at = 0;
    while at + 52 <= bak.len() {
        let ty = &bak[at..at + 4];
        if ty == b"SFMB" {
            at += sfmb;
            continue;
        }
        let mut s = at + u16_at(at + 8);
        loop {
            s = (s + 3) & !3;
            let (id, len) = (&bak[s..s + 4], u64_at(s + 8));
            if id == b"MQDA" && len > 2 {
                let first = s + 22 + 2;
                for k in (0..len - 2).step_by(PAGE_SIZE) {
                    out.push((first + k, &bak[first + k..first + k + PAGE_SIZE]));
                }
            }
            s += 22 + len;
            if id == b"SPAD" {
                break;
            }
        }
        at = s;
    }
    out
}

#[test]
fn sql_server_page_checksums_pass_on_every_flagged_page_of_every_fixture() {
    let mut flagged = 0;
    for x in EXPECT {
        let bak = fixture(x.file);
        for (at, p) in mqda_pages(&bak) {
            if p[0] == 1 && page::has_checksum(p) {
                flagged += 1;
                assert!(page::checksum_ok(p), "{}: page at byte {at}", x.file);
            }
        }
    }
    // 1,558 flagged pages in the 17 fixtures (none in the 2019 Northwind backup).
    assert_eq!(flagged, 1558);
    // And the checksum is not vacuous: one flipped bit anywhere in a page fails it.
    let bak = fixture("sql2008r2-db2-full.bak");
    let (_, p) = mqda_pages(&bak)
        .into_iter()
        .find(|(_, p)| p[0] == 1 && page::has_checksum(p))
        .unwrap();
    for i in (0..PAGE_SIZE).step_by(97).filter(|i| !(60..64).contains(i)) {
        let mut q = p.to_vec();
        q[i] ^= 0x10;
        assert!(!page::checksum_ok(&q), "bit flipped at {i}");
    }
}

#[test]
fn every_fixture_verifies_with_checksum() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    for x in EXPECT.iter().filter(|x| !x.file.contains("stripe")) {
        let r = with_streams(
            &e,
            "RESTORE VERIFYONLY",
            "WITH CHECKSUM",
            vec![fixture(x.file)],
        );
        assert!(r.error.is_none(), "{}: {:?}", x.file, r.error);
    }
}

#[test]
fn a_flipped_byte_in_a_checksummed_page_is_3183_with_checksum_only() {
    let mut bak = fixture("sql2008r2-db2-full.bak");
    let (at, page_id) = mqda_pages(&bak)
        .into_iter()
        .filter(|(_, p)| p[0] == 1 && page::has_checksum(p) && page::header(p).page_id > 3)
        .map(|(at, p)| (at, page::header(p).page_id))
        .nth(5)
        .unwrap();
    bak[at + 4000] ^= 0x01;
    let want = format!("RESTORE detected an error on page (1:{page_id}) in database \"db2\" as read from the backup set.");
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let r = with_streams(&e, "RESTORE VERIFYONLY", "WITH CHECKSUM", vec![bak.clone()]);
    let err = r.error.expect("VERIFYONLY WITH CHECKSUM finds the page");
    assert_eq!(err.number(), 3183, "{err}");
    assert_eq!(err.messages[0].text, want);
    let r = with_streams(
        &e,
        "RESTORE DATABASE cs",
        "WITH CHECKSUM",
        vec![bak.clone()],
    );
    let err = r.error.expect("RESTORE WITH CHECKSUM finds the page");
    assert_eq!(err.number(), 3183, "{err}");
    assert!(err.has(3013));
    // Without CHECKSUM the restore goes through, as SQL Server's does.
    let r = with_streams(&e, "RESTORE DATABASE cs", "WITH REPLACE", vec![bak]);
    assert!(r.error.is_none(), "{:?}", r.error);
}

#[test]
fn headeronly_values_come_from_the_stream() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    let h = |file: &str| {
        one_set(&with_streams(
            &e,
            "RESTORE HEADERONLY",
            "",
            vec![fixture(file)],
        ))
    };
    let full = h("sql2008r2-db2-full.bak");
    let want = [
        ("UserName", Some("BASE\\sqlserver")),
        // The set's bytes as its second ESET block records them (where the first
        // ESET starts), not the database's size.
        ("BackupSize", Some("1459200")),
        ("BackupStartDate", Some("2017-05-18 04:17:38.000")),
        // From the trailing MSLS copy of the metadata, a second later.
        ("BackupFinishDate", Some("2017-05-18 04:17:39.000")),
        ("DatabaseCreationDate", Some("2017-02-06 11:58:24.000")),
        ("Collation", Some("SQL_Latin1_General_CP1_CI_AS")),
        ("SortOrder", Some("52")),
        ("UnicodeLocaleId", Some("1033")),
        ("UnicodeComparisonStyle", Some("196609")),
        ("SoftwareVersionBuild", Some("1600")),
        ("DatabaseVersion", Some("661")),
        // Not located in a real stream: NULL, not a constant.
        ("RecoveryModel", None),
        ("BeginsLogChain", None),
    ];
    for (c, v) in want {
        assert_eq!(full.get(0, c), v, "{c}");
    }
    for (file, user, size, finish, collation) in [
        (
            "sql2008r2-db2-diff.bak",
            "BASE\\sqlserver",
            "345088",
            "2017-05-18 04:18:19.000",
            "SQL_Latin1_General_CP1_CI_AS",
        ),
        (
            "sql2008r2-dbareports-log1.trn",
            "BASE\\sqlserver",
            "276480",
            "2017-05-18 04:18:31.000",
            "SQL_Latin1_General_CP1_CI_AS",
        ),
        (
            "sql2012-pubs-full.bak",
            "DESKTOP-7789AN9\\Uriel",
            "3309568",
            "2024-05-05 19:15:01.000",
            "Modern_Spanish_CI_AS",
        ),
        (
            "sql2008r2-simplebacktest-full.bak",
            "ADS\\COM3MOORESM",
            "1590272",
            "2018-04-06 10:30:32.000",
            "Latin1_General_CI_AS",
        ),
        (
            "sql2019-northwind-full.bak",
            "DESKTOP-8G1N3T8\\salihdemirog",
            "3963904",
            "2021-06-16 10:03:28.000",
            "SQL_Latin1_General_CP1_CI_AS",
        ),
    ] {
        let x = h(file);
        assert_eq!(x.get(0, "UserName"), Some(user), "{file}");
        assert_eq!(x.get(0, "BackupSize"), Some(size), "{file}");
        assert_eq!(x.get(0, "BackupFinishDate"), Some(finish), "{file}");
        assert_eq!(x.get(0, "Collation"), Some(collation), "{file}");
    }
    // FILELISTONLY: per-file bytes in the backup and the source block size from
    // the SFIN records (168 pages of the data file; 4096-byte sectors in 2012).
    let f = one_set(&with_streams(
        &e,
        "RESTORE FILELISTONLY",
        "",
        vec![fixture("sql2008r2-db2-full.bak")],
    ));
    assert_eq!(f.get(0, "BackupSizeInBytes"), Some("1376256"));
    assert_eq!(f.get(0, "FileGroupId"), Some("1"));
    assert_eq!(f.get(1, "FileGroupId"), Some("0"));
    assert_eq!(f.get(0, "SourceBlockSize"), Some("512"));
    let f = one_set(&with_streams(
        &e,
        "RESTORE FILELISTONLY",
        "",
        vec![fixture("sql2012-pubs-full.bak")],
    ));
    assert_eq!(f.get(0, "SourceBlockSize"), Some("4096"));
}
