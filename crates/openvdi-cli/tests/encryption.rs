//! Encrypted repositories (docs/REPOSITORY.md): round trips, what is stored, wrong
//! keys, tampering, key slots, and an independent decoder written from the document.

mod util;

use std::path::{Path, PathBuf};

use util::{Env, PASSWORD};

/// Bytes placed in the database's pages: they must appear in no stored object.
const MARKER: &[u8] = b"OPENVDI-PLAINTEXT-MARKER-7d1f0c3a-do-not-store-in-the-clear";

fn engine(e: &Env) -> openvdi_engine::Engine {
    openvdi_engine::Engine::open(&e.data).unwrap()
}

fn data_file(e: &Env, db: &str) -> PathBuf {
    engine(e).database_info(db).unwrap().files[0].path.clone()
}

/// Writes the marker into a few pages of the (closed) data file, past each page's
/// header, where the engine's backup copies it verbatim, and reseals each page.
fn plant_marker(e: &Env, db: &str) {
    let mdf = data_file(e, db);
    let mut b = std::fs::read(&mdf).unwrap();
    for page in [20usize, 200, 700] {
        let at = page * 8192 + 512;
        if (page + 1) * 8192 <= b.len() {
            b[at..at + MARKER.len()].copy_from_slice(MARKER);
            // Keep the page's checksum right: RESTORE checks it.
            openvdi_engine::page::seal(&mut b[page * 8192..(page + 1) * 8192]);
        }
    }
    std::fs::write(&mdf, b).unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every stored object of a local repository, relative key → path.
fn objects(repo: &str) -> Vec<(String, PathBuf)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let k = p.strip_prefix(root).unwrap().display().to_string();
                out.push((k, p));
            }
        }
    }
    let mut v = Vec::new();
    walk(Path::new(repo), Path::new(repo), &mut v);
    v.sort();
    v
}

