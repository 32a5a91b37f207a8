//! One connection: PRELOGIN, LOGIN7, then requests until the client leaves.
//!
//! After the login a reader thread owns the socket's read half and turns each
//! message into an [`Event`]; the connection thread writes. A request runs on a
//! worker thread, so while it runs the connection thread still sees an ATTENTION
//! (MS-TDS §2.2.1.7: the server cancels and answers with DONE_ATTN) or the
//! client going away (the request is cancelled the same way, then the
//! connection ends) — a BACKUP never outlives its client.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::login::{self, enc};
use crate::tls::{self, Mode, Pump, TlsError};
use crate::token::{self, done, tok, Dialect};
use crate::wire::{self, ptype, Bytes, Out, ReadError};
use crate::{rpc, Backend, Item, Msg, Reply, Request, Shared};

/// The highest TDS version the endpoint speaks: 7.4 (SQL Server 2012 and later).
const TDS74: u32 = 0x7400_0004;
/// Packet size when the client asks for the server's default.
const DEFAULT_PACKET: usize = 4096;

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Reading failed or the bytes were not TDS.
    #[error("{0}")]
    Read(#[from] ReadError),
    /// Writing failed.
    #[error("writing to the client: {0}")]
    Write(#[from] std::io::Error),
    /// A field did not parse.
    #[error("{0}")]
    Malformed(#[from] wire::Malformed),
    /// The client sent something out of order.
    #[error("{0}")]
    Protocol(String),
    /// The login was refused (the client was told why).
    #[error("login refused: {0}")]
    Login(String),
    /// TLS failed.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// The connection's byte stream: the client's socket, or (whole-session TLS) the
/// plaintext end of the TLS pump.
enum Stream {
    Tcp(TcpStream),
    Plain(UnixStream),
    /// Between taking the socket for TLS and putting the new stream in.
    Taken,
}

fn taken() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the stream is being replaced",
    )
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Plain(s) => s.try_clone().map(Stream::Plain),
            Stream::Taken => Err(taken()),
        }
    }
    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Plain(s) => s.shutdown(how),
            Stream::Taken => Ok(()),
        }
    }
    fn set_timeouts(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Plain(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Taken => Ok(()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Plain(s) => s.read(buf),
            Stream::Taken => Err(taken()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Plain(s) => s.write(buf),
            Stream::Taken => Err(taken()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Plain(s) => s.flush(),
            Stream::Taken => Err(taken()),
        }
    }
}

enum Event {
    Message(wire::Message),
    Gone(Option<ReadError>),
    Done(Reply),
}

struct Conn<'a, B: Backend> {
    shared: &'a Arc<Shared<B>>,
    stream: Stream,
    d: Dialect,
    packet: usize,
    database: String,
    server: String,
    transaction: u64,
    next_transaction: u64,
    /// Prepared statements (sp_prepexec/sp_prepare): handle → declaration names
    /// and statement. At most [`MAX_PREPARED`]; the oldest goes first.
    prepared: VecDeque<(i32, Vec<String>, String)>,
    next_handle: i32,
}

/// Most prepared statements a connection keeps.
const MAX_PREPARED: usize = 1024;

pub(crate) fn run<B: Backend>(
    shared: &Arc<Shared<B>>,
    stream: TcpStream,
    spid: u16,
) -> Result<(), ConnError> {
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(shared.cfg.login_timeout))?;
    stream.set_write_timeout(Some(shared.cfg.login_timeout))?;
    let mut c = Conn {
        shared,
        stream: Stream::Tcp(stream),
        d: Dialect { tds72: true },
        packet: DEFAULT_PACKET,
        database: "master".into(),
        server: shared.backend.server_name(),
        transaction: 0,
        next_transaction: 1,
        prepared: VecDeque::new(),
        next_handle: 1,
    };
    let result = c.login(spid).and_then(|()| c.serve());
    let _ = c.stream.shutdown(Shutdown::Both);
    result
}

