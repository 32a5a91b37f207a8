//! Every real SQL Server backup of `tests/fixtures/mssql` through the real `openvdi`
//! binary: `import` (database and type read from the file by the engine, no flags),
//! `verify` (the stored stripes and their MTF walk) and `verify --engine` (RESTORE
//! VERIFYONLY through virtual devices). And password-protected media: a clear
//! error without its passwords, `--media-password-file` / `--backup-password-file` to
//! give them.

mod util;

use std::collections::BTreeMap;
use std::path::PathBuf;

use util::{fixtures, Env};

/// What each fixture is, by its README (and, where its name misleads, by its own
/// metadata: `sql2016-restoretimeclean2-full.bak` is a differential).
fn expected(name: &str) -> (&'static str, &'static str) {
    match name {
        "sql2008r2-db2-full.bak" => ("db2", "full"),
        "sql2008r2-db2-diff.bak" => ("db2", "diff"),
        "sql2008r2-db1-log.trn" => ("db1", "log"),
        "sql2016-restoretimeclean-full.bak" => ("RestoreTimeClean", "full"),
        "sql2016-restoretimeclean2-full.bak" => ("RestoreTimeClean", "diff"),
        "sql2016-restoretimeclean2-log1.trn" | "sql2016-restoretimeclean2-log2.trn" => {
            ("RestoreTimeClean", "log")
        }
        "sql2008r2-dbareports-full.bak" => ("dbareports", "full"),
        "sql2008r2-dbareports-log1.trn" | "sql2008r2-dbareports-log2.trn" => ("dbareports", "log"),
        "sql2008r2-simplebacktest-full.bak" => ("SimpleBackTest", "full"),
        "sql2008r2-simplebacktest-diff1.bak" | "sql2008r2-simplebacktest-diff2.bak" => {
            ("SimpleBackTest", "diff")
        }
        "sql2019-northwind-full.bak" => ("Northwind", "full"),
        "sql2012-pubs-full.bak" => ("pubs", "full"),
        "sql2008r2-stripe-1of2.bak" | "sql2008r2-stripe-2of2.bak" => ("RestoreTimeStripe", "full"),
        other => panic!("{other}: a fixture this test does not know; add it to the table"),
    }
}

#[test]
fn every_fixture_imports_and_verifies() {
    let e = Env::new();
    // One backup per group: the two stripes together, every other file alone.
    let mut groups: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in std::fs::read_dir(fixtures()).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".bak") || name.ends_with(".trn")) {
            continue;
        }
        let key = match name.split_once("-stripe-") {
            Some((stem, _)) => format!("{stem}-stripe"),
            None => name.clone(),
        };
        groups.entry(key).or_default().push(f.path());
    }
    assert_eq!(
        groups.values().map(Vec::len).sum::<usize>(),
        17,
        "the fixture directory holds 17 backups"
    );
    for (key, files) in &groups {
        let first = files[0].file_name().unwrap().to_string_lossy().into_owned();
        let (db, kind) = expected(&first);
        let mut args = vec!["import".to_string()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = e.json(&a);
        assert_eq!(
            (v["database"].as_str(), v["type"].as_str()),
            (Some(db), Some(kind)),
            "{key}: {v}"
        );
        assert_eq!(v["stripes"].as_array().unwrap().len(), files.len(), "{key}");
        let id = v["id"].as_str().unwrap().to_string();
        let s = e.json(&["verify", &id]);
        assert_eq!(s["ok"], true, "{key}: {s}");
        let s = e.json(&["verify", "--engine", &id]);
        assert_eq!(s["ok"], true, "{key}: {s}");
        let engine_msg = s["backups"][0]["stripes"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|x| x["engine"].as_str())
            .unwrap_or_default()
            .to_string();
        assert!(engine_msg.contains("is valid"), "{key}: {s}");
    }
    assert_eq!(e.backups().len(), groups.len());
}

#[test]
fn protected_media_gives_a_clear_error_and_takes_password_files() {
    let e = Env::new();
    // A real backup with its TAPE block's password algorithm set (outside the
    // header checksum): SQL Server's hash is undocumented, so it cannot be opened.
    let mut b = std::fs::read(fixtures().join("sql2008r2-db1-log.trn")).unwrap();
    b[62..64].copy_from_slice(&1u16.to_le_bytes());
    let foreign = e.dir.path().join("protected.trn");
    std::fs::write(&foreign, &b).unwrap();
    for cmd in ["inspect", "import"] {
        let o = e.run(&[cmd, foreign.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.contains("Access is denied due to a password failure")
                && err.contains("password-protected")
                && err.contains("--media-password-file"),
            "{cmd}: {err}"
        );
    }
    assert!(e.backups().is_empty(), "nothing imported");

    // The engine's own protected media: refused without the passwords, read with them.
    let eng = openvdi_engine::Engine::open(&e.data).unwrap();
    eng.create_database("sec", 1 << 20).unwrap();
    let own = e.dir.path().join("sec.bak");
    eng.execute(&format!(
        "BACKUP DATABASE sec TO DISK = '{}' WITH INIT, MEDIAPASSWORD = 'media pw 1', PASSWORD = 'set pw 2'",
        own.display()
    ))
    .unwrap();
    let mpf = e.dir.path().join("media.pw");
    let spf = e.dir.path().join("set.pw");
    std::fs::write(&mpf, "media pw 1\n").unwrap();
    std::fs::write(&spf, "set pw 2\n").unwrap();
    let own_s = own.to_str().unwrap();
    let o = e.run(&["inspect", own_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--backup-password-file"));
    let (mp, sp) = (mpf.to_str().unwrap(), spf.to_str().unwrap());
    let i = e.json(&[
        "--media-password-file",
        mp,
        "--backup-password-file",
        sp,
        "inspect",
        own_s,
    ]);
    assert_eq!(i["header"][0]["DatabaseName"], "sec", "{i}");
    let v = e.json(&[
        "--media-password-file",
        mp,
        "--backup-password-file",
        sp,
        "import",
        own_s,
    ]);
    let id = v["id"].as_str().unwrap().to_string();
    // The stored bytes walk without a password; the engine's VERIFYONLY needs them.
    assert_eq!(e.json(&["verify", &id])["ok"], true);
    let o = e.run(&["--json", "verify", "--engine", &id]);
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("3279"));
    let s = e.json(&[
        "--media-password-file",
        mp,
        "--backup-password-file",
        sp,
        "verify",
        "--engine",
        &id,
    ]);
    assert_eq!(s["ok"], true, "{s}");
    // The passwords never appear in what the tool prints.
    let o = e.run(&["--media-password-file", mp, "verify", "--engine", &id]);
    for out in [&o.stdout, &o.stderr] {
        let t = String::from_utf8_lossy(out);
        assert!(!t.contains("media pw 1") && !t.contains("set pw 2"), "{t}");
    }
    // A missing or empty password file is a usage error.
    std::fs::write(&spf, "").unwrap();
    e.expect(&["--backup-password-file", sp, "inspect", own_s], 2);
    e.expect(
        &[
            "--backup-password-file",
            "/nonexistent/pw",
            "inspect",
            own_s,
        ],
        2,
    );
}
