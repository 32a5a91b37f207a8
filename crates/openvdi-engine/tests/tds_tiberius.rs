//! tiberius (the Rust SQL Server driver the CLI's `--tds` uses, from crates.io, same
//! version and features plus `tds80`) against `openvdi-engine serve` in its own
//! process, the virtual devices served by the test VDI client: the login refused
//! with 18456, a parameterised BACKUP (tiberius sends `@P1` queries as
//! `sp_executesql`) with SQL Server's INFO messages, a failed BACKUP with all its
//! errors, HEADERONLY values typed, a client gone mid-BACKUP aborting the set, and
//! TDS 8.0 strict encryption.
//!
//! tiberius hands its caller neither INFO tokens nor any ERROR but the first; it
//! does emit each as a `tracing` event (tiberius 0.13, `src/tds/stream/token.rs`:
//! `get_info` logs `event!(Level::DEBUG, "{}", info.message)`, the text only;
//! `get_error` logs `event!(Level::ERROR, message = %err.message, code = err.code)`
//! for every ERROR). A small subscriber installed for the test's thread collects
//! them: the INFO messages are recognised by their text (the event has no number),
//! the errors by number.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::endpoint::{no_set_left, Endpoint};
use common::*;
use openvdi::HResult;
use openvdi_engine::Engine;
use tiberius::numeric::Numeric;
use tiberius::{AuthMethod, ColumnData, Config, EncryptionLevel, Uuid};
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

const USER: &str = "backup_operator";
const PASSWORD: &str = "S3cret-pässword";

type Tib = tiberius::Client<Compat<tokio::net::TcpStream>>;

/// One `tracing` event as tiberius emitted it.
#[derive(Clone, Debug)]
struct Seen {
    level: tracing::Level,
    message: String,
    /// The `code` field (ERROR events: the error's number).
    code: Option<u64>,
}

/// A subscriber that records every event (tiberius', and whatever else runs on
/// the thread while it is installed).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl Capture {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Fields<'a>(&'a mut Seen);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            // `%x` and format arguments both print as their Display here.
            self.0.message = format!("{v:?}");
        }
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        if f.name() == "message" {
            self.0.message = v.to_string();
        }
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        if f.name() == "code" {
            self.0.code = Some(v);
        }
    }
    fn record_i64(&mut self, f: &tracing::field::Field, v: i64) {
        if f.name() == "code" {
            self.0.code = u64::try_from(v).ok();
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut seen = Seen {
            level: *e.metadata().level(),
            message: String::new(),
            code: None,
        };
        e.record(&mut Fields(&mut seen));
        self.0.lock().unwrap().push(seen);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs `f` to completion on a runtime of this thread, with `cap` receiving the
/// events (a current-thread runtime: tiberius' futures run here, under the
/// thread's default subscriber).
fn block_on<T>(cap: &Capture, f: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(cap.clone(), || rt.block_on(f))
}

fn config(port: u16, password: &str, enc: EncryptionLevel) -> Config {
    let mut c = Config::new();
    c.host("127.0.0.1");
    c.port(port);
    c.authentication(AuthMethod::sql_server(USER, password));
    c.encryption(enc);
    c.trust_cert();
    c
}

/// Connect, bounded (30 s).
async fn connect(c: Config) -> tiberius::Result<Tib> {
    let go = async {
        let tcp = tokio::net::TcpStream::connect(c.get_addr()).await?;
        tcp.set_nodelay(true)?;
        Tib::connect(c, tcp.compat_write()).await
    };
    tokio::time::timeout(Duration::from_secs(30), go)
        .await
        .expect("the login finished within 30 s")
}

/// Bounded (60 s): every statement here finishes well within it or fails.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the statement finished within 60 s")
}

/// Which of two futures finished first.
enum Race<A, B> {
    A(A),
    B(B),
}

/// Polls `a` and `b` together until one is ready (the other is dropped).
async fn first<A: Future, B: Future>(a: A, b: B) -> Race<A::Output, B::Output> {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
            return std::task::Poll::Ready(Race::A(v));
        }
        b.as_mut().poll(cx).map(Race::B)
    })
    .await
}

fn infos(events: &[Seen]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.level == tracing::Level::DEBUG)
        .map(|e| e.message.clone())
        .collect()
}

fn error_codes(events: &[Seen]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.level == tracing::Level::ERROR)
        .filter_map(|e| e.code)
        .collect()
}

/// SQL Server's 4035 ("Processed N pages for database …") and 3014 ("BACKUP
/// DATABASE successfully processed …"), by their text.
fn assert_backup_infos(events: &[Seen]) {
    let i = infos(events);
    assert!(
        i.iter()
            .any(|m| m.starts_with("Processed ") && m.contains("pages for database 'sales'")),
        "4035 among {i:?}"
    );
    assert!(
        i.iter()
            .any(|m| m.starts_with("BACKUP DATABASE successfully processed")),
        "3014 among {i:?}"
    );
}

