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
    let e = Env::new();
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
        if name != "openvdi-repo.json" && name != ".openvdi.lock" {
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
