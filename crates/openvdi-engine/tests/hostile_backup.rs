//! Hostile backups: streams whose recorded physical names point outside the data
//! directory (absolute paths, `../`, a Windows path, a NUL, a catalog's name), whose
//! size fields claim far more than the stream carries, and targets where a symbolic
//! link has been planted. Each backup is a real one made by the engine (to a DISK
//! file) with its metadata patched in place, or a real SQL Server fixture patched
//! the same way.
//!
//! Every attack aims only at sentinel files inside the test's own temporary
//! directory. After each, the test checks that nothing outside the data directory
//! (and the MOVE targets it names) changed — content, size, mtime and kind of every
//! entry of the sentinel tree around the data directory — that no file is larger
//! than the stream could fill, and that the statement gave a clear message.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use openvdi_engine::{Engine, FaultPlan};

/// The layout of one test: `root/` holds the sentinel tree, `root/data` the
/// engine's data directory, `root/src…` the source engine whose backup is patched.
struct World {
    root: tempfile::TempDir,
    engine: Engine,
    bak: PathBuf,
}

/// A source directory name long enough that any hostile physical name fits in the
/// space its path takes in the metadata (patches keep the record's length).
const LONG: &str = "src-with-a-long-name-so-that-the-recorded-physical-names-leave-room-for-any-replacement-the-tests-write-0123456789abcdef";

impl World {
    fn new() -> World {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("outside/deeper")).unwrap();
        std::fs::write(r.join("sentinel.txt"), b"sentinel: must never change").unwrap();
        std::fs::write(r.join("outside/victim.mdf"), b"victim data file").unwrap();
        std::fs::write(r.join("outside/deeper/victim_log.ldf"), b"victim log").unwrap();
        let src = Engine::open(r.join(LONG)).unwrap();
        src.create_database("h", 1 << 20).unwrap();
        src.modify("h", 5).unwrap();
        let bak = r.join("h.bak");
        src.execute(&format!(
            "BACKUP DATABASE h TO DISK = '{}' WITH INIT, CHECKSUM",
            bak.display()
        ))
        .unwrap();
        let engine = Engine::open(r.join("data")).unwrap();
        World { root, engine, bak }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Rewrite the engine's metadata record (JSON, in both MQCI copies) of the
    /// backup in place; the record keeps its length (padded with spaces, which JSON
    /// allows), so the MTF envelope stays valid.
    fn patch(&self, f: impl Fn(&mut serde_json::Value)) {
        let mut b = std::fs::read(&self.bak).unwrap();
        let magic = b"OPENVDI\x01";
        let mut at = 0;
        let mut patched = 0;
        while let Some(p) = b[at..].windows(8).position(|w| w == magic) {
            let start = at + p;
            let n = u32::from_le_bytes(b[start + 8..start + 12].try_into().unwrap()) as usize;
            let json = &b[start + 12..start + 12 + n];
            let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
            f(&mut v);
            let mut out = serde_json::to_vec(&v).unwrap();
            assert!(
                out.len() <= n,
                "the patched record must fit ({} > {n})",
                out.len()
            );
            out.resize(n, b' ');
            b[start + 12..start + 12 + n].copy_from_slice(&out);
            patched += 1;
            at = start + 12 + n;
        }
        assert_eq!(patched, 2, "both MQCI copies");
        std::fs::write(&self.bak, b).unwrap();
    }

    /// Set the physical names of the data and log file.
    fn names(&self, data: &str, log: &str) {
        let (d, l) = (data.to_string(), log.to_string());
        self.patch(move |v| {
            let files = v["files"].as_array_mut().unwrap();
            files[0][2] = serde_json::Value::String(d.clone());
            files[1][2] = serde_json::Value::String(l.clone());
        });
    }

    fn restore(&self, as_name: &str, with: &str) -> openvdi_engine::Execution {
        let sql = format!(
            "RESTORE DATABASE {as_name} FROM DISK = '{}'{}",
            self.bak.display(),
            if with.is_empty() {
                String::new()
            } else {
                format!(" WITH {with}")
            }
        );
        self.engine.execute_detailed(&sql)
    }