#[test]
fn tiberius_login_backup_errors_headeronly_and_a_dropped_connection() {
    let dir = data_dir();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_database("sales", 2 << 20).unwrap();
    engine.create_database("big", 8 << 20).unwrap();
    let ep = Endpoint::start(
        &engine_bin(),
        dir.path(),
        &[(USER, PASSWORD)],
        &["--open-timeout", "10"],
    );
    let cap = Capture::default();

    // A wrong password: 18456, over TLS for the whole session.
    let r = block_on(
        &cap,
        connect(config(
            ep.port,
            "Not-The-Pässword",
            EncryptionLevel::Required,
        )),
    );
    match r {
        Err(tiberius::error::Error::Server(e)) => {
            assert_eq!(e.code(), 18456, "{e}");
            assert!(e
                .message()
                .contains(&format!("Login failed for user '{USER}'.")));
        }
        Err(e) => panic!("not a server error: {e}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
    assert!(
        !ep.log().contains("Not-The"),
        "the password is never logged"
    );

    // A parameterised BACKUP: `@P1` goes out as sp_executesql with @P1 declared,
    // the device name its value (tiberius' `execute`/`query`:
    // `rpc_perform_query(RpcProcId::ExecuteSQL, …)` in src/client.rs). The INFO
    // messages arrive as events.
    let c = Client::start("tibbk", 1, ClientOpts::default(), vec![]);
    let dev = c.devices[0].clone();
    cap.take();
    let r = block_on(&cap, async {
        let mut cl = connect(config(ep.port, PASSWORD, EncryptionLevel::Required)).await?;
        bounded(cl.execute(
            "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = @P1 WITH STATS = 50",
            &[&dev.as_str()],
        ))
        .await
    });
    let (cfg, logs) = c.finish();
    r.expect("the BACKUP succeeded");
    assert!(cfg.is_ok());
    assert_eq!(logs[0].end, Some(Ok(())));
    let stream = logs[0].data.clone();
    assert!(!stream.is_empty());
    let ev = cap.take();
    assert_backup_infos(&ev);
    assert!(error_codes(&ev).is_empty(), "{ev:?}");

    // A failed BACKUP: tiberius returns the first error (911); the events carry it
    // and the 3013 that ends the statement, as SQL Server sends them.
    let r = block_on(&cap, async {
        let mut cl = connect(config(ep.port, PASSWORD, EncryptionLevel::Off)).await?;
        bounded(cl.execute(
            "BACKUP DATABASE [nosuch] TO VIRTUAL_DEVICE = @P1",
            &[&"nobody-serves-this"],
        ))
        .await
    });
    match r {
        Err(tiberius::error::Error::Server(e)) => {
            assert_eq!(e.code(), 911, "{e}");
            assert!(
                e.message().contains("Database 'nosuch' does not exist"),
                "{e}"
            );
        }
        other => panic!("expected SQL Server's error: {other:?}"),
    }
    let codes = error_codes(&cap.take());
    assert_eq!(codes, vec![911, 3013], "every ERROR, in order");

    // HEADERONLY through sp_executesql too: typed values.
    let c = Client::start("tibho", 1, ClientOpts::default(), vec![stream]);
    let dev = c.devices[0].clone();
    let rows = block_on(&cap, async {
        let mut cl = connect(config(ep.port, PASSWORD, EncryptionLevel::Required)).await?;
        bounded(async {
            cl.query(
                "RESTORE HEADERONLY FROM VIRTUAL_DEVICE = @P1",
                &[&dev.as_str()],
            )
            .await?
            .into_first_result()
            .await
        })
        .await
    })
    .expect("HEADERONLY");
    let _ = c.finish();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<&str, _>("DatabaseName"), Some("sales"));
    let lsn: Numeric = row.get("FirstLSN").expect("FirstLSN is not NULL");
    assert_eq!(lsn.scale(), 0, "an LSN is numeric(25,0)");
    assert!(lsn.value() > 0);
    let last: Numeric = row.get("LastLSN").expect("LastLSN");
    assert!(last.value() >= lsn.value());
    let i = row
        .columns()
        .iter()
        .position(|c| c.name() == "BackupStartDate")
        .expect("BackupStartDate");
    // Without tiberius' chrono feature (the CLI does not enable it) a datetime
    // arrives as tiberius' own DateTime: days since 1900-01-01 and 1/300 s.
    match row.cells().nth(i).map(|(_, v)| v) {
        Some(ColumnData::DateTime(Some(d))) => {
            // After 2020-01-01 (43829 days after 1900-01-01).
            assert!(d.days() > 43829, "{d:?}");
        }
        other => panic!("BackupStartDate is not a datetime: {other:?}"),
    }
    assert_eq!(row.get::<bool, _>("IsCopyOnly"), Some(false));
    let guid: Uuid = row.get("BackupSetGUID").expect("BackupSetGUID");
    assert!(!guid.is_nil());
    assert_eq!(row.get::<i32, _>("BackupType"), Some(1));

    // Cancel: tiberius has no ATTENTION API (dropping a query future does not send
    // one), so what a tiberius program can do to stop a running BACKUP is to drop
    // its connection. The endpoint must then cancel the statement as it does on
    // ATTENTION (conn.rs, `run`: the client gone cancels the request): the VDI
    // client sees VD_E_ABORT and no part of the set is left in /dev/shm. The
    // device stalls after 3 commands, so the BACKUP cannot finish on its own; the
    // connection is dropped once the device says it stalls (mid-transfer).
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let stall = ClientOpts {
        stall_after: Some(3),
        stalled: Some(tx),
        ..ClientOpts::default()
    };
    let c = Client::start("tibdrop", 1, stall, vec![]);
    let name = c.name.clone();
    let dev = c.devices[0].clone();
    // The std channel, bridged to the runtime.
    let (otx, orx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = otx.send(rx.recv_timeout(Duration::from_secs(60)).is_ok());
    });
    let outcome = block_on(&cap, async {
        let mut cl = connect(config(ep.port, PASSWORD, EncryptionLevel::Required))
            .await
            .expect("login");
        let d = dev.as_str();
        let params: [&dyn tiberius::ToSql; 1] = [&d];
        let exec = cl.execute("BACKUP DATABASE [big] TO VIRTUAL_DEVICE = @P1", &params);
        let r = first(exec, orx).await;
        drop(cl); // the TCP connection closes here
        r
    });
    match outcome {
        Race::B(Ok(true)) => {}
        Race::B(_) => panic!("the device never stalled"),
        Race::A(r) => panic!("the stalled BACKUP finished: {r:?}"),
    }
    let (_, logs) = c.finish();
    assert_eq!(
        logs[0].end,
        Some(Err(HResult::VD_E_ABORT)),
        "the dropped connection aborted the set"
    );
    no_set_left(&name);

    // The database is not left busy: a new backup on a new connection works.
    let c = Client::start("tibafter", 1, ClientOpts::default(), vec![]);
    let dev = c.devices[0].clone();
    let r = block_on(&cap, async {
        let mut cl = connect(config(ep.port, PASSWORD, EncryptionLevel::Off)).await?;
        bounded(cl.execute(
            "BACKUP DATABASE [big] TO VIRTUAL_DEVICE = @P1",
            &[&dev.as_str()],
        ))
        .await
    });
    let (_, logs) = c.finish();
    r.expect("a BACKUP after the aborted one");
    assert_eq!(logs[0].end, Some(Ok(())));
}

