//! # openvdi-tds — a TDS endpoint, so SQL Server drivers can talk to the engine
//!
//! SQL Server's clients reach it over TDS (Microsoft's [MS-TDS] protocol). This
//! crate is the server side of TDS over TCP, written for openvdi: drivers such as
//! python-tds, pymssql (FreeTDS) or tiberius connect, log in with SQL
//! authentication, send SQL batches and `sp_executesql` RPC calls, cancel with
//! ATTENTION, and receive SQL Server's tokens (INFO/ERROR with number, state,
//! class, server and line; COLMETADATA/ROW with typed columns; DONE with row
//! counts). What runs the T-SQL is a [`Backend`]: `openvdi-engine` plugs its
//! engine in (`openvdi-engine serve`), and this crate knows nothing of BACKUP.
//!
//! ```no_run
//! use openvdi_tds::{Backend, Config, Reply, Request, Server};
//!
//! #[derive(Debug)]
//! struct Echo;
//! impl Backend for Echo {
//!     type Token = ();
//!     fn new_token(&self) {}
//!     fn cancel(&self, _: &()) {}
//!     fn execute(&self, _: &(), req: &Request) -> Reply {
//!         Reply::default()
//!     }
//!     fn server_name(&self) -> String { "echo".into() }
//!     fn database_exists(&self, _: &str) -> bool { true }
//! }
//! # fn main() -> std::io::Result<()> {
//! let cfg = Config::new("127.0.0.1:14330".parse().unwrap()).with_login("sa", "secret");
//! let server = Server::bind(cfg, Echo)?;
//! server.serve(); // one thread per connection
//! # Ok(()) }
//! ```
//!
//! Modules: [`wire`] (packets and bounds-checked fields), [`token`] (the
//! server's tokens), [`login`] (PRELOGIN and LOGIN7), [`rpc`] (RPC requests and
//! `sp_executesql`), and the connection state machine (private).
//!
//! TLS ([`tls`], rustls): with [`Config::with_tls`], PRELOGIN negotiates
//! encryption as SQL Server does (login-only for a client that says OFF, the whole
//! session for ON/REQ, or forced); without it PRELOGIN answers ENCRYPT_NOT_SUP.
//! TDS 8.0 (`Encrypt=strict`) on the same port: a connection whose first byte is a
//! TLS handshake record (0x16) gets TLS 1.3 or 1.2 at once, ALPN `tds/8.0`, and
//! PRELOGIN, LOGIN7 and the session inside it; without TLS configured such a
//! connection is closed.
//!
//! What is not here (yet): MARS, integrated authentication, bulk load.
//!
//! [MS-TDS]: https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-tds/

#![forbid(unsafe_code)]

mod conn;
pub mod login;
pub mod rpc;
pub mod tls;
pub mod token;
pub mod wire;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The port `openvdi-engine serve` listens on by default: 14330, on loopback. Not
/// SQL Server's 1433, so a real SQL Server on the same machine is never shadowed.
pub const DEFAULT_PORT: u16 = 14330;

/// A value a client sent as a parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer (tinyint, smallint, int, bigint, bit).
    Int(i64),
    /// A string (nvarchar, varchar, nchar, char).
    Str(String),
}

/// One request for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The T-SQL.
    pub sql: String,
    /// Parameters (for `sp_executesql`), by name with the `@`.
    pub params: Vec<(String, Value)>,
    /// The connection's current database.
    pub database: String,
}

/// The SQL Server type of a result-set column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColType {
    /// nvarchar (nvarchar(4000), or nvarchar(max) for longer values).
    #[default]
    NVarChar,
    /// tinyint.
    TinyInt,
    /// smallint.
    SmallInt,
    /// int.
    Int,
    /// bigint.
    BigInt,
    /// bit.
    Bit,
    /// datetime.
    DateTime,
    /// numeric(precision, scale).
    Numeric(u8, u8),
    /// uniqueidentifier.
    UniqueIdentifier,
}

/// A result-set column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type. Values are display strings in the form [`token`] documents; a column
    /// whose values do not all read in that form goes out as nvarchar.
    pub ty: ColType,
}

/// A result set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Columns.
    pub columns: Vec<Column>,
    /// Rows of display values; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

/// A SQL Server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    /// Number.
    pub number: u32,
    /// State.
    pub state: u8,
    /// Class (severity): above 10 goes out as an ERROR token, else INFO.
    pub class: u8,
    /// Line in the batch.
    pub line: u32,
    /// Text.
    pub text: String,
}

/// One output of a request, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A message (INFO or ERROR token).
    Message(Msg),
    /// A result set (COLMETADATA, ROW…, DONE with the count).
    Table(Table),
    /// The current database changed (ENVCHANGE type 1, sent before the message).
    Database(String),
}

/// What a request produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Outputs in order (the error's messages last).
    pub items: Vec<Item>,
    /// Whether the request failed (the final DONE carries DONE_ERROR).
    pub failed: bool,
}

