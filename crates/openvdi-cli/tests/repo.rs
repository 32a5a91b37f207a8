//! Repository behaviour through the real binary, without an engine: import and
//! export of real SQL Server backups, verification, exit codes, the lock, prune.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{fixtures, sha, Env, Guard};

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

#[test]
fn usage_and_missing_repository_exit_codes() {
    let e = Env::uninitialised();
    e.expect(&["backup"], 2);
    e.expect(&["backup", "db", "--compress", "gzip"], 2);
    e.expect(&["backup", "db", "--stripes", "0"], 2);
    e.expect(&["prune", "--keep-last", "0"], 2);
    e.expect(&["list"], 10);
    let o = e.run(&["--json", "list"]);
    assert_eq!(o.status.code(), Some(10));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error_kind"], "repository_missing");
    e.expect(&["verify", "latest"], 10);
    e.expect(&["restore", "latest"], 10);
}

#[test]
fn import_then_export_is_byte_identical_for_every_codec() {
    let e = Env::new();
    for codec in ["none", "zstd:1", "lz4"] {
        let v = e.json(&[
            "import",
            &fixture("sql2008r2-stripe-2of2.bak"),
            &fixture("sql2008r2-stripe-1of2.bak"),
            "--compress",
            codec,
            "--database",
            "RestoreTimeStripe",
        ]);
        assert_eq!(v["stripes"].as_array().unwrap().len(), 2);
        let id = v["id"].as_str().unwrap().to_string();
        let out = e.dir.path().join(format!("export-{codec}"));
        let x = e.json(&["export", &id, out.to_str().unwrap()]);
        let files: Vec<String> = x["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        assert_eq!(files.len(), 2);
        let mut got: Vec<String> = files.iter().map(|f| sha(f.as_ref())).collect();
        let mut want = vec![
            sha(&fixtures().join("sql2008r2-stripe-1of2.bak")),
            sha(&fixtures().join("sql2008r2-stripe-2of2.bak")),
        ];
        got.sort();
        want.sort();
        assert_eq!(got, want, "{codec}");
    }
    assert_eq!(e.backups().len(), 3);
}

#[test]
fn verify_finds_a_flipped_byte_in_any_stripe() {
    let e = Env::new();
    let v = e.json(&[
        "import",
        &fixture("sql2008r2-stripe-1of2.bak"),
        &fixture("sql2008r2-stripe-2of2.bak"),
        "--compress",
        "zstd:1",
        "--database",
        "RestoreTimeStripe",
    ]);
    let id = v["id"].as_str().unwrap().to_string();
    for s in v["stripes"].as_array().unwrap() {
        let path = std::path::Path::new(&e.repo).join(s["key"].as_str().unwrap());
        let good = std::fs::read(&path).unwrap();
        for at in [0, 20, good.len() / 3, good.len() - 10] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let o = e.run(&["--json", "verify", &id]);
            assert_eq!(
                o.status.code(),
                Some(3),
                "flip at {at} of {}",
                path.display()
            );
            let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(r["ok"], false);
            assert_eq!(e.run(&["verify", "--all"]).status.code(), Some(3));
        }
        std::fs::write(&path, &good).unwrap();
    }
    let r = e.json(&["verify", &id]);
    assert_eq!(r["ok"], true);
}

#[test]
fn a_held_lock_exits_11_and_a_dead_holder_does_not_block() {
    let e = Env::new();
    e.ok(&[
        "import",
        &fixture("sql2008r2-db1-log.trn"),
        "--database",
        "db1",
        "--type",
        "log",
    ]);
    let lockfile = std::path::Path::new(&e.repo).join(".openvdi.lock");
    // Another process holds the lock (flock(1) keeps it while `cat` waits on stdin).
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&lockfile)
        .arg("-c")
        .arg("echo locked; exec cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let g = Guard(Some(holder));
    e.expect(&["prune", "--keep-last", "1"], 11);
    e.expect(
        &[
            "import",
            &fixture("sql2008r2-db1-log.trn"),
            "--database",
            "db1",
        ],
        11,
    );
    // Killed holder: the kernel drops the lock; the next run just works.
    drop(g);
    e.ok(&["prune", "--keep-last", "1"]);
    let _ = Duration::ZERO;
}