    /// Everything outside the data directory and the source directory.
    fn outside(&self) -> BTreeMap<PathBuf, Entry> {
        let mut m = BTreeMap::new();
        walk(
            self.root.path(),
            &[self.data(), self.root.path().join(LONG), self.bak.clone()],
            &mut m,
        );
        m
    }

    /// Files of the data directory: (name, length).
    fn data_files(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(self.data())
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map_or(0, |m| m.len()),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// No file of the data directory is larger than the backup stream could fill.
    fn assert_sizes_bounded(&self) {
        let limit = std::fs::metadata(&self.bak).unwrap().len() + (64 << 20);
        for (n, len) in self.data_files() {
            assert!(
                len <= limit,
                "{n} is {len} bytes, more than the stream fills"
            );
        }
    }
}

/// What is checked of every entry of the sentinel tree.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    len: u64,
    mtime: (i64, i64),
    uid: u32,
    content: Vec<u8>,
    link: Option<PathBuf>,
}

fn walk(dir: &Path, skip: &[PathBuf], out: &mut BTreeMap<PathBuf, Entry>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if skip.contains(&p) {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            "link"
        } else if ft.is_dir() {
            "dir"
        } else {
            "file"
        };
        out.insert(
            p.clone(),
            Entry {
                kind,
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                uid: m.uid(),
                content: if kind == "file" {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                },
                link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
            },
        );
        if kind == "dir" {
            walk(&p, skip, out);
        }
    }
}

fn err_text(r: &openvdi_engine::Execution) -> String {
    r.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
}

/// The paths a successful restore wrote, all inside `dir`.
fn assert_restored_inside(r: &openvdi_engine::Execution, dir: &Path) {
    assert!(r.error.is_none(), "{}", err_text(r));
    let rep = r.restores().next().unwrap();
    assert_eq!(rep.files.len(), 2);
    for (_, p, _) in &rep.files {
        assert_eq!(
            p.parent(),
            Some(dir),
            "{} escaped the data directory",
            p.display()
        );
    }
}

#[test]
fn absolute_recorded_paths_land_in_the_data_directory() {
    let w = World::new();
    let victim = w.root.path().join("outside/victim.mdf");
    let victim_log = w.root.path().join("outside/deeper/victim_log.ldf");
    w.names(
        &victim.display().to_string(),
        &victim_log.display().to_string(),
    );
    let before = w.outside();
    let r = w.restore("h", "");
    assert_restored_inside(&r, &w.data());
    assert_eq!(
        w.outside(),
        before,
        "a file outside the data directory changed"
    );
    let names: Vec<String> = w.data_files().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"victim.mdf".to_string()), "{names:?}");
    assert!(names.contains(&"victim_log.ldf".to_string()), "{names:?}");
    w.assert_sizes_bounded();
}

#[test]
fn dot_dot_nul_empty_and_catalog_names_are_sanitised() {
    for (data, log, want_data, want_log) in [
        (
            "../../../outside/evil.mdf",
            "..\\..\\outside\\evil_log.ldf",
            "evil.mdf",
            "evil_log.ldf",
        ),
        (
            "/x/ev\u{0}il.mdf",
            "/x/\u{1}lo\u{7f}g.ldf",
            "evil.mdf",
            "log.ldf",
        ),
        ("", "..", "h.mdf", "h_log.ldf"),
        ("/a/b/", "/a/b/.", "h.mdf", "h_log.ldf"),
        (
            "h.openvdi.json",
            "x/.h.openvdi.json.tmp1",
            "h.mdf",
            "h.openvdi.json.tmp1",
        ),
    ] {
        let w = World::new();
        w.names(data, log);
        let before = w.outside();
        let r = w.restore("h", "");
        assert_restored_inside(&r, &w.data());
        let rep = r.restores().next().unwrap();
        let got: Vec<String> = rep
            .files
            .iter()
            .map(|(_, p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            vec![want_data.to_string(), want_log.to_string()],
            "{data:?} {log:?}"
        );
        assert_eq!(w.outside(), before, "{data:?}: a file outside changed");
        // The only catalog is the restored database's own.
        let catalogs: Vec<String> = w
            .data_files()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.ends_with(".openvdi.json"))
            .collect();
        assert_eq!(catalogs, vec!["h.openvdi.json".to_string()]);
        w.assert_sizes_bounded();
    }
}

