//! A repository whose manifests were written by someone else: keys that are
//! absolute, climb out with `..`, name another backup's objects or are overlong;
//! ids and names with `/`, `..` or control characters; an edited field under a
//! checksum. Every command runs on it; a sentinel tree beside the repository (files
//! a vulnerable build would read, delete or overwrite) must come through unchanged,
//! each hostile backup fails with exit 3, and the real backups keep being served.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use util::{sha, Env};

/// Every file under `root`: content hash and mtime.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, std::time::SystemTime)> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, (String, std::time::SystemTime)>) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(&e.path(), out);
            } else {
                let md = fs::symlink_metadata(e.path()).unwrap();
                out.insert(e.path(), (sha(&e.path()), md.modified().unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

/// Writes `v` as a manifest file in format 2 (checksum of the exact body), the
/// way openvdi does, so only the content can make it damaged.
fn seal(v: &Value) -> Vec<u8> {
    let mut body = serde_json::to_vec_pretty(v).unwrap();
    body.push(b'\n');
    assert!(body.starts_with(b"{\n"));
    let sum = blake3::hash(&body).to_hex().to_string();
    let mut out = format!("{{\n  \"checksum\": \"blake3:{sum}\",\n").into_bytes();
    out.extend_from_slice(&body[2..]);
    out
}

/// The stored body of a real manifest (checksum line removed), as JSON.
fn read_manifest(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    assert_eq!(first, "{");
    let (sum, rest) = rest.split_once('\n').unwrap();
    assert!(sum.contains("\"checksum\": \"blake3:"), "{sum}");
    serde_json::from_str(&format!("{{\n{rest}")).unwrap()
}

struct Hostile {
    /// The folder name (what a user would pass as the backup's id).
    folder: String,
    why: &'static str,
}

#[test]
fn hostile_manifests_touch_nothing_outside_and_the_rest_is_served() {
    // Unencrypted: the test edits manifests by hand (an encrypted repository refuses
    // any edit outright: tests/encryption.rs).
    let e = Env::plain();
    let eng = openvdi_engine::Engine::open(&e.data).unwrap();
    eng.create_database("ha", 4 << 20).unwrap();
    eng.create_database("hb", 4 << 20).unwrap();
    drop(eng);
    let a = e.json(&["backup", "ha", "--stripes", "2", "--compress", "zstd:1"]);
    let b = e.json(&["backup", "hb", "--compress", "lz4"]);
    let a_id = a["id"].as_str().unwrap().to_string();
    let b_id = b["id"].as_str().unwrap().to_string();
    let repo = PathBuf::from(&e.repo);
    let a_key = a["stripes"][0]["key"].as_str().unwrap().to_string();
    let a_dir = a_key.rsplit_once('/').unwrap().0.to_string();
    let (a_kind_dir, _) = a_dir.rsplit_once('/').unwrap();
    let a_kind_dir = a_kind_dir.to_string();
    let b_key = b["stripes"][0]["key"].as_str().unwrap().to_string();
    let base = read_manifest(&repo.join(&a_dir).join("manifest.json"));

    // The sentinel tree: copies of a real stripe (so a build that reads them would
    // *pass* verification), a file where a hostile export would land.
    let sentinel = e.dir.path().join("sentinel");
    fs::create_dir_all(sentinel.join("deep")).unwrap();
    for n in ["abs.bak.zst", "dd.bak.zst", "deep/nested.bak.zst"] {
        fs::copy(repo.join(&a_key), sentinel.join(n)).unwrap();
    }
    fs::write(
        sentinel.join("exp.bak"),
        b"sentinel: must not be overwritten",
    )
    .unwrap();
    fs::write(sentinel.join("exp_1of2.bak"), b"sentinel 2").unwrap();
    let abs_key = sentinel.join("abs.bak.zst").display().to_string();

    // Hostile manifests, each in the folder its own fields would place it in when
    // that is a path at all; all dated before the real backups, so a vulnerable
    // `prune --keep-last 1` would pick them.
    let mut hostile: Vec<Hostile> = Vec::new();
    let mut plant = |folder: &str, edit: &dyn Fn(&mut Value), why: &'static str, raw: bool| {
        let mut v = base.clone();
        let id = folder.to_string();
        v["id"] = json!(id);
        v["timings"]["started"] = json!("2020-01-01T00:00:00Z");
        v["timings"]["finished"] = json!("2020-01-01T00:00:01Z");
        edit(&mut v);
        let dir = repo.join(&a_kind_dir).join(folder);
        fs::create_dir_all(&dir).unwrap();
        let bytes = if raw {
            let mut v1 = v.clone();
            v1["format"] = json!(1);
            serde_json::to_vec_pretty(&v1).unwrap()
        } else {
            seal(&v)
        };
        fs::write(dir.join("manifest.json"), bytes).unwrap();
        hostile.push(Hostile {
            folder: folder.to_string(),
            why,
        });
    };
    let one_stripe = |v: &mut Value, key: &str| {
        let mut s = v["stripes"][0].clone();
        s["key"] = json!(key);
        v["stripes"] = json!([s]);
    };
    plant(
        "ha_FULL_20200101_000001",
        &|v| one_stripe(v, &abs_key),
        "absolute key",
        false,
    );
    plant(
        "ha_FULL_20200101_000002",
        &|v| one_stripe(v, "../sentinel/dd.bak.zst"),
        "../ key",
        false,
    );
    plant(
        "ha_FULL_20200101_000003",
        &|v| {
            let dir = format!("{a_kind_dir}/ha_FULL_20200101_000003");
            one_stripe(
                v,
                &format!("{dir}/../../../../sentinel/deep/nested.bak.zst"),
            )
        },
        "../ inside the own prefix",
        false,
    );
    plant(
        "ha_FULL_20200101_000004",
        &|v| one_stripe(v, &b_key),
        "another backup's key",
        false,
    );
    plant(
        "ha_FULL_20200101_000005",
        &|v| {
            let dir = format!("{a_kind_dir}/ha_FULL_20200101_000005");
            one_stripe(v, &format!("{dir}/{}", "s".repeat(5000)))
        },
        "overlong key",
        false,
    );
    plant(
        "ha_FULL_20200101_000006",
        &|v| one_stripe(v, &a_key),
        "the same key as a real backup, format 1 (no checksum)",
        true,
    );
    plant(
        "evil_id_dotdot",
        &|v| v["id"] = json!("../sentinel/exp"),
        "id with ../",
        false,
    );
    plant(
        "evil_id_slash",
        &|v| v["id"] = json!("x/../../../../sentinel/exp"),
        "id with /../..",
        false,
    );
    plant(
        "evil_id_nul",
        &|v| v["id"] = json!("ha\u{0}FULL"),
        "id with NUL",
        false,
    );
    plant(
        "evil_db_nul",
        &|v| v["database"] = json!("h\u{0}a"),
        "database name with NUL",
        false,
    );
    plant(
        "evil_server_ctl",
        &|v| v["server"] = json!("s\u{1b}[2J"),
        "server name with a control character",
        false,
    );
    // A real backup's manifest with one field edited after it was sealed.
    let edited_dir = repo.join(&a_kind_dir).join("ha_FULL_20200101_000007");
    fs::create_dir_all(&edited_dir).unwrap();
    {
        let mut v = base.clone();
        v["id"] = json!("ha_FULL_20200101_000007");
        // Fix the stripe keys to live in this folder, seal, then edit a field.
        let stripes: Vec<Value> = v["stripes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let mut s = s.clone();
                let name = s["key"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string();
                fs::copy(
                    repo.join(s["key"].as_str().unwrap()),
                    edited_dir.join(&name),
                )
                .unwrap();
                s["key"] = json!(format!("{a_kind_dir}/ha_FULL_20200101_000007/{name}"));
                s
            })
            .collect();
        v["stripes"] = json!(stripes);
        let sealed = String::from_utf8(seal(&v)).unwrap();
        assert!(sealed.contains("\"database\": \"ha\""));
        let edited = sealed.replace("\"database\": \"ha\"", "\"database\": \"hz\"");
        fs::write(edited_dir.join("manifest.json"), edited).unwrap();
        hostile.push(Hostile {
            folder: "ha_FULL_20200101_000007".into(),
            why: "edited database name under a checksum",
        });
    }
    // That same manifest, sealed unedited, is accepted (the test's sealing is right).
    {
        let ok_dir = repo.join(&a_kind_dir).join("ha_FULL_20200101_000008");
        fs::create_dir_all(&ok_dir).unwrap();
        let mut v = read_manifest(&edited_dir.join("manifest.json"));
        v["database"] = json!("ha");
        // Older than the real `ha` full: `prune --keep-last 1` deletes this one.
        v["timings"]["started"] = json!("2021-01-01T00:00:00Z");
        v["id"] = json!("ha_FULL_20200101_000008");
        for s in v["stripes"].as_array_mut().unwrap() {
            let name = s["key"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            fs::copy(edited_dir.join(&name), ok_dir.join(&name)).unwrap();
            s["key"] = json!(format!("{a_kind_dir}/ha_FULL_20200101_000008/{name}"));
        }
        fs::write(ok_dir.join("manifest.json"), seal(&v)).unwrap();
    }
    let sealed_ok = "ha_FULL_20200101_000008";
    // A valid manifest whose stripe files are symbolic links to the sentinel copies:
    // the keys are fine, the objects are not (never followed out of the repository).
    {
        let folder = "ha_FULL_20200101_000009";
        let dir = repo.join(&a_kind_dir).join(folder);
        fs::create_dir_all(&dir).unwrap();
        let mut v = read_manifest(&edited_dir.join("manifest.json"));
        v["database"] = json!("ha");
        v["id"] = json!(folder);
        let mut s0 = v["stripes"][0].clone();
        let name = s0["key"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        std::os::unix::fs::symlink(sentinel.join("abs.bak.zst"), dir.join(&name)).unwrap();
        s0["key"] = json!(format!("{a_kind_dir}/{folder}/{name}"));
        v["stripes"] = json!([s0]);
        fs::write(dir.join("manifest.json"), seal(&v)).unwrap();
    }
    let symlinked = "ha_FULL_20200101_000009";

    let top = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = d
            .read_dir()
            .unwrap()
            .map(|s| s.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "export")
            .collect();
        v.sort();
        v
    };
    let top_before = top(e.dir.path());
    let outside = e.dir.path().join("sentinel");
    let before = snapshot(&outside);
    let repo_before = snapshot(&repo);
    let check_outside = |what: &str| {
        assert_eq!(
            snapshot(&outside),
            before,
            "{what} touched the sentinel tree"
        );
    };

    // list: the real backups (and the well-sealed copy), every hostile one damaged.
    let l = e.json(&["list"]);
    let ids: Vec<&str> = l["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{l}");
    for id in [a_id.as_str(), b_id.as_str(), sealed_ok, symlinked] {
        assert!(ids.contains(&id), "{id} not listed: {l}");
    }
    let damaged: Vec<&str> = l["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["folder"].as_str().unwrap())
        .collect();
    for h in &hostile {
        assert!(
            damaged.contains(&h.folder.as_str()),
            "{} ({}): {l}",
            h.folder,
            h.why
        );
    }
    assert_eq!(damaged.len(), hostile.len(), "{l}");
    let text = e.ok(&["list"]);
    assert!(text.contains("DAMAGED"), "{text}");
    check_outside("list");

    // Per hostile backup: verify, inspect, export, restore exit 3.
    let export_dir = e.dir.path().join("export");
    for h in &hostile {
        e.expect(&["verify", &h.folder], 3);
        e.expect(&["inspect", &h.folder], 3);
        e.expect(&["export", &h.folder, export_dir.to_str().unwrap()], 3);
        e.expect(&["restore", &h.folder, "--replace"], 3);
        check_outside(h.why);
    }
    // Stripe objects that are symbolic links: damaged, never followed.
    e.expect(&["verify", symlinked], 3);
    e.expect(&["export", symlinked, export_dir.to_str().unwrap()], 3);
    assert_ne!(e.run(&["inspect", symlinked]).status.code(), Some(0));
    assert_ne!(
        e.run(&["restore", symlinked, "--replace"]).status.code(),
        Some(0)
    );
    check_outside("symbolic links");
    // A hostile id given verbatim is just not a backup.
    e.expect(
        &["export", "../sentinel/exp", export_dir.to_str().unwrap()],
        10,
    );
    check_outside("export by hostile id");

    // verify --all: exit 3 overall, every real backup verified OK.
    let o = e.run(&["--json", "--quiet", "verify", "--all"]);
    assert_eq!(o.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let report = v["backups"].as_array().unwrap();
    for id in [a_id.as_str(), b_id.as_str(), sealed_ok] {
        let r = report.iter().find(|r| r["backup"] == id).unwrap();
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(
        report.iter().filter(|r| r["ok"] == false).count(),
        hostile.len() + 1 // the symbolic links
    );
    check_outside("verify --all");

    // The real backups are served: export (latest, by id), inspect, restore.
    let x = e.json(&["export", "latest", export_dir.to_str().unwrap()]);
    for f in x["files"].as_array().unwrap() {
        assert!(
            Path::new(f.as_str().unwrap()).starts_with(&export_dir),
            "{x}"
        );
    }
    let x = e.json(&["export", &a_id, export_dir.to_str().unwrap()]);
    assert_eq!(x["files"].as_array().unwrap().len(), 2);
    e.json(&["inspect", &b_id]);
    e.json(&["restore", &b_id, "--replace"]);
    e.json(&["verify", sealed_ok]);
    check_outside("export/inspect/restore of real backups");
    for entry in fs::read_dir(&export_dir).unwrap() {
        let p = entry.unwrap().path();
        assert!(!p.is_dir(), "export made a directory {}", p.display());
    }

    // prune: nothing of the real backups, nothing outside, damaged folders untouched.
    let p = e.json(&["prune", "--keep-last", "1"]);
    // The older `ha` fulls go (the symbolic links themselves are removed, never
    // their targets: the sentinel check below).
    assert_eq!(p["delete"], json!([sealed_ok, symlinked]), "{p}");
    e.json(&["prune", "--keep-last", "1", "--confirm"]);
    check_outside("prune");
    let after = snapshot(&repo);
    for (path, v) in &repo_before {
        let rel = path.strip_prefix(&repo).unwrap().display().to_string();
        let in_hostile = hostile
            .iter()
            .any(|h| rel.contains(&format!("/{}/", h.folder)));
        if in_hostile || rel.starts_with(b_key.rsplit_once('/').unwrap().0) {
            assert_eq!(after.get(path), Some(v), "prune touched {rel}");
        }
    }
    e.json(&["verify", &a_id]);
    e.json(&["verify", &b_id]);
    assert_eq!(e.backups().len(), 2);
    assert_eq!(
        e.json(&["list"])["damaged"].as_array().unwrap().len(),
        hostile.len()
    );

    // import: names from the command line with path characters stay inside the
    // repository; control characters are refused.
    let bak = fs::read_dir(&export_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.display().to_string().contains("hb"))
        .unwrap();
    let bak = bak.to_str().unwrap();
    let i = e.json(&["import", bak, "--database", "../../sentinel/x"]);
    let key = i["stripes"][0]["key"].as_str().unwrap();
    assert!(key.split('/').all(|s| s != ".." && !s.is_empty()), "{key}");
    e.json(&["verify", i["id"].as_str().unwrap()]);
    e.expect(&["import", bak, "--database", "bad\u{1}name"], 2);
    e.expect(&["import", bak, "--database", ""], 2);
    check_outside("import");
    assert_eq!(
        top(e.dir.path()),
        top_before,
        "something was written next to the repository"
    );
}
