//! The endpoint against a hand-rolled client (the crate's own PRELOGIN/LOGIN7
//! builders) and hostile ones: garbage, truncated and oversized packets,
//! half-open connections and a flood of connections never harm the process, and
//! a correct client is served afterwards. The real drivers are tested in
//! crates/openvdi-engine/tests/tds_drivers.rs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use openvdi_tds::login::{build_login7, enc, prelogin_reply};
use openvdi_tds::wire::{ptype, read_message, write_message, Out};
use openvdi_tds::{Backend, ColType, Column, Config, Item, Msg, Reply, Request, Server, Table};

#[derive(Debug)]
struct Fake;

impl Backend for Fake {
    type Token = ();
    fn new_token(&self) {}
    fn cancel(&self, _: &()) {}
    fn execute(&self, _: &(), req: &Request) -> Reply {
        Reply {
            items: vec![
                Item::Message(Msg {
                    number: 4035,
                    state: 1,
                    class: 0,
                    line: 1,
                    text: format!("ran {}", req.sql),
                }),
                Item::Table(Table {
                    columns: vec![Column {
                        name: "n".into(),
                        ty: ColType::Int,
                    }],
                    rows: vec![vec![Some("42".into())]],
                }),
            ],
            failed: false,
        }
    }
    fn server_name(&self) -> String {
        "fake".into()
    }
    fn database_exists(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case("master")
    }
}

fn start() -> SocketAddr {
    start_with(None)
}

fn start_with(tls: Option<openvdi_tds::tls::Tls>) -> SocketAddr {
    let mut cfg = Config::new("127.0.0.1:0".parse().unwrap()).with_login("sa", "pw");
    if let Some(t) = tls {
        cfg = cfg.with_tls(t);
    }
    cfg.login_timeout = Duration::from_secs(1);
    cfg.max_connections = 64;
    let s = Server::bind(cfg, Fake).unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || s.serve());
    addr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// PRELOGIN and LOGIN7; the login reply's payload.