#[test]
fn prune_is_a_dry_run_unless_confirmed() {
    let e = Env::new();
    for _ in 0..3 {
        e.ok(&[
            "import",
            &fixture("sql2008r2-db2-full.bak"),
            "--database",
            "db2",
            "--type",
            "full",
            "--compress",
            "lz4",
        ]);
    }
    e.ok(&[
        "import",
        &fixture("sql2008r2-db2-diff.bak"),
        "--database",
        "db2",
        "--type",
        "diff",
    ]);
    let all = e.backups();
    assert_eq!(all.len(), 4);
    assert_eq!(
        all[3]["chain"]["parent"], all[2]["id"],
        "diff chains to the newest full"
    );
    let dry = e.json(&["prune", "--keep-last", "1"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["delete"].as_array().unwrap().len(), 2);
    assert_eq!(e.backups().len(), 4);
    let done = e.json(&["prune", "--keep-last", "1", "--confirm"]);
    assert_eq!(done["delete"].as_array().unwrap().len(), 2);
    let left = e.backups();
    assert_eq!(left.len(), 2);
    assert_eq!(left[0]["id"], all[2]["id"]);
    // Nothing but the kept backups' objects remain.
    let mut files = 0;
    for entry in walk(std::path::Path::new(&e.repo)) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if name != "openvdi-config.json" && name != ".openvdi.lock" {
            files += 1;
        }
    }
    assert_eq!(
        files,
        2 * 3,
        "two backups, one stripe + one manifest + one id reservation each"
    );
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn repositories_are_created_on_purpose_and_only_backup_demo_creates_demo() {
    // A location the user named must be created with `init`: a typo is exit 10.
    let e = Env::uninitialised();
    let o = e.run(&["--json", "backup", "demo"]);
    assert_eq!(o.status.code(), Some(10), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("openvdi init"), "{v}");
    assert!(
        !std::path::Path::new(&e.repo).exists(),
        "nothing was created"
    );
    assert!(!e.data.join("demo.mdf").exists(), "no demo either");
    // init refuses an unrelated non-empty folder unless forced, then backup works.
    std::fs::create_dir_all(&e.repo).unwrap();
    std::fs::write(std::path::Path::new(&e.repo).join("notes.txt"), b"mine").unwrap();
    e.expect(&["init"], 2);
    e.ok(&["init", "--force"]);
    let v = e.json(&["init"]);
    assert_eq!(v["created"], false);
    e.json(&["backup", "demo"]);
    assert_eq!(e.backups().len(), 1);

    // The default repository (no --repo anywhere) is created by the first backup.
    let d = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_openvdi"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OPENVDI_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", d.path())
        .env("XDG_CONFIG_HOME", d.path().join("config"))
        .env("XDG_DATA_HOME", d.path().join("data"))
        .args(["--quiet", "backup", "demo"]);
    // Without a password it is not created in the clear: exit 12, nothing written.
    let o = util::run({
        let mut c2 = Command::new(env!("CARGO_BIN_EXE_openvdi"));
        c2.envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))));
        for (k, _) in std::env::vars() {
            if k.starts_with("OPENVDI_") {
                c2.env_remove(k);
            }
        }
        c2.args(["--quiet", "backup", "demo"])
            .stdin(std::process::Stdio::null());
        c2
    });
    assert_eq!(o.status.code(), Some(12), "{o:?}");
    assert!(!d.path().join("data/openvdi-repo").exists());
    c.env("OPENVDI_PASSWORD", util::PASSWORD)
        .env("OPENVDI_KDF_MEMORY_MIB", "8")
        .env("OPENVDI_KDF_ITERATIONS", "1");
    let o = util::run(c);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(d
        .path()
        .join("data/openvdi-repo/openvdi-config.json")
        .is_file());

    // restore and inspect on an empty data directory never create `demo`.
    let f = Env::new();
    let imported = f.json(&[
        "import",
        &fixture("sql2008r2-db2-full.bak"),
        "--database",
        "db2",
    ]);
    let id = imported["id"].as_str().unwrap();
    f.json(&["inspect", id]);
    let _ = f.run(&["restore", id]);
    let names: Vec<String> = std::fs::read_dir(&f.data)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !names.iter().any(|n| n.starts_with("demo")),
        "demo was created: {names:?}"
    );
}