/// TDS 8.0 (`encrypt=strict`): TLS first, on the same port, ALPN tds/8.0; then
/// PRELOGIN, LOGIN7 and the BACKUP inside it. A wrong password is still 18456.
#[test]
fn tiberius_tds8_strict_encryption() {
    let dir = data_dir();
    Engine::open(dir.path())
        .unwrap()
        .create_database("sales", 2 << 20)
        .unwrap();
    let ep = Endpoint::start(
        &engine_bin(),
        dir.path(),
        &[(USER, PASSWORD)],
        &["--open-timeout", "10"],
    );
    let cap = Capture::default();
    let r = block_on(
        &cap,
        connect(config(ep.port, "wrong", EncryptionLevel::Strict)),
    );
    match r {
        Err(tiberius::error::Error::Server(e)) => assert_eq!(e.code(), 18456, "{e}"),
        Err(e) => panic!("not a server error: {e}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
    let ev = cap.take();
    assert!(
        ev.iter()
            .any(|e| e.message.contains("TLS handshake (TDS 8.0 strict)")),
        "tiberius went the strict way: {ev:?}"
    );

    let c = Client::start("tibstrict", 1, ClientOpts::default(), vec![]);
    let dev = c.devices[0].clone();
    let r = block_on(&cap, async {
        let mut cl = connect(config(ep.port, PASSWORD, EncryptionLevel::Strict)).await?;
        let v = bounded(async {
            cl.simple_query("SELECT @@VERSION AS v")
                .await?
                .into_row()
                .await
        })
        .await?
        .and_then(|r| r.get::<&str, _>("v").map(str::to_string));
        bounded(cl.execute(
            "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = @P1",
            &[&dev.as_str()],
        ))
        .await?;
        Ok::<_, tiberius::error::Error>(v)
    });
    let (_, logs) = c.finish();
    let v = r.expect("strict session").expect("@@VERSION");
    assert!(v.contains("openvdi-engine"), "{v}");
    assert_eq!(logs[0].end, Some(Ok(())));
    assert_backup_infos(&cap.take());
}