fn login(s: &mut TcpStream, password: &str) -> Vec<u8> {
    write_message(
        s,
        ptype::PRELOGIN,
        &prelogin_reply((1, 0, 0), enc::NOT_SUP),
        4096,
    )
    .unwrap();
    let pre = read_message(s).unwrap();
    assert_eq!(pre.ptype, ptype::REPLY);
    let login = build_login7("sa", password, "", 0x7400_0004);
    write_message(s, ptype::LOGIN7, &login, 4096).unwrap();
    read_message(s).unwrap().data
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn served(addr: SocketAddr) {
    let mut s = connect(addr);
    let r = login(&mut s, "pw");
    // LOGINACK: token, length, interface 1, TDS 7.4 big-endian.
    assert!(contains(&r, &[0x01, 0x74, 0x00, 0x00, 0x04]), "{r:?}");
    assert!(contains(&r, &[0xAD]));
    let mut batch = Out::default();
    batch
        .u32(22)
        .u32(18)
        .u16(2)
        .bytes(&[0; 8])
        .u32(1)
        .ucs2("SELECT 42");
    write_message(&mut s, ptype::SQL_BATCH, &batch.buf, 4096).unwrap();
    let r = read_message(&mut s).unwrap().data;
    assert_eq!(r[0], 0xAB, "INFO first");
    assert!(contains(&r, &[0x81, 1, 0]), "COLMETADATA with one column");
    assert!(contains(&r, &[0xD1, 4, 42, 0, 0, 0]), "ROW with int 42");
    assert_eq!(
        &r[r.len() - 13..],
        &[0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // ATTENTION while idle: acknowledged with DONE_ATTN.
    write_message(&mut s, ptype::ATTENTION, &[], 4096).unwrap();
    let r = read_message(&mut s).unwrap().data;
    assert_eq!(&r[..3], &[0xFD, 0x20, 0]);
}

/// The server closes `s` (EOF or reset) within the read timeout.
fn closed(mut s: TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the endpoint did not close the connection")
            }
            Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[test]
fn login_batch_and_attention() {
    let addr = start();
    served(addr);
}

#[test]
fn wrong_password_is_18456_then_closed() {
    let addr = start();
    let mut s = connect(addr);
    let r = login(&mut s, "nope");
    assert_eq!(r[0], 0xAA, "an ERROR token");
    assert_eq!(u32::from_le_bytes([r[3], r[4], r[5], r[6]]), 18456);
    closed(s);
}

#[test]
fn hostile_clients_never_harm_the_endpoint() {
    let addr = start();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good_login = build_login7("sa", "pw", "", 0x7400_0004);
    for i in 0..120 {
        let mut s = connect(addr);
        let mut bytes: Vec<u8> = (0..(rnd() % 300)).map(|_| rnd() as u8).collect();
        match i % 4 {
            // Random bytes.
            0 => {}
            // A PRELOGIN header with a random (possibly huge) length.
            1 => {
                bytes.splice(
                    0..0,
                    [
                        ptype::PRELOGIN,
                        1,
                        (rnd() >> 8) as u8,
                        rnd() as u8,
                        0,
                        0,
                        1,
                        0,
                    ],
                );
            }
            // A mutated LOGIN7.
            2 => {
                let mut l = good_login.clone();
                for _ in 0..4 {
                    let k = (rnd() as usize) % l.len();
                    l[k] = rnd() as u8;
                }
                let mut w = Vec::new();
                write_message(&mut w, ptype::LOGIN7, &l, 4096).unwrap();
                bytes = w;
            }
            // A truncated LOGIN7.
            _ => {
                let cut = (rnd() as usize) % good_login.len();
                let mut w = Vec::new();
                write_message(&mut w, ptype::LOGIN7, &good_login[..cut], 4096).unwrap();
                bytes = w;
            }
        }
        let _ = s.write_all(&bytes);
        // Most end their side at once (the endpoint sees the truncation); some of
        // the garbage ones stay open (the endpoint's login timeout ends them). A
        // mutated LOGIN7 may still be a good login, so those always end.
        if i % 16 >= 2 {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        closed(s);
    }
    // Half-open connections are closed by the login timeout (1 s here): `closed`
    // fails if one is still open when its 10 s read timeout ends.
    let half: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    for s in half {
        closed(s);
    }
    // A flood past max_connections: the extra ones are closed at once, and once the
    // flood is gone the endpoint serves again (as soon as it has noticed the drops:
    // retried until a deadline, no fixed wait).
    let flood: Vec<TcpStream> = (0..200).map(|_| connect(addr)).collect();
    drop(flood);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !logs_in(addr) {
        assert!(
            std::time::Instant::now() < deadline,
            "the endpoint never served again after the flood"
        );
        std::thread::yield_now();
    }
    served(addr);
}

/// Whether a fresh connection gets through PRELOGIN and LOGIN7 to a LOGINACK
/// (false when the endpoint closes it, e.g. because it is still at max_connections).
fn logs_in(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let pre = prelogin_reply((1, 0, 0), enc::NOT_SUP);
    if write_message(&mut s, ptype::PRELOGIN, &pre, 4096).is_err() {
        return false;
    }
    if !read_message(&mut s).is_ok_and(|m| m.ptype == ptype::REPLY) {
        return false;
    }
    let login = build_login7("sa", "pw", "", 0x7400_0004);
    if write_message(&mut s, ptype::LOGIN7, &login, 4096).is_err() {
        return false;
    }
    read_message(&mut s).is_ok_and(|m| contains(&m.data, &[0xAD]))
}

/// TDS 8.0's first byte (0x16, a TLS handshake record) from clients that are not
/// TLS clients: without TLS configured the connection is closed; with it, a broken
/// or truncated ClientHello or one left half-sent ends the connection (the login
/// timeout bounds the handshake), and TDS 7.x clients are still served on the port.
#[test]
fn broken_tds8_client_hellos_are_closed() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let with = openvdi_tds::tls::Tls::self_signed(&["localhost".into()]).unwrap();
    for addr in [start(), start_with(Some(with))] {
        for i in 0..24 {
            let mut s = connect(addr);
            // A TLS record header (handshake, TLS 1.0 record version, a length),
            // then random bytes where the ClientHello would be.
            let mut bytes = vec![0x16, 0x03, 0x01, (rnd() >> 8) as u8, rnd() as u8];
            bytes.extend((0..(rnd() % 200)).map(|_| rnd() as u8));
            let _ = s.write_all(&bytes);
            if i % 3 != 0 {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            closed(s);
        }
        served(addr);
    }
}

// ---------------------------------------------------------------------------
// The bounded fuzz of a real endpoint process (test.sh runs it: `--ignored`).

/// `openvdi-engine serve` as its own process (built on demand), killed on drop.
struct Process {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FUZZ_USER: &str = "fuzz";
const FUZZ_PASSWORD: &str = "Fuzz-Pw-1";

fn engine_process() -> Process {
    use std::io::BufRead;
    let o = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "openvdi-engine",
            "--bin",
            "openvdi-engine",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // target/<profile>/deps/endpoint-… → target/<profile>/openvdi-engine
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("openvdi-engine");
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--login"])
        .arg(format!("{FUZZ_USER}:{FUZZ_PASSWORD}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    Process {
        child,
        addr,
        _dir: dir,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A correct client: login (no TLS), a batch, its row and a clean DONE.
fn served_by_engine(addr: SocketAddr) {
    let mut s = connect(addr);
    write_message(
        &mut s,
        ptype::PRELOGIN,
        &prelogin_reply((1, 0, 0), enc::NOT_SUP),
        4096,
    )
    .unwrap();
    assert_eq!(read_message(&mut s).unwrap().ptype, ptype::REPLY);
    let l = build_login7(FUZZ_USER, FUZZ_PASSWORD, "", 0x7400_0004);
    write_message(&mut s, ptype::LOGIN7, &l, 4096).unwrap();
    let r = read_message(&mut s).unwrap().data;
    assert!(contains(&r, &[0xAD]), "LOGINACK");
    write_message(&mut s, ptype::SQL_BATCH, &batch("SELECT 7 AS n"), 4096).unwrap();
    let r = read_message(&mut s).unwrap().data;
    assert!(contains(&r, &[0x81, 1, 0]), "COLMETADATA: {r:?}");
    assert!(
        !contains(&r, &[0xAA]) || !contains(&r, &[0xFD, 2]),
        "no error"
    );
}

fn batch(sql: &str) -> Vec<u8> {
    let mut b = Out::default();
    b.u32(22).u32(18).u16(2).bytes(&[0; 8]).u32(1).ucs2(sql);
    b.buf
}

/// An RPC request: sp_executesql (10) or sp_prepexec (13) with string params.
fn rpc(proc_id: u16, params: &[&str]) -> Vec<u8> {
    let mut o = Out::default();
    o.u32(22).u32(18).u16(2).bytes(&[0; 8]).u32(1);
    o.u16(0xFFFF).u16(proc_id).u16(0);
    if proc_id == 13 {
        o.b_varchar("@handle").u8(1).u8(0x26).u8(4).u8(0);
    }
    for p in params {
        let mut v = Out::default();
        v.ucs2(p);
        o.b_varchar("")
            .u8(0)
            .u8(0xE7)
            .u16(8000)
            .bytes(&openvdi_tds::token::COLLATION)
            .u16(v.buf.len() as u16)
            .bytes(&v.buf);
    }
    o.buf
}

/// Reads until the endpoint closes `s` or `deadline` passes; true if it closed.
fn closes_by(mut s: TcpStream, deadline: std::time::Instant) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = s.set_read_timeout(Some(left.min(Duration::from_secs(1))));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

/// Random and mutated packets before and after the login (PRELOGIN asking for
/// TLS then garbage in the handshake, LOGIN7, SQL batches, sp_executesql and
/// sp_prepexec RPCs, ATTENTION), half-open connections, and a flood of logins
/// past `--max-connections`, against `openvdi-engine serve` in its own process.
/// Bounded by OPENVDI_TDS_FUZZ_CASES (default 400) and OPENVDI_TDS_FUZZ_SECS
/// (default 20): whichever comes first. Afterwards a correct client is served,
/// the process is alive and its RSS stayed bounded.
#[test]
#[ignore = "a bounded fuzz run by test.sh (cargo test -p openvdi-tds --test endpoint -- --ignored)"]
fn fuzz_a_real_endpoint_process() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cases = env("OPENVDI_TDS_FUZZ_CASES", 400);
    let secs = env("OPENVDI_TDS_FUZZ_SECS", 20);
    let mut p = engine_process();
    let addr = p.addr;
    let pid = p.child.id();
    served_by_engine(addr);
    let rss0 = rss_kib(pid);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("fuzz seed {seed:#x}");
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good_login = build_login7(FUZZ_USER, FUZZ_PASSWORD, "", 0x7400_0004);
    let mutate = |mut v: Vec<u8>, rnd: &mut dyn FnMut() -> u64| {
        if v.is_empty() {
            return v;
        }
        for _ in 0..(1 + rnd() % 6) {
            let k = (rnd() as usize) % v.len();
            match rnd() % 3 {
                0 => v[k] = rnd() as u8,
                1 => v.truncate(k.max(1)),
                _ => v.insert(k, rnd() as u8),
            }
        }
        v
    };
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut done = 0u64;
    // Half-open connections, held through the run: the login timeout ends them.
    let half: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = connect(addr);
            if i % 2 == 0 {
                let _ = s.write_all(&[ptype::PRELOGIN, 0, 0x10]); // a partial header
            }
            s
        })
        .collect();
    while done < cases && std::time::Instant::now() < end {
        let mut s = connect(addr);
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let mut w = Vec::new();
        let kind = rnd() % 7;
        match kind {
            // Random bytes.
            0 => w = (0..(rnd() % 600)).map(|_| rnd() as u8).collect(),
            // A PRELOGIN asking for TLS, then garbage in PRELOGIN packets.
            1 => {
                let pre = prelogin_reply(
                    (1, 0, 0),
                    [enc::OFF, enc::ON, enc::REQ][(rnd() % 3) as usize],
                );
                write_message(&mut w, ptype::PRELOGIN, &pre, 4096).unwrap();
                let junk: Vec<u8> = (0..(rnd() % 400)).map(|_| rnd() as u8).collect();
                let mut hello = vec![0x16, 0x03, 0x01];
                hello.extend_from_slice(&junk);
                write_message(&mut w, ptype::PRELOGIN, &hello, 4096).unwrap();
            }
            // A mutated PRELOGIN.
            2 => {
                let pre = mutate(prelogin_reply((1, 0, 0), enc::NOT_SUP), &mut rnd);
                write_message(&mut w, ptype::PRELOGIN, &pre, 4096).unwrap();
            }
            // A mutated LOGIN7.
            3 => write_message(
                &mut w,
                ptype::LOGIN7,
                &mutate(good_login.clone(), &mut rnd),
                4096,
            )
            .unwrap(),
            // After a good login: a mutated batch, RPC or packet header.
            _ => {
                let pre = prelogin_reply((1, 0, 0), enc::NOT_SUP);
                write_message(&mut w, ptype::PRELOGIN, &pre, 4096).unwrap();
                write_message(&mut w, ptype::LOGIN7, &good_login, 4096).unwrap();
                let (t, body) = match kind {
                    4 => (ptype::SQL_BATCH, mutate(batch("SELECT 7 AS n"), &mut rnd)),
                    5 => (
                        ptype::RPC,
                        mutate(
                            rpc(10, &["SELECT @a AS a", "@a nvarchar(10)", "x"]),
                            &mut rnd,
                        ),
                    ),
                    _ => (
                        ptype::RPC,
                        mutate(
                            rpc(13, &["@a nvarchar(10)", "SELECT @a AS a", "y"]),
                            &mut rnd,
                        ),
                    ),
                };
                let mut m = Vec::new();
                write_message(&mut m, t, &body, 512).unwrap();
                if rnd() % 4 == 0 {
                    m = mutate(m, &mut rnd); // the packet framing too
                }
                w.extend_from_slice(&m);
                if rnd() % 3 == 0 {
                    write_message(&mut w, ptype::ATTENTION, &[], 4096).unwrap();
                }
            }
        }
        let _ = s.write_all(&w);
        let _ = s.shutdown(std::net::Shutdown::Write);
        assert!(
            closes_by(s, std::time::Instant::now() + Duration::from_secs(30)),
            "case {done} (kind {kind}): the endpoint kept a finished connection open"
        );
        done += 1;
    }
    eprintln!("fuzz: {done} cases");
    // A login flood past --max-connections (256): every connection is either
    // served or closed at once; all are held open until every one has its answer.
    let flood: Vec<std::thread::JoinHandle<(bool, Option<TcpStream>)>> = (0..300)
        .map(|_| {
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return (false, None);
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                let pre = prelogin_reply((1, 0, 0), enc::NOT_SUP);
                if write_message(&mut s, ptype::PRELOGIN, &pre, 4096).is_err()
                    || read_message(&mut s).is_err()
                {
                    return (false, Some(s));
                }
                let l = build_login7(FUZZ_USER, FUZZ_PASSWORD, "", 0x7400_0004);
                let ok = write_message(&mut s, ptype::LOGIN7, &l, 4096).is_ok()
                    && read_message(&mut s).is_ok_and(|r| contains(&r.data, &[0xAD]));
                (ok, Some(s))
            })
        })
        .collect();
    let answers: Vec<(bool, Option<TcpStream>)> =
        flood.into_iter().map(|h| h.join().unwrap()).collect();
    let served_in_flood = answers.iter().filter(|a| a.0).count();
    assert!(served_in_flood <= 256, "--max-connections holds");
    drop(answers);
    eprintln!("flood: {served_in_flood} of 300 logged in");
    assert!(served_in_flood > 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for s in half {
        assert!(
            closes_by(s, deadline),
            "a half-open connection outlived the login timeout"
        );
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the endpoint is alive"
    );
    served_by_engine(addr);
    let rss1 = rss_kib(pid);
    eprintln!("RSS {rss0} KiB before, {rss1} KiB after");
    assert!(
        rss1 < rss0 + 256 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
}