/// What runs the T-SQL. One [`Backend::Token`] per connection lets ATTENTION (or
/// a dropped connection) cancel what that connection runs.
pub trait Backend: Send + Sync + 'static {
    /// A connection's cancel handle.
    type Token: Send + Sync + 'static;
    /// A new token (one per connection).
    fn new_token(&self) -> Self::Token;
    /// Cancel what runs under `token` (called from another thread than
    /// [`Backend::execute`]); must make it return soon.
    fn cancel(&self, token: &Self::Token);
    /// Make `token` usable again after a cancelled request.
    fn reset(&self, _token: &Self::Token) {}
    /// Run one request (may block for as long as a BACKUP takes).
    fn execute(&self, token: &Self::Token, req: &Request) -> Reply;
    /// The server name sent in LOGINACK-time messages and every INFO/ERROR token.
    fn server_name(&self) -> String;
    /// The product version sent in LOGINACK (major, minor, build).
    fn version(&self) -> (u8, u8, u16) {
        (16, 0, 1000)
    }
    /// Whether a database exists (LOGIN7's database; system databases count).
    fn database_exists(&self, name: &str) -> bool;
}

/// The endpoint's configuration.
#[derive(Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// SQL logins: user name and password.
    logins: Vec<(String, String)>,
    /// Most connections at once; more are closed at once (default 256).
    pub max_connections: usize,
    /// How long a client may take from connecting to finishing its login (10 s).
    pub login_timeout: Duration,
    /// TLS (None: PRELOGIN answers ENCRYPT_NOT_SUP).
    pub tls: Option<tls::Tls>,
}

impl std::fmt::Debug for Config {
    // The passwords are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field(
                "logins",
                &self
                    .logins
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("max_connections", &self.max_connections)
            .field("login_timeout", &self.login_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Config {
    /// Listen on `listen`, no logins yet.
    pub fn new(listen: SocketAddr) -> Config {
        Config {
            listen,
            logins: Vec::new(),
            max_connections: 256,
            login_timeout: Duration::from_secs(10),
            tls: None,
        }
    }

    /// Serve TLS with this certificate (see [`tls`]).
    pub fn with_tls(mut self, tls: tls::Tls) -> Config {
        self.tls = Some(tls);
        self
    }

    /// Add a SQL login.
    pub fn with_login(mut self, user: impl Into<String>, password: impl Into<String>) -> Config {
        self.logins.push((user.into(), password.into()));
        self
    }

    /// Whether `user` with `password` may log in. User names compare without
    /// case (SQL Server's default collation); passwords exactly, in time that does
    /// not depend on where they differ.
    pub(crate) fn check_login(&self, user: &str, password: &str) -> bool {
        let mut ok = false;
        for (u, p) in &self.logins {
            if u.eq_ignore_ascii_case(user) {
                ok |= constant_time_eq(p.as_bytes(), password.as_bytes());
            }
        }
        ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// A bound endpoint.
#[derive(Debug)]
pub struct Server<B: Backend> {
    listener: TcpListener,
    shared: Arc<Shared<B>>,
}

struct Shared<B: Backend> {
    cfg: Config,
    backend: B,
    connections: AtomicUsize,
    spid: AtomicUsize,
}

impl<B: Backend> std::fmt::Debug for Shared<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("cfg", &self.cfg).finish()
    }
}

impl<B: Backend> Server<B> {
    /// Bind the listening socket.
    pub fn bind(cfg: Config, backend: B) -> std::io::Result<Server<B>> {
        let listener = TcpListener::bind(cfg.listen)?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                cfg,
                backend,
                connections: AtomicUsize::new(0),
                spid: AtomicUsize::new(0),
            }),
        })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept connections forever, one thread each. A connection's failure
    /// (malformed packets, a dropped client) ends that connection only.
    pub fn serve(&self) {
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else { continue };
            let shared = Arc::clone(&self.shared);
            let n = shared.connections.fetch_add(1, Ordering::AcqRel);
            if n >= shared.cfg.max_connections {
                shared.connections.fetch_sub(1, Ordering::AcqRel);
                drop(stream);
                continue;
            }
            let spid = (shared.spid.fetch_add(1, Ordering::Relaxed) % 32000) as u16 + 51;
            let spawned = std::thread::Builder::new()
                .name(format!("tds-{spid}"))
                .spawn(move || {
                    let peer = stream.peer_addr().ok();
                    if let Err(e) = conn::run(&shared, stream, spid) {
                        eprintln!(
                            "openvdi-tds: connection {spid} from {}: {e}",
                            peer.map_or_else(|| "?".to_string(), |p| p.to_string())
                        );
                    }
                    shared.connections.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_check_and_never_print_passwords() {
        let c = Config::new("127.0.0.1:0".parse().unwrap())
            .with_login("sa", "Secret#1")
            .with_login("backup", "b");
        assert!(c.check_login("SA", "Secret#1"));
        assert!(!c.check_login("sa", "secret#1"));
        assert!(!c.check_login("sa", "Secret#"));
        assert!(!c.check_login("sa", ""));
        assert!(!c.check_login("nobody", "Secret#1"));
        assert!(c.check_login("backup", "b"));
        let dbg = format!("{c:?}");
        assert!(dbg.contains("backup") && !dbg.contains("Secret"));
    }
}