impl<B: Backend> Conn<'_, B> {
    fn send(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        wire::write_message(&mut self.stream, ptype::REPLY, payload, self.packet)?;
        Ok(())
    }

    fn msg(&self, o: &mut Out, number: u32, class: u8, state: u8, text: impl Into<String>) {
        token::message(
            o,
            self.d,
            &Msg {
                number,
                state,
                class,
                line: 1,
                text: text.into(),
            },
            &self.server,
        );
    }

    /// TDS 8.0 strict (MS-TDS §1.7): a first byte of 0x16 is a TLS ClientHello, not
    /// a TDS header. The TLS session is set up on the bare socket and becomes the
    /// connection's stream; true if that happened.
    fn strict_tls(&mut self) -> Result<bool, ConnError> {
        let Stream::Tcp(tcp) = &self.stream else {
            return Ok(false);
        };
        let mut first = [0u8; 1];
        // Bounded by the login timeout set on the socket.
        match tcp.peek(&mut first) {
            Ok(1) if first[0] == tls::TLS_HANDSHAKE_RECORD => {}
            Ok(_) => return Ok(false),
            Err(e) => return Err(ReadError::Io(e).into()),
        }
        let Some(t) = self.shared.cfg.tls.as_ref() else {
            // Nothing to answer a ClientHello with that the client would read as
            // anything but garbage: close, and say why in the log.
            return Err(ConnError::Login(
                "a TDS 8.0 (Encrypt=strict) client; the endpoint has no TLS".into(),
            ));
        };
        let Stream::Tcp(mut tcp) = std::mem::replace(&mut self.stream, Stream::Taken) else {
            return Err(ConnError::Protocol("TLS twice".into()));
        };
        let conn = tls::strict_handshake(t, &mut tcp)?;
        self.stream = Stream::Plain(Pump::start(tcp, conn)?);
        self.stream
            .set_timeouts(Some(self.shared.cfg.login_timeout))?;
        Ok(true)
    }

    /// PRELOGIN (optional for old clients) and LOGIN7, after the TLS handshake of a
    /// TDS 8.0 client.
    fn login(&mut self, _spid: u16) -> Result<(), ConnError> {
        let strict = self.strict_tls()?;
        let mut m = wire::read_message(&mut self.stream)?;
        if m.ptype == ptype::PRELOGIN && strict {
            // Already encrypted: no negotiation (§3.3.5.1 applies to TDS 7.x only).
            // The answer echoes the client's ENCRYPTION byte (tiberius sends REQ,
            // go-mssqldb ENCRYPT_STRICT); tiberius and ODBC Driver 18 both take
            // the echo as agreement and go on to LOGIN7.
            let p = login::parse_prelogin(&m.data)?;
            let answer = p.encryption.map_or(enc::ON, |c| c & 0x0F);
            let reply = login::prelogin_reply(self.shared.backend.version(), answer);
            self.send(&reply)?;
            m = wire::read_message(&mut self.stream)?;
        } else if m.ptype == ptype::PRELOGIN {
            let p = login::parse_prelogin(&m.data)?;
            let tls = self.shared.cfg.tls.as_ref();
            let (answer, mode) = tls::Tls::answer(tls, p.encryption);
            let reply = login::prelogin_reply(self.shared.backend.version(), answer);
            self.send(&reply)?;
            m = match (mode, tls) {
                (Mode::Refuse, _) if answer == enc::REQ => {
                    return Err(ConnError::Login(
                        "the client cannot encrypt; the endpoint requires encryption".into(),
                    ))
                }
                (Mode::Refuse, _) => {
                    return Err(ConnError::Login(
                        "the client requires encryption; the endpoint has no TLS".into(),
                    ))
                }
                (Mode::None, _) | (_, None) => wire::read_message(&mut self.stream)?,
                (Mode::LoginOnly, Some(t)) => {
                    let Stream::Tcp(tcp) = &mut self.stream else {
                        return Err(ConnError::Protocol("TLS twice".into()));
                    };
                    let conn = tls::handshake(t, tcp)?;
                    tls::read_login(conn, tcp)?
                }
                (Mode::Full, Some(t)) => {
                    let Stream::Tcp(mut tcp) = std::mem::replace(&mut self.stream, Stream::Taken)
                    else {
                        return Err(ConnError::Protocol("TLS twice".into()));
                    };
                    let conn = tls::handshake(t, &mut tcp)?;
                    let plain = Pump::start(tcp, conn)?;
                    self.stream = Stream::Plain(plain);
                    self.stream
                        .set_timeouts(Some(self.shared.cfg.login_timeout))?;
                    wire::read_message(&mut self.stream)?
                }
            };
        }
        if m.ptype != ptype::LOGIN7 {
            return Err(ConnError::Protocol(format!(
                "expected LOGIN7, got packet type {}",
                m.ptype
            )));
        }
        let l = login::parse_login7(&m.data)?;
        let version = if l.tds_version >= TDS74 {
            TDS74
        } else {
            l.tds_version
        };
        if version < 0x7000_0000 {
            return Err(ConnError::Protocol(format!(
                "TDS version {version:#x} is older than 7.0"
            )));
        }
        self.d = Dialect {
            tds72: version >= 0x7200_0000,
        };
        let mut o = Out::default();
        let refuse = |c: &mut Self, mut o: Out, why: String| -> Result<(), ConnError> {
            token::done(&mut o, c.d, tok::DONE, done::ERROR, 0, 0);
            c.send(&o.buf)?;
            Err(ConnError::Login(why))
        };
        if l.integrated {
            self.msg(&mut o, 18452, 14, 1, "Login failed. The login is from an untrusted domain and cannot be used with Integrated authentication.");
            return refuse(self, o, "integrated authentication is not supported".into());
        }
        if !self.shared.cfg.check_login(&l.user, &l.password) {
            // SQL Server tells the client state 1 whatever the reason (so a client
            // cannot tell a wrong password from an unknown login); the log says it.
            self.msg(
                &mut o,
                18456,
                14,
                1,
                format!("Login failed for user '{}'.", l.user),
            );
            return refuse(
                self,
                o,
                format!("user '{}': unknown login or wrong password", l.user),
            );
        }
        let db = if l.database.is_empty() {
            "master".to_string()
        } else {
            l.database.clone()
        };
        if !self.shared.backend.database_exists(&db) {
            self.msg(
                &mut o,
                4060,
                11,
                1,
                format!("Cannot open database \"{db}\" requested by the login. The login failed."),
            );
            self.msg(
                &mut o,
                18456,
                14,
                1,
                format!("Login failed for user '{}'.", l.user),
            );
            return refuse(self, o, format!("database '{db}' does not exist"));
        }
        self.packet = match l.packet_size as usize {
            0 => DEFAULT_PACKET,
            n => n.clamp(wire::MIN_PACKET, wire::MAX_PACKET),
        };
        token::envchange_str(&mut o, 1, &db, "master");
        self.msg(
            &mut o,
            5701,
            0,
            2,
            format!("Changed database context to '{db}'."),
        );
        token::envchange_bin(&mut o, 7, &token::COLLATION, &[]);
        token::envchange_str(&mut o, 2, "us_english", "");
        self.msg(
            &mut o,
            5703,
            0,
            1,
            "Changed language setting to us_english.",
        );
        token::loginack(&mut o, version, self.shared.backend.version());
        let ps = self.packet.to_string();
        token::envchange_str(&mut o, 4, &ps, &ps);
        token::done(&mut o, self.d, tok::DONE, 0, 0, 0);
        self.database = db;
        // The LOGINACK goes out in packets of the size just agreed.
        self.send(&o.buf)?;
        Ok(())
    }

    /// Requests until the client leaves.
    fn serve(&mut self) -> Result<(), ConnError> {
        self.stream.set_timeouts(None)?;
        let (tx, rx) = mpsc::channel::<Event>();
        let mut reader = self.stream.try_clone()?;
        let rtx = tx.clone();
        std::thread::Builder::new()
            .name("tds-reader".into())
            .spawn(move || loop {
                match wire::read_message(&mut reader) {
                    Ok(m) => {
                        if rtx.send(Event::Message(m)).is_err() {
                            return;
                        }
                    }
                    Err(ReadError::Closed) => {
                        let _ = rtx.send(Event::Gone(None));
                        return;
                    }
                    Err(e) => {
                        let _ = rtx.send(Event::Gone(Some(e)));
                        return;
                    }
                }
            })?;
        let token = Arc::new(self.shared.backend.new_token());
        let mut pending: VecDeque<wire::Message> = VecDeque::new();
        loop {
            let m = match pending.pop_front() {
                Some(m) => m,
                None => match rx.recv() {
                    Ok(Event::Message(m)) => m,
                    Ok(Event::Gone(None)) | Err(_) => return Ok(()),
                    Ok(Event::Gone(Some(e))) => return Err(self.fatal(e.into())),
                    Ok(Event::Done(_)) => continue,
                },
            };
            match m.ptype {
                ptype::SQL_BATCH => {
                    let sql = match self.batch_text(&m.data) {
                        Ok(s) => s,
                        Err(e) => return Err(self.fatal(e.into())),
                    };
                    let req = Request {
                        sql,
                        params: Vec::new(),
                        database: self.database.clone(),
                    };
                    let Some((reply, attn)) = self.run(&token, req, &tx, &rx, &mut pending)? else {
                        return Ok(());
                    };
                    let mut o = Out::default();
                    self.encode(&mut o, &reply, false);
                    let mut status = if reply.failed { done::ERROR } else { 0 };
                    if attn {
                        status |= done::MORE;
                    }
                    token::done(&mut o, self.d, tok::DONE, status, 0, 0);
                    if attn {
                        token::done(&mut o, self.d, tok::DONE, done::ATTN, 0, 0);
                    }
                    self.send(&o.buf)?;
                }
                ptype::RPC => {
                    let calls = match rpc::parse(&m.data, self.d.tds72) {
                        Ok(c) => c,
                        Err(e) => return Err(self.fatal(e.into())),
                    };
                    if !self.rpc(&token, calls, &tx, &rx, &mut pending)? {
                        return Ok(());
                    }
                }
                ptype::TRANSACTION => {
                    let o = match self.transaction(&m.data) {
                        Ok(o) => o,
                        Err(e) => return Err(self.fatal(e.into())),
                    };
                    self.send(&o.buf)?;
                }
                ptype::ATTENTION => {
                    // Nothing running (it ended before the ATTENTION arrived): the
                    // client still waits for the acknowledgement.
                    let mut o = Out::default();
                    token::done(&mut o, self.d, tok::DONE, done::ATTN, 0, 0);
                    self.send(&o.buf)?;
                }
                other => {
                    return Err(self.fatal(ConnError::Protocol(format!(
                        "packet type {other} is not supported after the login"
                    ))))
                }
            }
        }
    }

    /// Tell the client why its connection is being closed (Msg 4002, class 20),
    /// best effort; returns the error for the log.
    fn fatal(&mut self, e: ConnError) -> ConnError {
        if !matches!(e, ConnError::Read(ReadError::Io(_))) {
            let mut o = Out::default();
            self.msg(
                &mut o,
                4002,
                20,
                1,
                format!("The incoming tabular data stream (TDS) protocol stream is incorrect: {e}"),
            );
            token::done(&mut o, self.d, tok::DONE, done::ERROR, 0, 0);
            let _ = self.send(&o.buf);
        }
        e
    }

    fn batch_text(&self, data: &[u8]) -> Result<String, wire::Malformed> {
        let mut b = Bytes::new(data);
        if self.d.tds72 {
            rpc::skip_all_headers(&mut b)?;
        }
        let n = b.remaining() / 2;
        b.ucs2(n, "SQL batch text")
    }

    /// Run `req` on a worker thread while watching for ATTENTION and the client
    /// going away. `None`: the client is gone (the request was cancelled and has
    /// ended). Otherwise the reply and whether an ATTENTION cancelled it.
    fn run(
        &mut self,
        token: &Arc<B::Token>,
        req: Request,
        tx: &mpsc::Sender<Event>,
        rx: &mpsc::Receiver<Event>,
        pending: &mut VecDeque<wire::Message>,
    ) -> Result<Option<(Reply, bool)>, ConnError> {
        let shared = Arc::clone(self.shared);
        let tok = Arc::clone(token);
        let wtx = tx.clone();
        shared.backend.reset(token);
        std::thread::Builder::new()
            .name("tds-exec".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.backend.execute(&tok, &req)
                }));
                let reply = r.unwrap_or_else(|_| Reply {
                    items: vec![Item::Message(Msg {
                        number: 50000,
                        state: 1,
                        class: 16,
                        line: 1,
                        text: "openvdi-engine: the statement failed with an internal error".into(),
                    })],
                    failed: true,
                });
                let _ = wtx.send(Event::Done(reply));
            })?;
        let mut attn = false;
        let mut gone = false;
        let reply = loop {
            match rx.recv() {
                Ok(Event::Done(r)) => break r,
                Ok(Event::Message(m)) if m.ptype == ptype::ATTENTION => {
                    if !attn {
                        attn = true;
                        self.shared.backend.cancel(token);
                    }
                }
                Ok(Event::Message(m)) => pending.push_back(m),
                Ok(Event::Gone(_)) | Err(_) => {
                    if !gone {
                        gone = true;
                        self.shared.backend.cancel(token);
                    }
                }
            }
        };
        if gone {
            return Ok(None);
        }
        Ok(Some((reply, attn)))
    }

    /// The tokens of a reply, without its final DONE. Inside a procedure the
    /// result sets end with DONEINPROC.
    fn encode(&mut self, o: &mut Out, reply: &Reply, in_proc: bool) {
        for item in &reply.items {
            match item {
                Item::Message(m) => token::message(o, self.d, m, &self.server),
                Item::Database(db) => {
                    token::envchange_str(o, 1, db, &self.database);
                    self.database = db.clone();
                }
                Item::Table(t) => {
                    token::encode_table(o, self.d, t);
                    let kind = if in_proc { tok::DONEINPROC } else { tok::DONE };
                    // 0xC1: the SELECT command.
                    token::done(
                        o,
                        self.d,
                        kind,
                        done::MORE | done::COUNT,
                        0xC1,
                        t.rows.len() as u64,
                    );
                }
            }
        }
    }

    /// Run an RPC batch; false when the client went away.
    fn rpc(
        &mut self,
        token: &Arc<B::Token>,
        calls: Vec<rpc::Call>,
        tx: &mpsc::Sender<Event>,
        rx: &mpsc::Receiver<Event>,
        pending: &mut VecDeque<wire::Message>,
    ) -> Result<bool, ConnError> {
        let mut o = Out::default();
        let n = calls.len();
        let mut attn = false;
        for (i, call) in calls.into_iter().enumerate() {
            let last = i + 1 == n;
            let mut failed = true;
            let mut handle_out: Option<(String, i32)> = None;
            let bound: Result<Option<rpc::Bound>, (u32, String)> = match call.kind() {
                rpc::Kind::Other => Err((
                    2812,
                    format!("Could not find stored procedure '{}'.", call.proc_name),
                )),
                rpc::Kind::ExecuteSql => call.executesql().map(Some),
                kind @ (rpc::Kind::PrepExec | rpc::Kind::Prepare) => {
                    call.prepare().map(|(decl, (stmt, values))| {
                        let h = self.next_handle;
                        self.next_handle = self.next_handle.wrapping_add(1).max(1);
                        if self.prepared.len() >= MAX_PREPARED {
                            self.prepared.pop_front();
                        }
                        self.prepared.push_back((h, decl, stmt.clone()));
                        let name = call.params.first().map(|p| p.0.clone()).unwrap_or_default();
                        handle_out = Some((name, h));
                        (kind == rpc::Kind::PrepExec).then_some((stmt, values))
                    })
                }
                rpc::Kind::Execute => call.handle().and_then(|(h, values)| {
                    match self.prepared.iter().find(|p| i64::from(p.0) == h) {
                        Some((_, decl, stmt)) => {
                            rpc::Call::bind_prepared(decl, values).map(|v| Some((stmt.clone(), v)))
                        }
                        None => Err((
                            8179,
                            format!("Could not find prepared statement with handle {h}."),
                        )),
                    }
                }),
                rpc::Kind::Unprepare => call.handle().map(|(h, _)| {
                    self.prepared.retain(|p| i64::from(p.0) != h);
                    None
                }),
            };
            // The handle's RETURNVALUE first, before the statement's own tokens
            // (ODBC Driver 18 takes it there as well as after RETURNSTATUS).
            if let Some((name, h)) = handle_out.take() {
                token::return_value_int(&mut o, self.d, 0, &name, h);
            }
            match bound {
                Err((num, text)) => self.msg(&mut o, num, 16, 1, text),
                Ok(None) => failed = false,
                Ok(Some((sql, params))) => {
                    let req = Request {
                        sql,
                        params,
                        database: self.database.clone(),
                    };
                    let Some((reply, a)) = self.run(token, req, tx, rx, pending)? else {
                        return Ok(false);
                    };
                    self.encode(&mut o, &reply, true);
                    failed = reply.failed;
                    attn = a;
                }
            }
            token::return_status(&mut o, i32::from(failed));
            if let Some((name, h)) = handle_out {
                token::return_value_int(&mut o, self.d, 0, &name, h);
            }
            let mut status = if failed { done::ERROR } else { 0 };
            if !last || attn {
                status |= done::MORE;
            }
            token::done(&mut o, self.d, tok::DONEPROC, status, 0xE0, 0);
            if attn {
                token::done(&mut o, self.d, tok::DONE, done::ATTN, 0, 0);
                break;
            }
        }
        self.send(&o.buf)?;
        Ok(true)
    }

    /// A transaction manager request (§2.2.6.9): BEGIN, COMMIT and ROLLBACK are
    /// acknowledged with their ENVCHANGE (the engine has no transactions: what a
    /// BACKUP does is never rolled back); the others are refused.
    fn transaction(&mut self, data: &[u8]) -> Result<Out, wire::Malformed> {
        let mut b = Bytes::new(data);
        if self.d.tds72 {
            rpc::skip_all_headers(&mut b)?;
        }
        let kind = b.u16("transaction request type")?;
        let mut o = Out::default();
        let begin = |c: &mut Self, o: &mut Out| {
            c.transaction = c.next_transaction;
            c.next_transaction += 1;
            token::envchange_bin(o, 8, &c.transaction.to_le_bytes(), &[]);
        };
        match kind {
            5 => {
                let _iso = b.u8("isolation level")?;
                let _name = b.b_varchar("transaction name")?;
                begin(self, &mut o);
            }
            7 | 8 => {
                let _name = b.b_varchar("transaction name")?;
                let flags = b.u8("transaction flags")?;
                let old = self.transaction.to_le_bytes();
                if self.transaction != 0 {
                    token::envchange_bin(&mut o, if kind == 7 { 9 } else { 10 }, &[], &old);
                }
                self.transaction = 0;
                if flags & 1 != 0 {
                    let _iso = b.u8("isolation level")?;
                    let _name = b.b_varchar("transaction name")?;
                    begin(self, &mut o);
                }
            }
            other => {
                self.msg(
                    &mut o,
                    8525,
                    16,
                    1,
                    format!(
                        "Transaction manager request {other} is not supported by openvdi-engine."
                    ),
                );
                token::done(&mut o, self.d, tok::DONE, done::ERROR, 0, 0);
                return Ok(o);
            }
        }
        token::done(&mut o, self.d, tok::DONE, 0, 0, 0);
        Ok(o)
    }
}
