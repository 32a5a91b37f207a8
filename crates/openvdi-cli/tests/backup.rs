//! Backups and restores through the real binary and the embedded engine.

mod util;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use util::{fixtures, sha, wait_for, Env, Guard};

fn engine(e: &Env) -> openvdi_engine::Engine {
    openvdi_engine::Engine::open(&e.data).unwrap()
}

fn data_file(e: &Env, db: &str) -> PathBuf {
    let info = engine(e).database_info(db).unwrap();
    info.files[0].path.clone()
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_is_byte_identical_for_1_and_4_stripes_and_every_codec() {
    let e = Env::new();
    engine(&e).create_database("rt", 24 << 20).unwrap();
    let mdf = data_file(&e, "rt");
    for stripes in ["1", "4"] {
        for codec in ["none", "zstd:1", "lz4"] {
            let before = std::fs::read(&mdf).unwrap();
            let b = e.json(&["backup", "rt", "--stripes", stripes, "--compress", codec]);
            assert_eq!(
                b["stripes"].as_array().unwrap().len(),
                stripes.parse::<usize>().unwrap()
            );
            assert!(
                b["engine"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("successfully"),
                "{b}"
            );
            let id = b["id"].as_str().unwrap().to_string();
            // Change the database, then restore over it: it must come back exactly.
            engine(&e).modify("rt", 64).unwrap();
            assert_ne!(std::fs::read(&mdf).unwrap(), before);
            e.json(&["restore", &id, "--replace"]);
            assert!(
                std::fs::read(&mdf).unwrap() == before,
                "{stripes} stripe(s), {codec}: restored data file differs"
            );
            let v = e.json(&["verify", &id, "--engine"]);
            assert_eq!(v["ok"], true, "{v}");
        }
    }
    assert_eq!(e.backups().len(), 6);
}

#[test]
fn the_embedded_default_creates_demo_on_an_empty_data_dir() {
    let e = Env::new();
    let b = e.json(&["backup", "demo"]);
    assert_eq!(b["database"], "demo");
    assert_eq!(b["codec"]["name"], "zstd");
    assert!(b["raw_size"].as_u64().unwrap() > 0);
    let listed = e.backups();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], b["id"]);
    let text = e.ok(&["list"]);
    assert!(text.contains(b["id"].as_str().unwrap()));
}

#[test]
fn diff_and_log_backups_chain_and_restore_in_sequence() {
    let e = Env::new();
    engine(&e).create_database("ch", 8 << 20).unwrap();
    let mdf = data_file(&e, "ch");
    let full = e.json(&["backup", "ch", "--stripes", "2"]);
    engine(&e).modify("ch", 40).unwrap();
    let diff = e.json(&["backup", "ch", "--type", "diff"]);
    engine(&e).modify("ch", 40).unwrap();
    let log = e.json(&["backup", "ch", "--type", "log", "--compress", "lz4"]);
    let want = std::fs::read(&mdf).unwrap();
    assert_eq!(diff["chain"]["parent"], full["id"], "{diff}");
    assert!(
        log["chain"]["parent"] == full["id"] || log["chain"]["parent"] == diff["id"],
        "{log}"
    );
    assert!(diff["raw_size"].as_u64() < full["raw_size"].as_u64());
    let list = e.backups();
    let kinds: Vec<&str> = list.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "diff", "log"]);
    engine(&e).modify("ch", 10).unwrap();
    e.json(&[
        "restore",
        full["id"].as_str().unwrap(),
        "--replace",
        "--norecovery",
    ]);
    e.json(&["restore", diff["id"].as_str().unwrap(), "--norecovery"]);
    e.json(&["restore", log["id"].as_str().unwrap()]);
    assert!(
        std::fs::read(&mdf).unwrap() == want,
        "the chain restores the last state"
    );
}