#[test]
fn a_windows_path_from_a_real_backup_gives_its_file_name() {
    let root = tempfile::tempdir().unwrap();
    let e = Engine::open(root.path().join("data")).unwrap();
    let full = common::fixtures().join("sql2008r2-db2-full.bak");
    let fl = e.execute_detailed(&format!(
        "RESTORE FILELISTONLY FROM DISK = '{}'",
        full.display()
    ));
    let physical = fl
        .result_sets()
        .next()
        .unwrap()
        .get(0, "PhysicalName")
        .unwrap()
        .to_string();
    assert!(physical.contains('\\'), "{physical}");
    let r = e.execute_detailed(&format!(
        "RESTORE DATABASE db2 FROM DISK = '{}'",
        full.display()
    ));
    assert_restored_inside(&r, &root.path().join("data"));
    let want = physical.rsplit('\\').next().unwrap();
    let rep = r.restores().next().unwrap();
    assert!(
        rep.files
            .iter()
            .any(|(_, p, _)| p.file_name().unwrap() == want),
        "{want} not among {:?}",
        rep.files
    );
}

#[test]
fn a_symlink_at_the_target_is_refused_not_followed() {
    let w = World::new();
    w.names("/elsewhere/evil.mdf", "/elsewhere/evil_log.ldf");
    let sentinel = w.root.path().join("sentinel.txt");
    let link = w.data().join("evil.mdf");
    std::os::unix::fs::symlink(&sentinel, &link).unwrap();
    if rustix::process::geteuid().is_root() {
        // A link owned by another user must not be trusted either.
        std::os::unix::fs::lchown(&link, Some(12345), Some(12345)).unwrap();
    }
    let before = w.outside();
    for with in ["", "REPLACE"] {
        let r = w.restore("h", with);
        let e = r.error.as_ref().expect("refused");
        assert!(e.has(5120), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(e.has(3013), "{e}");
        assert_eq!(w.outside(), before, "the link's target changed");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // Nothing of the refused restore is left: no log file, no catalog.
        assert!(!w.data().join("evil_log.ldf").exists());
        assert!(!w.data().join("h.openvdi.json").exists());
    }

    // A MOVE target that is a link (here to a file outside) is refused as well.
    let moved = w.root.path().join("outside/moved.mdf");
    std::os::unix::fs::symlink(w.root.path().join("outside/victim.mdf"), &moved).unwrap();
    let before = w.outside();
    let r = w.restore(
        "m",
        &format!(
            "MOVE 'h' TO '{}', MOVE 'h_log' TO '{}'",
            moved.display(),
            w.data().join("m_log.ldf").display()
        ),
    );
    assert!(
        r.error.as_ref().is_some_and(|e| e.has(5120)),
        "{}",
        err_text(&r)
    );
    assert_eq!(w.outside(), before);
}

#[test]
fn a_symlink_swapped_in_for_a_database_file_is_refused_on_replace() {
    let w = World::new();
    let r = w.restore("h", "");
    assert!(r.error.is_none(), "{}", err_text(&r));
    // The database's own data file is replaced by a link to the sentinel.
    let own = w.data().join("h.mdf");
    std::fs::remove_file(&own).unwrap();
    std::os::unix::fs::symlink(w.root.path().join("sentinel.txt"), &own).unwrap();
    let before = w.outside();
    let r = w.restore("h", "REPLACE");
    let e = r.error.as_ref().expect("refused");
    assert!(
        e.has(5120) && e.to_string().contains("symbolic link"),
        "{e}"
    );
    assert_eq!(w.outside(), before);
    // BACKUP does not read through it either, and drop removes only the link.
    let e = w
        .engine
        .execute(&format!(
            "BACKUP DATABASE h TO DISK = '{}' WITH INIT",
            w.root.path().join("again.bak").display()
        ))
        .unwrap_err();
    assert!(e.has(5120), "{e}");
    w.engine.drop_database("h").unwrap();
    assert!(
        std::fs::symlink_metadata(&own).is_err(),
        "the link is removed"
    );
    assert_eq!(
        std::fs::read(w.root.path().join("sentinel.txt")).unwrap(),
        b"sentinel: must never change"
    );
}

#[test]
fn an_existing_stray_file_is_not_overwritten() {
    let w = World::new();
    let stray = w.data().join("h.mdf");
    std::fs::write(&stray, b"not a database file").unwrap();
    let r = w.restore("h", "");
    let e = r.error.as_ref().expect("refused");
    assert!(e.has(3142), "{e}");
    assert_eq!(std::fs::read(&stray).unwrap(), b"not a database file");
    assert!(
        !w.data().join("h_log.ldf").exists(),
        "the log file created is removed again"
    );
    // A MOVE onto an existing file outside the data directory is refused even
    // WITH REPLACE (it may be another engine's).
    let victim = w.root.path().join("outside/victim.mdf");
    let before = w.outside();
    let r = w.restore(
        "h",
        &format!(
            "REPLACE, MOVE 'h' TO '{}', MOVE 'h_log' TO '{}'",
            victim.display(),
            w.data().join("h_log.ldf").display()
        ),
    );
    assert!(
        r.error.as_ref().is_some_and(|e| e.has(3142)),
        "{}",
        err_text(&r)
    );
    assert_eq!(w.outside(), before);
    // WITH REPLACE takes over the leftover inside the data directory.
    let r = w.restore("h", "REPLACE");
    assert!(r.error.is_none(), "{}", err_text(&r));
}

#[test]
fn move_targets_must_be_absolute() {
    let w = World::new();
    let before = w.outside();
    let r = w.restore(
        "h",
        "MOVE 'h' TO 'relative.mdf', MOVE 'h_log' TO '../up_log.ldf'",
    );
    let e = r.error.as_ref().expect("refused");
    assert!(e.has(5105) && e.has(3156) && e.has(3119), "{e}");
    assert!(e.to_string().contains("absolute path"), "{e}");
    assert_eq!(w.outside(), before);
    assert!(w.data_files().is_empty(), "{:?}", w.data_files());
    // Two files to one path.
    let one = w.data().join("one.mdf");
    let r = w.restore(
        "h",
        &format!(
            "MOVE 'h' TO '{}', MOVE 'h_log' TO '{}'",
            one.display(),
            one.display()
        ),
    );
    assert!(
        r.error.as_ref().is_some_and(|e| e.has(3176)),
        "{}",
        err_text(&r)
    );
    assert!(w.data_files().is_empty(), "{:?}", w.data_files());
}

#[test]
fn a_huge_size_field_is_refused_and_creates_nothing() {
    let w = World::new();
    // Short names first, so that the longer numbers fit the record.
    w.names("/s/h.mdf", "/s/h_log.ldf");
    for (which, size) in [(0usize, 1u64 << 40), (1, 1 << 40), (0, u64::MAX / 2)] {
        w.patch(move |v| {
            v["files"][which][4] = serde_json::json!(size);
        });
        let before = w.outside();
        let r = w.restore("h", "");
        let e = r.error.as_ref().expect("refused");
        assert!(e.has(3241), "{e}");
        assert!(e.to_string().contains("incorrectly formed"), "{e}");
        assert!(w.data_files().is_empty(), "created {:?}", w.data_files());
        assert_eq!(w.outside(), before);
    }
}

/// A copy of a real SQL Server backup whose SFIN records (file size, u64 at +40,
/// in both metadata copies) all say `size`.
fn real_backup_with_file_size(root: &std::path::Path, size: u64) -> std::path::PathBuf {
    let mut b = std::fs::read(common::fixtures().join("sql2008r2-db2-full.bak")).unwrap();
    let mut at = 0;
    let mut n = 0;
    while let Some(p) = b[at..].windows(4).position(|w| w == b"SFIN") {
        let s = at + p;
        let len = u32::from_le_bytes(b[s + 4..s + 8].try_into().unwrap()) as usize;
        if (56..4096).contains(&len) {
            b[s + 40..s + 48].copy_from_slice(&size.to_le_bytes());
            n += 1;
        }
        at = s + 4;
    }
    assert!(n >= 2);
    let bak = root.join(format!("size-{size}.bak"));
    std::fs::write(&bak, &b).unwrap();
    bak
}

#[test]
fn a_real_backup_claiming_more_than_the_disk_holds_is_refused_like_sql_server() {
    let root = tempfile::tempdir().unwrap();
    let e = Engine::open(root.path().join("data")).unwrap();
    // 2^60 bytes: more than any volume has free.
    let bak = real_backup_with_file_size(root.path(), 1 << 60);
    let r = e.execute_detailed(&format!(
        "RESTORE DATABASE db2 FROM DISK = '{}'",
        bak.display()
    ));
    let err = r.error.as_ref().expect("refused");
    assert!(err.has(3257), "{err}");
    let left: Vec<_> = std::fs::read_dir(root.path().join("data"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_real_backup_of_a_mostly_empty_file_restores_at_its_recorded_size() {
    // SQL Server backs up allocated extents only: a 256 MiB file with a few MB in
    // use is an ordinary backup, not an attack, and restores at its full size.
    let root = tempfile::tempdir().unwrap();
    let e = Engine::open(root.path().join("data")).unwrap();
    let bak = real_backup_with_file_size(root.path(), 256 << 20);
    let r = e.execute_detailed(&format!(
        "RESTORE DATABASE db2 FROM DISK = '{}'",
        bak.display()
    ));
    assert!(r.error.is_none(), "{:?}", r.error);
    let info = e.database_info("db2").unwrap();
    for f in &info.files {
        assert_eq!(
            std::fs::metadata(&f.path).unwrap().len(),
            256 << 20,
            "{f:?}"
        );
    }
}

#[test]
fn disk_full_names_the_file_and_leaves_the_database_restoring() {
    let w = World::new();
    // Test-only fault: writes into database files fail with ENOSPC after 64 KiB
    // (see fault.rs), standing in for a full disk without filling one.
    let e = Engine::open(w.data())
        .unwrap()
        .with_fault(FaultPlan::parse("enospc-after:65536").unwrap());
    let r = e.execute_detailed(&format!(
        "RESTORE DATABASE h FROM DISK = '{}'",
        w.bak.display()
    ));
    let err = r.error.as_ref().expect("fails");
    let text = err.to_string();
    assert!(err.has(3202), "{text}");
    assert!(text.contains("no space left on device"), "{text}");
    assert!(
        text.contains(&w.data().join("h.mdf").display().to_string()),
        "{text}"
    );
    assert!(err.has(3013), "{text}");
    let info = e.database_info("h").unwrap();
    assert_eq!(info.state, openvdi_engine::catalog::DbState::Restoring);
    // It cannot be brought online without a complete restore.
    assert_eq!(
        e.execute("RESTORE DATABASE h WITH RECOVERY")
            .unwrap_err()
            .number(),
        4333
    );
    // Without the fault the restore completes over it.
    let r = w.restore("h", "");
    assert!(r.error.is_none(), "{}", err_text(&r));
    assert_eq!(
        w.engine.database_info("h").unwrap().state,
        openvdi_engine::catalog::DbState::Online
    );
}
