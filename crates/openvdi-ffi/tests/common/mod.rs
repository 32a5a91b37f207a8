//! Helpers of the C/C++ program tests: where the library is, compiling the
//! programs of tests/c, running them with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// target/<profile>, where cargo put libsqlvdi.so next to the test's deps dir.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn mode() -> String {
    std::env::var("OPENVDI_C_MODE").unwrap_or_default()
}

pub fn out_dir() -> PathBuf {
    let m = mode();
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "c-{}",
        if m.is_empty() { "plain" } else { m.as_str() }
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Compile once per test process (tests run in parallel and share the outputs).
pub fn compile(src: &str, out: &str, cpp: bool) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(out) {
        return p.clone();
    }
    let exe = compile_now(src, out, cpp);
    map.insert(out.to_string(), exe.clone());
    exe
}

pub fn compile_now(src: &str, out: &str, cpp: bool) -> PathBuf {
    let exe = out_dir().join(out);
    let mut c = Command::new(if cpp { "g++" } else { "gcc" });
    if cpp {
        c.arg("-std=c++11");
    } else {
        c.arg("-std=c11");
    }
    c.args(["-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(root().join("include"));
    if mode() == "asan" {
        c.args(["-fsanitize=address", "-fno-omit-frame-pointer"]);
    }
    c.arg(root().join("crates/openvdi-ffi/tests/c").join(src))
        .arg("-o")
        .arg(&exe);
    c.arg("-L").arg(lib_dir()).args(["-lsqlvdi", "-lpthread"]);
    let st = c.status().expect("run the compiler");
    assert!(st.success(), "compiling {src} failed");
    exe
}

/// Run with LD_LIBRARY_PATH set, under valgrind in that mode; kill at the deadline.
pub fn run(exe: &Path, args: &[&str], secs: u64) -> (bool, String) {
    let mut cmd = if mode() == "valgrind" {
        let mut c = Command::new("valgrind");
        c.args([
            "-q",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--trace-children=yes",
        ])
        .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.args(args)
        .env("LD_LIBRARY_PATH", lib_dir())
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(_st) = child.try_wait().expect("wait") {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{} timed out: {}{}",
                exe.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn secs() -> u64 {
    if mode() == "valgrind" {
        600
    } else {
        120
    }
}

pub fn uniq(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "c-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