#[test]
fn real_backups_imported_in_any_order_chain_by_lsn_per_server() {
    let e = Env::new();
    // (fixture, chain name) in an order that is neither time nor chain order.
    let files = [
        ("sql2016-restoretimeclean2-log2.trn", "c_log2"),
        ("sql2008r2-simplebacktest-diff2.bak", "s_diff2"),
        ("sql2008r2-dbareports-log1.trn", "d_log1"),
        // Named "full", but a differential on restoretimeclean-full (fixture README).
        ("sql2016-restoretimeclean2-full.bak", "c_diff"),
        ("sql2016-restoretimeclean-full.bak", "c_full"),
        ("sql2008r2-simplebacktest-diff1.bak", "s_diff1"),
        ("sql2008r2-dbareports-log2.trn", "d_log2"),
        ("sql2016-restoretimeclean2-log1.trn", "c_log1"),
        ("sql2008r2-simplebacktest-full.bak", "s_full"),
        ("sql2008r2-dbareports-full.bak", "d_full"),
    ];
    let mut id_of = std::collections::HashMap::new();
    // The same real backups again as a second server's: same database names, same
    // LSNs; they must never chain or prune with the first server's.
    for server in ["srv1", "srv2"] {
        for (f, name) in files {
            let v = e.json(&["--server", server, "import", &fixture(f)]);
            id_of.insert(
                format!("{server}/{name}"),
                v["id"].as_str().unwrap().to_string(),
            );
        }
    }
    let list = e.json(&["list"]);
    let backups = list["backups"].as_array().unwrap();
    let taken: Vec<&str> = backups
        .iter()
        .map(|b| b["taken"].as_str().unwrap())
        .collect();
    let mut sorted = taken.clone();
    sorted.sort();
    assert_eq!(taken, sorted, "list is in backup-time order");
    let parent = |key: &str| {
        let id = &id_of[key];
        let b = backups.iter().find(|b| b["id"] == id.as_str()).unwrap();
        assert!(b.get("flag").is_none(), "{key} flagged: {b}");
        b["chain"]["parent"].as_str().map(String::from)
    };
    for server in ["srv1", "srv2"] {
        let k = |n: &str| format!("{server}/{n}");
        let id = |n: &str| Some(id_of[&k(n)].clone());
        assert_eq!(parent(&k("c_full")), None);
        assert_eq!(parent(&k("c_diff")), id("c_full"));
        // The first log after the diff continues the diff's LSNs.
        assert_eq!(parent(&k("c_log1")), id("c_diff"));
        assert_eq!(parent(&k("c_log2")), id("c_log1"));
        assert_eq!(parent(&k("s_diff1")), id("s_full"));
        assert_eq!(parent(&k("s_diff2")), id("s_full"));
        assert_eq!(parent(&k("d_log1")), id("d_full"));
        assert_eq!(parent(&k("d_log2")), id("d_log1"));
    }
    // latest:DB is the newest by backup time, not the last imported.
    let latest = e.json(&["inspect", "latest:RestoreTimeClean"]);
    assert_eq!(latest["header"][0]["BackupType"], "2");
    // prune --keep-last 1 keeps each server's one chain whole.
    e.json(&["prune", "--keep-last", "1", "--confirm"]);
    assert_eq!(e.backups().len(), 20, "every backup is in a kept chain");
}
