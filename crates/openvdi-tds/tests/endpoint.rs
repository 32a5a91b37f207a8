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
    let mut cfg = Config::new("127.0.0.1:0".parse().unwrap()).with_login("sa", "pw");
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
    // Half-open connections are closed after the login timeout.
    let t0 = std::time::Instant::now();
    let half: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    for s in half {
        closed(s);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed together after the timeout"
    );
    // A flood past max_connections: the extra ones are closed at once.
    let flood: Vec<TcpStream> = (0..200).map(|_| connect(addr)).collect();
    drop(flood);
    std::thread::sleep(Duration::from_millis(1500));
    served(addr);
}