fn with_env(e: &Env, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut c = e.cmd(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    util::run(c)
}

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn encrypted_round_trip_for_1_and_4_stripes_and_every_codec_stores_no_plaintext() {
    let e = Env::new();
    assert!(Path::new(&e.repo).join("openvdi-config.json").is_file());
    assert!(!Path::new(&e.repo).join("openvdi-repo.json").exists());
    engine(&e).create_database("secretdb", 12 << 20).unwrap();
    plant_marker(&e, "secretdb");
    let mdf = data_file(&e, "secretdb");
    let mut ids = Vec::new();
    for stripes in ["1", "4"] {
        for codec in ["none", "zstd:1", "lz4"] {
            let before = std::fs::read(&mdf).unwrap();
            assert!(contains(&before, MARKER));
            let b = e.json(&[
                "backup",
                "secretdb",
                "--stripes",
                stripes,
                "--compress",
                codec,
            ]);
            let id = b["id"].as_str().unwrap().to_string();
            engine(&e).modify("secretdb", 64).unwrap();
            e.json(&["restore", &id, "--replace"]);
            assert!(
                std::fs::read(&mdf).unwrap() == before,
                "{stripes} stripe(s), {codec}: restored data file differs"
            );
            let v = e.json(&["verify", &id, "--engine"]);
            assert_eq!(v["ok"], true, "{v}");
            // export writes the native stream, decrypted.
            let out = e.dir.path().join(format!("exp-{stripes}-{codec}"));
            e.json(&["export", &id, out.to_str().unwrap()]);
            let native: Vec<u8> = std::fs::read_dir(&out)
                .unwrap()
                .flat_map(|f| std::fs::read(f.unwrap().path()).unwrap())
                .collect();
            assert!(contains(&native, MARKER), "the export is the native stream");
            ids.push(id);
        }
    }
    assert_eq!(e.backups().len(), 6);
    // Nothing stored holds the marker, and no manifest names the database inside.
    for (k, p) in objects(&e.repo) {
        let b = std::fs::read(&p).unwrap();
        assert!(!contains(&b, MARKER), "{k} holds the plaintext marker");
        if k.ends_with("manifest.json") || k == "openvdi-config.json" {
            assert!(!contains(&b, b"secretdb"), "{k} names the database");
        }
    }
    // prune keeps the repository's own objects (the key slots above all).
    e.json(&["prune", "--keep-last", "1", "--confirm"]);
    assert!(Path::new(&e.repo).join("openvdi-config.json").is_file());
    assert_eq!(e.backups().len(), 1);
    // Control: an unencrypted repository does store the marker in the clear.
    let plain = Env::plain();
    engine(&plain)
        .create_database("secretdb", 12 << 20)
        .unwrap();
    plant_marker(&plain, "secretdb");
    plain.json(&["backup", "secretdb", "--compress", "none"]);
    assert!(objects(&plain.repo)
        .iter()
        .any(|(_, p)| contains(&std::fs::read(p).unwrap(), MARKER)));
}

/// True if the engine knows a database of that name (a restore that reached it
/// would have created it, RESTORING at least).
fn exists(e: &Env, db: &str) -> bool {
    engine(e).database_info(db).is_ok()
}

#[test]
fn a_wrong_password_or_a_missing_key_file_exits_12_before_anything_is_restored() {
    let e = Env::new();
    engine(&e).create_database("wp", 8 << 20).unwrap();
    let id = e.json(&["backup", "wp"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (args, vars) in [
        (
            vec!["restore", id.as_str(), "--as", "wp_copy"],
            vec![("OPENVDI_PASSWORD", "not-the-pw-4711")],
        ),
        (
            vec![
                "--key-file",
                "/nonexistent/openvdi.key",
                "restore",
                id.as_str(),
                "--as",
                "wp_copy",
            ],
            vec![],
        ),
        (vec!["list"], vec![("OPENVDI_PASSWORD", "not-the-pw-4711")]),
        (
            vec!["backup", "wp"],
            vec![("OPENVDI_PASSWORD", "not-the-pw-4711")],
        ),
        (
            vec!["verify", id.as_str()],
            vec![("OPENVDI_PASSWORD", "not-the-pw-4711")],
        ),
    ] {
        let o = with_env(&e, &args, &vars);
        assert_eq!(code(&o), Some(12), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("wrong password") || err.contains("key file"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("not-the-pw-4711") && !err.contains(PASSWORD),
            "{err}"
        );
        assert!(!exists(&e, "wp_copy"), "{args:?} reached the engine");
    }
    // A wrong key file (exists, opens no slot) is the same error.
    let k = e.dir.path().join("other.key");
    std::fs::write(
        &k,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let o = with_env(
        &e,
        &[
            "--key-file",
            k.to_str().unwrap(),
            "restore",
            &id,
            "--as",
            "wp_copy",
        ],
        &[],
    );
    assert_eq!(code(&o), Some(12), "{}", stderr(&o));
    assert!(!exists(&e, "wp_copy"));
    // --json names the kind.
    let o = with_env(&e, &["--json", "list"], &[("OPENVDI_PASSWORD", "nope")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 12);
    assert_eq!(v["error_kind"], "wrong_password");
    // The right one still works.
    e.json(&["restore", &id, "--as", "wp_copy"]);
    assert!(exists(&e, "wp_copy"));
}

/// The frames of an encrypted stripe: (offset, length) of each frame including its
/// 16-byte header, the end frame last.
fn frames(b: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&b[..8], b"OVDISTR1");
    assert_eq!(b[9], 2, "an encrypted stripe");
    let mut at = 32;
    let mut out = Vec::new();
    loop {
        let raw = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let stored = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, 16 + stored));
        at += 16 + stored;
        if raw == 0 {
            assert_eq!(at, b.len());
            return out;
        }
    }
}

struct Tamper<'a> {
    e: &'a Env,
}

impl Tamper<'_> {
    /// `verify` says damaged (exit 3), `restore` refuses (exit 3) and the engine never
    /// heard of the target database.
    fn refused(&self, id: &str, what: &str) {
        let o = self.e.run(&["verify", id]);
        assert_eq!(code(&o), Some(3), "{what}: verify: {}", stderr(&o));
        let o = self.e.run(&["restore", id, "--as", "tampered"]);
        assert_eq!(code(&o), Some(3), "{what}: restore: {}", stderr(&o));
        assert!(!exists(self.e, "tampered"), "{what}: the engine got bytes");
        let leftovers: Vec<_> = std::fs::read_dir(&self.e.data)
            .unwrap()
            .filter_map(|f| f.ok())
            .filter(|f| f.file_name().to_string_lossy().contains("tampered"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
    }
}

#[test]
fn tampering_is_detected_by_verify_and_refused_by_restore_before_the_engine_gets_a_byte() {
    let e = Env::new();
    engine(&e).create_database("tp", 8 << 20).unwrap();
    let a = e.json(&[
        "backup",
        "tp",
        "--stripes",
        "2",
        "--compress",
        "zstd:1",
        "--maxtransfersize",
        "262144",
    ]);
    engine(&e).modify("tp", 30).unwrap();
    let b = e.json(&[
        "backup",
        "tp",
        "--stripes",
        "2",
        "--compress",
        "zstd:1",
        "--maxtransfersize",
        "262144",
    ]);
    let (ida, idb) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let key = |m: &serde_json::Value, i: usize| {
        Path::new(&e.repo).join(m["stripes"][i]["key"].as_str().unwrap())
    };
    let dir_of = |m: &serde_json::Value| key(m, 0).parent().unwrap().to_path_buf();
    let t = Tamper { e: &e };
    let a1 = key(&a, 0);
    let good_a1 = std::fs::read(&a1).unwrap();
    let fa = frames(&good_a1);
    assert!(fa.len() >= 4, "{} frames", fa.len());

    // One flipped byte anywhere in any object of the backup: the header, a frame
    // header, a frame body, the end frame, the last byte; the manifest.
    let mut objs: Vec<PathBuf> = std::fs::read_dir(dir_of(&a))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| !p.ends_with("reserved.json"))
        .collect();
    objs.sort();
    for p in &objs {
        let good = std::fs::read(p).unwrap();
        let n = good.len();
        let mut spots = vec![0, 9, 20, n / 2, n - 1];
        if p == &a1 {
            spots.extend([
                fa[1].0 + 2,
                fa[1].0 + 40,
                fa[fa.len() - 1].0 + 5,
                fa[fa.len() - 1].0 + 30,
            ]);
        }
        for at in spots {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(p, &bad).unwrap();
            t.refused(ida, &format!("byte {at} of {} flipped", p.display()));
        }
        std::fs::write(p, &good).unwrap();
    }
    e.json(&["verify", ida]);

    // Two frames swapped within a stripe.
    let (x, y) = (fa[1], fa[2]);
    let mut bad = good_a1[..x.0].to_vec();
    bad.extend_from_slice(&good_a1[y.0..y.0 + y.1]);
    bad.extend_from_slice(&good_a1[x.0..x.0 + x.1]);
    bad.extend_from_slice(&good_a1[y.0 + y.1..]);
    assert_eq!(bad.len(), good_a1.len());
    std::fs::write(&a1, &bad).unwrap();
    t.refused(ida, "two frames swapped");

    // A frame copied from another backup (same position, same stripe).
    let good_b1 = std::fs::read(key(&b, 0)).unwrap();
    let fb = frames(&good_b1);
    let mut bad = good_a1[..fa[1].0].to_vec();
    bad.extend_from_slice(&good_b1[fb[1].0..fb[1].0 + fb[1].1]);
    bad.extend_from_slice(&good_a1[fa[1].0 + fa[1].1..]);
    std::fs::write(&a1, &bad).unwrap();
    t.refused(ida, "a frame copied from another backup");

    // A stripe swapped between two backups of the same database.
    std::fs::write(&a1, &good_b1).unwrap();
    t.refused(ida, "stripe 1 of another backup");

    // A truncated stripe: the end frame dropped, then cut inside a frame.
    let last = fa[fa.len() - 1].0;
    std::fs::write(&a1, &good_a1[..last]).unwrap();
    t.refused(ida, "the end frame dropped");
    std::fs::write(&a1, &good_a1[..fa[2].0 + 100]).unwrap();
    t.refused(ida, "cut inside frame 2");
    // Frames dropped and a valid end frame kept: the trailer counts them.
    let mut bad = good_a1[..fa[2].0].to_vec();
    bad.extend_from_slice(&good_a1[last..]);
    std::fs::write(&a1, &bad).unwrap();
    t.refused(ida, "frames dropped before the end frame");
    std::fs::write(&a1, &good_a1).unwrap();
    e.json(&["verify", ida]);

    // A manifest replaced by an older one of another backup.
    let mb = dir_of(&b).join("manifest.json");
    let good_mb = std::fs::read(&mb).unwrap();
    std::fs::copy(dir_of(&a).join("manifest.json"), &mb).unwrap();
    t.refused(idb, "the manifest of another backup");
    std::fs::write(&mb, &good_mb).unwrap();

    // The config object: any flipped byte fails its JSON, its MAC (exit 3) or the
    // unwrapping of the master key (exit 12); nothing reaches the engine.
    let cfg = Path::new(&e.repo).join("openvdi-config.json");
    let good_cfg = std::fs::read(&cfg).unwrap();
    let n = good_cfg.len();
    for at in [0, n / 5, n / 3, n / 2, 2 * n / 3, n - 3] {
        let mut bad = good_cfg.clone();
        bad[at] ^= 0x01;
        std::fs::write(&cfg, &bad).unwrap();
        let o = e.run(&["restore", ida, "--as", "tampered"]);
        assert!(
            matches!(code(&o), Some(3) | Some(12)),
            "config byte {at}: {:?} {}",
            code(&o),
            stderr(&o)
        );
        assert!(!exists(&e, "tampered"));
    }
    std::fs::write(&cfg, &good_cfg).unwrap();

    // Put back, everything restores again.
    e.json(&["verify", "--all"]);
    e.json(&["restore", idb, "--as", "tp_ok"]);
    assert!(exists(&e, "tp_ok"));
}

#[test]
fn inspect_and_a_point_in_time_restore_refuse_a_tampered_backup_before_the_engine_reads_it() {
    let e = Env::new();
    engine(&e).create_database("ins", 8 << 20).unwrap();
    let b = e.json(&["backup", "ins", "--maxtransfersize", "262144"]);
    let id = b["id"].as_str().unwrap();
    let p = Path::new(&e.repo).join(b["stripes"][0]["key"].as_str().unwrap());
    let good = std::fs::read(&p).unwrap();
    let v = e.json(&["inspect", id]);
    assert_eq!(v["header"][0]["DatabaseName"], "ins", "{v}");
    // A byte of the last data frame: the engine would stop reading long before it,
    // at the end of the head HEADERONLY and FILELISTONLY need.
    let f = frames(&good);
    assert!(f.len() >= 4, "{} frames", f.len());
    let (at, len) = f[f.len() - 2];
    let mut bad = good.clone();
    bad[at + len / 2] ^= 0x10;
    std::fs::write(&p, &bad).unwrap();
    for json in [false, true] {
        let args: &[&str] = if json {
            &["--json", "inspect", id]
        } else {
            &["inspect", id]
        };
        let o = e.run(args);
        assert_eq!(code(&o), Some(3), "{args:?}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.contains("DatabaseName") && !out.contains("BackupSetGUID"),
            "{args:?} printed the header of a tampered backup: {out}"
        );
        let said = if json { out.to_string() } else { stderr(&o) };
        assert!(said.contains("failed authentication"), "{args:?}: {said}");
    }
    std::fs::write(&p, &good).unwrap();
    assert_eq!(e.json(&["inspect", id])["header"][0]["DatabaseName"], "ins");

    // A point-in-time restore authenticates every backup of its chain before the
    // first step: a tampered log is refused before the full reaches the engine.
    engine(&e).modify("ins", 20).unwrap();
    let log = e.json(&["backup", "ins", "--type", "log"]);
    let lsn = log["chain"]["last_lsn"].as_str().unwrap();
    let lp = Path::new(&e.repo).join(log["stripes"][0]["key"].as_str().unwrap());
    let good_log = std::fs::read(&lp).unwrap();
    let mut bad = good_log.clone();
    let n = bad.len();
    bad[n - 40] ^= 0x01;
    std::fs::write(&lp, &bad).unwrap();
    let o = e.run(&["restore", "ins", "--at-lsn", lsn, "--as", "ins_at"]);
    assert_eq!(code(&o), Some(3), "{}", stderr(&o));
    assert!(!exists(&e, "ins_at"), "the full reached the engine");
    std::fs::write(&lp, &good_log).unwrap();
    e.json(&["restore", "ins", "--at-lsn", lsn, "--as", "ins_at"]);
    assert!(exists(&e, "ins_at"));
}

#[test]
fn verify_without_the_key_checks_the_ciphertext_and_says_the_key_is_needed() {
    let e = Env::new();
    engine(&e).create_database("nk", 8 << 20).unwrap();
    let b = e.json(&["backup", "nk", "--stripes", "2"]);
    let id = b["id"].as_str().unwrap();
    let o = with_env(&e, &["verify", id], &[("OPENVDI_PASSWORD", "")]);
    assert_eq!(code(&o), Some(12), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("stored bytes OK"), "{out}");
    assert!(stderr(&o).contains("key is needed"), "{}", stderr(&o));
    // A flipped byte in a frame's ciphertext is found without the key.
    let p = Path::new(&e.repo).join(b["stripes"][1]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let o = with_env(&e, &["verify", "--all"], &[("OPENVDI_PASSWORD", "")]);
    assert_eq!(code(&o), Some(3), "{}", stderr(&o));
}

/// Every object but the config object and the local lock file, with its bytes.
fn data_objects(repo: &str) -> Vec<(String, Vec<u8>)> {
    objects(repo)
        .into_iter()
        .filter(|(k, _)| k != "openvdi-config.json" && k != ".openvdi.lock")
        .map(|(k, p)| (k, std::fs::read(p).unwrap()))
        .collect()
}

#[test]
fn key_slots_add_a_password_restore_with_it_remove_the_first_and_no_data_is_rewritten() {
    let e = Env::new();
    engine(&e).create_database("ks", 8 << 20).unwrap();
    let id = e.json(&["backup", "ks", "--stripes", "2"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = data_objects(&e.repo);
    let pw2 = e.dir.path().join("pw2");
    std::fs::write(&pw2, "a second password\n").unwrap();
    let added = e.json(&["key", "add", "--new-password-file", pw2.to_str().unwrap()]);
    assert_eq!(added["added"], 2);
    let second = [("OPENVDI_PASSWORD", "a second password")];
    let o = with_env(
        &e,
        &["--json", "--quiet", "restore", &id, "--as", "ks2"],
        &second,
    );
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert!(exists(&e, "ks2"));
    // The first one is removed, by the holder of the second.
    let o = with_env(&e, &["--json", "key", "list"], &second);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["slots"].as_array().unwrap().len(), 2, "{v}");
    let o = with_env(&e, &["key", "remove", "1"], &second);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    let o = e.run(&["list"]);
    assert_eq!(
        code(&o),
        Some(12),
        "the old password still opens it: {}",
        stderr(&o)
    );
    let o = with_env(&e, &["restore", &id, "--as", "ks3"], &[]);
    assert_eq!(code(&o), Some(12));
    assert!(!exists(&e, "ks3"));
    // The last slot stays.
    let o = with_env(&e, &["key", "remove", "2"], &second);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    // A key file slot (created), and passwd replacing the password.
    let kf = e.dir.path().join("recovery.key");
    let o = with_env(
        &e,
        &["key", "add", "--new-key-file", kf.to_str().unwrap()],
        &second,
    );
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert!(kf.is_file());
    let o = with_env(
        &e,
        &[
            "--key-file",
            kf.to_str().unwrap(),
            "restore",
            &id,
            "--as",
            "ks4",
        ],
        &[("OPENVDI_PASSWORD", "")],
    );
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    let pw3 = e.dir.path().join("pw3");
    std::fs::write(&pw3, "third").unwrap();
    let o = with_env(
        &e,
        &[
            "key",
            "passwd",
            "--new-password-file",
            pw3.to_str().unwrap(),
        ],
        &second,
    );
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert_eq!(code(&with_env(&e, &["list"], &second)), Some(12));
    assert_eq!(
        code(&with_env(&e, &["list"], &[("OPENVDI_PASSWORD", "third")])),
        Some(0)
    );
    // Not one data object changed.
    assert_eq!(data_objects(&e.repo), before);
}

#[test]
fn an_old_client_and_an_unencrypted_repository() {
    // Older repositories (openvdi-repo.json, format 1) still open, without a password.
    let e = Env::plain();
    engine(&e).create_database("old", 8 << 20).unwrap();
    let o = with_env(
        &e,
        &["--json", "--quiet", "backup", "old"],
        &[("OPENVDI_PASSWORD", "")],
    );
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert!(Path::new(&e.repo).join("openvdi-repo.json").is_file());
    // A marker of a format this version does not know is refused.
    let m = Path::new(&e.repo).join("openvdi-repo.json");
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("\"format\": 1", "\"format\": 9");
    std::fs::write(&m, text).unwrap();
    let o = e.run(&["list"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("format 9"), "{}", stderr(&o));
    // `init --no-encryption` says so loudly.
    let u = Env::uninitialised();
    let o = u.run(&["init", "--no-encryption"]);
    assert!(stderr(&o).contains("NOT encrypted"), "{}", stderr(&o));
    // Without any password, `init` refuses rather than store in the clear.
    let u = Env::uninitialised();
    let o = with_env(&u, &["init"], &[("OPENVDI_PASSWORD", "")]);
    assert_eq!(code(&o), Some(12), "{}", stderr(&o));
    assert!(!Path::new(&u.repo).exists() || objects(&u.repo).is_empty());
}

fn python_has_cryptography() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import cryptography.hazmat.primitives.kdf.argon2"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_independent_decoder_written_from_docs_repository_md_reads_a_stripe() {
    if !python_has_cryptography() {
        assert!(
            std::env::var_os("OPENVDI_REQUIRE_PY_CRYPTO").is_none(),
            "python3 with cryptography (≥ 44, for Argon2id) is required"
        );
        eprintln!("skipped: python3 with the cryptography package (≥ 44) is not available");
        return;
    }
    let e = Env::new();
    engine(&e).create_database("py", 8 << 20).unwrap();
    let b = e.json(&["backup", "py", "--stripes", "2", "--compress", "none"]);
    let id = b["id"].as_str().unwrap();
    let out = e.dir.path().join("export");
    e.json(&["export", id, out.to_str().unwrap()]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decode_stripe.py");
    for s in b["stripes"].as_array().unwrap() {
        let index = s["index"].as_u64().unwrap();
        let key = s["key"].as_str().unwrap();
        let manifest = key.rsplit_once('/').unwrap().0.to_string() + "/manifest.json";
        let target = e.dir.path().join(format!("py-{index}.bak"));
        let mut c = std::process::Command::new("python3");
        c.arg(&script)
            .args([&e.repo, key, &manifest, &target.display().to_string()])
            .env("OPENVDI_PASSWORD", PASSWORD);
        let o = util::run(c); // bounded: killed at util::DEADLINE
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let exported = out.join(format!("{id}_{index}of2.bak"));
        assert!(
            std::fs::read(&target).unwrap() == std::fs::read(&exported).unwrap(),
            "stripe {index}: the Python decoder's stream differs from `openvdi export`"
        );
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(said.contains("database py"), "{said}");
    }
}