#[test]
fn export_gives_native_bak_files_that_restore_and_walk() {
    let e = Env::new();
    engine(&e).create_database("ex", 8 << 20).unwrap();
    let mdf = data_file(&e, "ex");
    let before = std::fs::read(&mdf).unwrap();
    let b = e.json(&["backup", "ex", "--stripes", "2", "--compress", "zstd:1"]);
    let out = e.dir.path().join("exported");
    let x = e.json(&["export", b["id"].as_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(x["files"].as_array().unwrap().len(), 2);
    let files = files_of(&out);
    // Plain files: the engine reads their headers, and they import, verify (MTF walk
    // included) and restore like any backup.
    let mut args = vec!["inspect"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let i = e.json(&args);
    assert_eq!(i["header"][0]["DatabaseName"], "ex", "{i}");
    let mut args = vec!["import", "--compress", "none"];
    args.extend(names.iter().rev().map(String::as_str));
    let imp = e.json(&args);
    assert_eq!(imp["database"], "ex");
    assert_eq!(
        imp["type"], "full",
        "the type comes from the engine's HEADERONLY"
    );
    assert_eq!(imp["chain"]["checkpoint_lsn"], b["chain"]["checkpoint_lsn"]);
    let id = imp["id"].as_str().unwrap().to_string();
    for (s_in, s_out) in b["stripes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(imp["stripes"].as_array().unwrap())
    {
        assert_eq!(s_in["raw_size"], s_out["raw_size"]);
    }
    assert_eq!(e.json(&["verify", &id])["ok"], true);
    engine(&e).modify("ex", 30).unwrap();
    e.json(&["restore", &id, "--replace"]);
    assert!(std::fs::read(&mdf).unwrap() == before);
}

#[test]
fn import_and_inspect_real_sql_server_backups() {
    let e = Env::new();
    let fx = |n: &str| fixtures().join(n).display().to_string();
    let i = e.json(&["inspect", &fx("sql2008r2-db2-full.bak")]);
    assert_eq!(i["header"][0]["DatabaseName"], "db2", "{i}");
    let logical: Vec<&str> = i["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["LogicalName"].as_str().unwrap())
        .collect();
    assert_eq!(logical, ["FullRecoveryModel", "FullRecoveryModel_log"]);
    let s = e.json(&[
        "inspect",
        &fx("sql2008r2-stripe-2of2.bak"),
        &fx("sql2008r2-stripe-1of2.bak"),
    ]);
    assert_eq!(s["header"][0]["DatabaseName"], "RestoreTimeStripe");
    // One stripe alone, or stripes of different backups, are refused.
    e.expect(&["inspect", &fx("sql2008r2-stripe-1of2.bak")], 3);
    e.expect(
        &[
            "import",
            &fx("sql2008r2-stripe-1of2.bak"),
            &fx("sql2008r2-db2-full.bak"),
        ],
        3,
    );
    // The backup type of these real SQL Server backups is given explicitly: the
    // engine's reading of their (undocumented) metadata is not the subject here, and
    // the flag is how a user corrects it. Types read from HEADERONLY are checked on
    // the engine's own backups (export_gives_native_bak_files_that_restore_and_walk).
    for (f, db, kind) in [
        ("sql2008r2-db2-full.bak", "db2", "full"),
        ("sql2008r2-db2-diff.bak", "db2", "diff"),
        ("sql2008r2-db1-log.trn", "db1", "log"),
        (
            "sql2016-restoretimeclean2-full.bak",
            "RestoreTimeClean",
            "full",
        ),
    ] {
        let flags = ["--type", kind];
        let fx_f = fx(f);
        let mut args = vec!["import", fx_f.as_str()];
        args.extend_from_slice(&flags);
        let v = e.json(&args);
        assert_eq!(
            (v["database"].as_str().unwrap(), v["type"].as_str().unwrap()),
            (db, kind),
            "{f}"
        );
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(e.json(&["verify", &id])["ok"], true);
        let out = e.dir.path().join(format!("x-{db}-{kind}"));
        let x = e.json(&["export", &id, out.to_str().unwrap()]);
        assert_eq!(
            sha(x["files"][0].as_str().unwrap().as_ref()),
            sha(&fixtures().join(f))
        );
    }
    let v = e.json(&[
        "import",
        &fx("sql2008r2-stripe-2of2.bak"),
        &fx("sql2008r2-stripe-1of2.bak"),
    ]);
    assert_eq!(v["stripes"].as_array().unwrap().len(), 2);
    let diff = e
        .backups()
        .into_iter()
        .find(|b| b["type"] == "diff")
        .unwrap();
    let full = e
        .backups()
        .into_iter()
        .find(|b| b["database"] == "db2" && b["type"] == "full")
        .unwrap();
    assert_eq!(diff["chain"]["parent"], full["id"]);
    // A real SQL Server full backup restores through the engine from the repository.
    let id = full["id"].as_str().unwrap().to_string();
    let moves = [
        format!("FullRecoveryModel={}", e.dir.path().join("r.mdf").display()),
        format!(
            "FullRecoveryModel_log={}",
            e.dir.path().join("r_log.ldf").display()
        ),
    ];
    e.json(&[
        "restore", &id, "--as", "db2copy", "--move", &moves[0], "--move", &moves[1],
    ]);
    assert!(e.dir.path().join("r.mdf").is_file());
}

/// A backup big and slow enough to interrupt (zstd at its slowest level).
fn start_slow_backup(e: &Env, db: &str) -> Guard {
    let mut c = e.cmd(&[
        "--quiet",
        "backup",
        db,
        "--stripes",
        "2",
        "--compress",
        "zstd:19",
    ]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    Guard(Some(c.spawn().unwrap()))
}

/// Stripe objects still being written (hidden `.stripeN…partial-PID-N` files).
fn partial_files(repo: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), n);
                } else if e.file_name().to_string_lossy().starts_with(".stripe")
                    && e.file_name().to_string_lossy().contains(".partial-")
                {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(repo, &mut n);
    n
}

#[test]
fn kill_9_mid_backup_leaves_nothing_listed_and_the_next_run_succeeds() {
    let e = Env::new();
    engine(&e).create_database("big", 256 << 20).unwrap();
    let repo = PathBuf::from(&e.repo);
    let mut g = start_slow_backup(&e, "big");
    // Kill it once stripe data is being written.
    wait_for("stripe data to arrive", Duration::from_secs(120), || {
        partial_files(&repo) > 0
    });
    let child = g.0.as_mut().unwrap();
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL
    let st = child.wait().unwrap();
    assert_eq!(st.code(), None, "killed by a signal");
    assert!(
        e.backups().is_empty(),
        "an interrupted backup is never listed"
    );
    let shm_of_killed = || {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .filter(|f| {
                f.file_name()
                    .to_string_lossy()
                    .contains(&format!(".openvdi-{pid}-"))
            })
            .count()
    };
    assert!(shm_of_killed() > 0, "a killed client cannot unlink its set");
    // The next run is not blocked (no stale lock), succeeds, and removes the dead
    // process's shared memory.
    let b = e.json(&["backup", "big", "--compress", "lz4"]);
    assert_eq!(shm_of_killed(), 0);
    assert_eq!(e.backups().len(), 1);
    assert_eq!(e.json(&["verify", b["id"].as_str().unwrap()])["ok"], true);
    // prune clears what the killed run left, once it is older than the grace period.
    assert!(partial_files(&repo) > 0);
    let p = e.json(&["prune", "--keep-last", "1", "--confirm"]);
    assert_eq!(p["unfinished_uploads"].as_array().unwrap().len(), 0);
    assert!(p["unfinished_uploads_in_grace"].as_u64().unwrap() > 0);
    assert!(
        partial_files(&repo) > 0,
        "within the default 24 h grace: kept"
    );
    let p = e.json(&[
        "prune",
        "--keep-last",
        "1",
        "--confirm",
        "--upload-grace",
        "0s",
    ]);
    assert!(!p["unfinished_uploads"].as_array().unwrap().is_empty());
    assert_eq!(partial_files(&repo), 0);
}

#[test]
fn ctrl_c_aborts_the_set_and_exits_130() {
    let e = Env::new();
    engine(&e).create_database("int", 256 << 20).unwrap();
    let repo = PathBuf::from(&e.repo);
    let mut g = start_slow_backup(&e, "int");
    wait_for("stripe data to arrive", Duration::from_secs(120), || {
        partial_files(&repo) > 0
    });
    let pid = g.0.as_ref().unwrap().id();
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = util::wait(Guard(g.0.take()), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130));
    assert!(e.backups().is_empty());
    assert_eq!(
        partial_files(&repo),
        0,
        "the interrupted run cleaned up after itself"
    );
}

#[test]
fn a_failing_engine_statement_exits_1_with_its_message() {
    let e = Env::new();
    engine(&e).create_database("x", 8 << 20).unwrap();
    let o = e.run(&["--json", "backup", "no_such_db"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("no_such_db"), "{v}");
    assert!(e.backups().is_empty());
    // A log backup without a full one is refused by the engine, like SQL Server does.
    e.expect(&["backup", "x", "--type", "log"], 1);
}

#[test]
fn a_failed_restore_prints_the_engines_message_not_the_abort_it_caused() {
    // The engine refuses after reading the header: its device threads see the set
    // aborted before the statement's messages arrive. The error printed must be the
    // engine's Msg every time, with one stripe and with four.
    let e = Env::new();
    engine(&e).create_database("tail", 4 << 20).unwrap();
    let id = |v: serde_json::Value| v["id"].as_str().unwrap().to_string();
    for stripes in ["1", "4"] {
        let full = id(e.json(&["backup", "tail", "--stripes", stripes]));
        engine(&e).modify("tail", 3).unwrap();
        let _log1 = id(e.json(&["backup", "tail", "--type", "log", "--stripes", stripes]));
        engine(&e).modify("tail", 3).unwrap();
        let log2 = id(e.json(&["backup", "tail", "--type", "log", "--stripes", stripes]));
        let cases: [(&str, Vec<&str>); 3] = [
            // The live database's log tail was not backed up.
            ("Msg 3159", vec!["restore", &full]),
            // A MOVE of a file the backup does not have.
            (
                "Msg 3234",
                vec![
                    "restore",
                    &full,
                    "--replace",
                    "--no-verify",
                    "--move",
                    "nosuch=/nowhere/x.mdf",
                ],
            ),
            // A log that does not follow the database's restored point (log1 skipped);
            // set up by the restore of the full WITH NORECOVERY below.
            ("Msg 4305", vec!["restore", &log2]),
        ];
        for (msg, args) in &cases {
            if *msg == "Msg 4305" {
                e.json(&["restore", &full, "--replace", "--no-verify", "--norecovery"]);
            }
            for round in 0..20 {
                let mut a = vec!["--json", "--quiet"];
                a.extend(args.iter().copied());
                let o = e.run(&a);
                assert_eq!(o.status.code(), Some(1), "{o:?}");
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                let text = v["error"].as_str().unwrap();
                assert!(
                    text.contains(msg),
                    "{msg}, {stripes} stripe(s), round {round}: {text}"
                );
            }
        }
        // Back to a live database for the next stripe count.
        e.json(&["restore", &full, "--replace", "--no-verify"]);
    }
}

#[test]
fn an_external_sqlcmd_engine_backs_up_and_restores() {
    let e = Env::new();
    engine(&e).create_database("ext", 8 << 20).unwrap();
    let mdf = data_file(&e, "ext");
    let before = std::fs::read(&mdf).unwrap();
    let cmd = format!(
        "'{}' -S . -b --data-dir '{}' -Q {{sql}}",
        util::sqlcmd().display(),
        e.data.display()
    );
    let b = e.json(&[
        "--engine-cmd",
        &cmd,
        "backup",
        "ext",
        "--stripes",
        "2",
        "--compress",
        "lz4",
    ]);
    assert_eq!(b["engine"]["kind"], "external");
    assert!(
        b["engine"]["message"]
            .as_str()
            .unwrap()
            .contains("successfully processed"),
        "{b}"
    );
    engine(&e).modify("ext", 20).unwrap();
    e.json(&[
        "--engine-cmd",
        &cmd,
        "restore",
        b["id"].as_str().unwrap(),
        "--replace",
    ]);
    assert!(std::fs::read(&mdf).unwrap() == before);
    // The engine's failure text comes back, with exit 1.
    let o = e.run(&["--engine-cmd", &cmd, "backup", "missing_db"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing_db"));
}

#[test]
fn an_external_engines_backups_chain_by_the_lsns_their_streams_record() {
    // sqlcmd prints text only, so every chain fact must come from the stream itself
    // (read before the tool answers VDC_Complete) and agree with HEADERONLY.
    let e = Env::new();
    engine(&e).create_database("lsn", 8 << 20).unwrap();
    let cmd = format!(
        "'{}' -S . -b --data-dir '{}' -Q {{sql}}",
        util::sqlcmd().display(),
        e.data.display()
    );
    let mut ids = Vec::new();
    for kind in ["full", "diff", "log"] {
        engine(&e).modify("lsn", 6).unwrap();
        let b = e.json(&[
            "--engine-cmd",
            &cmd,
            "backup",
            "lsn",
            "--type",
            kind,
            "--stripes",
            "2",
        ]);
        assert_eq!(b["engine"]["kind"], "external");
        let id = b["id"].as_str().unwrap().to_string();
        util::assert_chain_matches_headeronly(&e, &b, kind);
        ids.push(id);
    }
    let parent = |id: &str| util::parent_of(&e, id);
    assert_eq!(parent(&ids[1]).as_deref(), Some(ids[0].as_str()));
    // The first log after the diff continues the diff's LSNs.
    assert_eq!(parent(&ids[2]).as_deref(), Some(ids[1].as_str()));
}

#[test]
fn flags_beat_environment_beat_the_config_file() {
    let e = Env::new();
    engine(&e).create_database("cfg", 4 << 20).unwrap();
    let conf = e.dir.path().join("openvdi.toml");
    std::fs::write(&conf, "stripes = 3\ncompress = \"lz4\"\n").unwrap();
    let c = conf.to_str().unwrap();
    let b = e.json(&["--config", c, "backup", "cfg"]);
    assert_eq!(
        (b["stripes"].as_array().unwrap().len(), &b["codec"]["name"]),
        (3, &"lz4".into())
    );
    let mut cmd = e.cmd(&["--json", "--quiet", "--config", c, "backup", "cfg"]);
    cmd.env("OPENVDI_COMPRESS", "none")
        .env("OPENVDI_STRIPES", "2");
    let o = util::run(cmd);
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (b["stripes"].as_array().unwrap().len(), &b["codec"]["name"]),
        (2, &"none".into())
    );
    let mut cmd = e.cmd(&[
        "--json",
        "--quiet",
        "--config",
        c,
        "backup",
        "cfg",
        "--compress",
        "zstd:2",
    ]);
    cmd.env("OPENVDI_COMPRESS", "none");
    let o = util::run(cmd);
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["codec"], serde_json::json!({"name": "zstd", "level": 2}));
    // A typo in the file is a usage error, not a silent default.
    std::fs::write(&conf, "compres = \"lz4\"\n").unwrap();
    e.expect(&["--config", c, "list"], 2);
}

#[test]
fn json_progress_lines_on_stderr_and_one_result_on_stdout() {
    let e = Env::new();
    engine(&e).create_database("pj", 8 << 20).unwrap();
    let o = e.run(&["--json", "backup", "pj", "--stripes", "2"]);
    assert_eq!(o.status.code(), Some(0));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["ok"], true);
    let events: Vec<serde_json::Value> = String::from_utf8(o.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let last = events.last().expect("a final progress event");
    assert_eq!(last["event"], "progress");
    assert_eq!(last["final"], true);
    let moved: u64 = last["stripes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["raw_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(moved, result["raw_size"].as_u64().unwrap());
    assert_eq!(last["outcome"], "done");
    assert!(last["stripes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["done"] == true));
}

#[test]
fn an_interrupted_backups_final_progress_says_failed_not_done() {
    let e = Env::new();
    engine(&e).create_database("pi", 256 << 20).unwrap();
    let repo = PathBuf::from(&e.repo);
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut c = e.cmd(&[
        "--json",
        "backup",
        "pi",
        "--stripes",
        "2",
        "--compress",
        "zstd:19",
    ]);
    c.stdout(Stdio::null())
        .stderr(Stdio::from(err.reopen().unwrap()));
    let mut g = Guard(Some(c.spawn().unwrap()));
    wait_for("stripe data to arrive", Duration::from_secs(120), || {
        partial_files(&repo) > 0
    });
    let pid = g.0.as_ref().unwrap().id();
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = util::wait(Guard(g.0.take()), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130));
    let text = std::fs::read_to_string(err.path()).unwrap();
    let last: serde_json::Value = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "progress")
        .unwrap_or_else(|| panic!("no progress event in {text}"));
    assert_eq!(last["final"], true, "{last}");
    assert_eq!(last["outcome"], "failed", "{last}");
    for s in last["stripes"].as_array().unwrap() {
        assert_eq!(s["done"], false, "{last}");
    }
}

#[test]
fn vdi_library_round_trip_with_openvdis_own_libsqlvdi() {
    let e = Env::new();
    engine(&e).create_database("vl", 16 << 20).unwrap();
    let mdf = data_file(&e, "vl");
    let before = std::fs::read(&mdf).unwrap();
    let lib = util::libsqlvdi();
    let l = lib.to_str().unwrap();
    let b = e.json(&[
        "--vdi-library",
        l,
        "backup",
        "vl",
        "--stripes",
        "4",
        "--compress",
        "zstd:1",
    ]);
    assert!(
        b["transport"].as_str().unwrap().contains("libsqlvdi.so"),
        "{b}"
    );
    let id = b["id"].as_str().unwrap().to_string();
    engine(&e).modify("vl", 32).unwrap();
    e.json(&["--vdi-library", l, "restore", &id, "--replace"]);
    assert!(std::fs::read(&mdf).unwrap() == before);
    assert_eq!(
        e.json(&["--vdi-library", l, "verify", &id, "--engine"])["ok"],
        true
    );
    // A library without the C API is refused before anything happens.
    let o = e.run(&["--vdi-library", "/nonexistent/libsqlvdi.so", "backup", "vl"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(e.backups().len(), 1);
}

#[test]
fn tds_engine_reports_an_unreachable_server() {
    let e = Env::new();
    // A loopback port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ado = format!("server=tcp:127.0.0.1,{port};user=sa;password=x;TrustServerCertificate=true");
    let o = e.run(&["--tds", &ado, "backup", "db", "--open-timeout", "5"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!Path::new(&e.repo).join("openvdi-repo.json").exists() || e.backups().is_empty());
}

#[test]
fn restore_as_a_new_name_relocates_the_files_and_leaves_the_source_untouched() {
    let e = Env::new();
    engine(&e).create_database("src", 4 << 20).unwrap();
    let src = data_file(&e, "src");
    let before = std::fs::read(&src).unwrap();
    let id = e.json(&["backup", "src"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // No --move: the files go next to the data directory's others, named after NAME.
    e.json(&["restore", &id, "--as", "copy"]);
    let info = engine(&e).database_info("copy").unwrap();
    let paths: Vec<PathBuf> = info.files.iter().map(|f| f.path.clone()).collect();
    let data = std::fs::canonicalize(&e.data).unwrap();
    assert_eq!(
        paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap())
            .collect::<Vec<_>>(),
        vec![data.join("copy.mdf"), data.join("copy_log.ldf")]
    );
    assert_eq!(std::fs::read(&paths[0]).unwrap(), before);
    assert_eq!(
        std::fs::read(&src).unwrap(),
        before,
        "the source is untouched"
    );
    // A relative --move is made absolute before the engine (and its catalog) sees it.
    let mut c = e.cmd(&[
        "--json",
        "restore",
        &id,
        "--as",
        "rel",
        "--move",
        "src=rel.mdf",
    ]);
    c.current_dir(e.dir.path());
    let o = util::run(c);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let rel = engine(&e).database_info("rel").unwrap();
    assert!(rel.files[0].path.is_absolute(), "{:?}", rel.files[0].path);
    assert_eq!(rel.files[0].path, e.dir.path().join("rel.mdf"));
    assert!(rel.files[1].path.ends_with("rel_log.ldf"));
}

#[test]
fn a_damaged_backup_never_replaces_the_live_database() {
    let e = Env::new();
    engine(&e).create_database("live", 4 << 20).unwrap();
    let b = e.json(&["backup", "live", "--compress", "none"]);
    engine(&e).modify("live", 10).unwrap();
    let mdf = data_file(&e, "live");
    let before = std::fs::read(&mdf).unwrap();
    // One flipped byte in the middle of the stored stripe.
    let key = b["stripes"][0]["key"].as_str().unwrap();
    let stripe = Path::new(&e.repo).join(key);
    let mut bytes = std::fs::read(&stripe).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&stripe, bytes).unwrap();
    let o = e.run(&["--json", "restore", b["id"].as_str().unwrap(), "--replace"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("not touched"), "{v}");
    let info = engine(&e).database_info("live").unwrap();
    assert_eq!(info.state, openvdi_engine::catalog::DbState::Online);
    assert_eq!(
        std::fs::read(&mdf).unwrap(),
        before,
        "the live database is untouched"
    );
}
