//! TLS for TDS 7.x, with rustls (MS-TDS §3.3.5.1 and §2.2.6.5).
//!
//! * **Negotiation** ([`Tls::answer`]): the client's PRELOGIN ENCRYPTION byte and
//!   the server's setting give the answer, as SQL Server's table does: a client
//!   that says OFF gets OFF (only LOGIN7 travels encrypted) unless the server
//!   forces encryption, then REQ (everything encrypted); ON or REQ get ON
//!   (everything encrypted); NOT_SUP gets NOT_SUP (nothing encrypted), or, from a
//!   server that forces encryption, REQ and the connection ends.
//! * **Handshake** ([`handshake`]): TLS records travel inside TDS packets of type
//!   PRELOGIN (0x12) until the handshake is over; after that they go on the TCP
//!   stream as they are.
//! * **Login only**: LOGIN7 is read through TLS, then both sides drop it
//!   ([`read_login`]).
//! * **Whole session**: a pump thread ([`Pump`]) moves bytes between the TCP socket
//!   (TLS) and one end of a socket pair (plaintext); the connection's state machine
//!   reads and writes the other end exactly as it would a plain socket.
//!
//! * **TDS 8.0 strict** ([`strict_handshake`], `Encrypt=strict`): the client opens
//!   TLS on the bare TCP connection (its first byte is 0x16, a TLS handshake record,
//!   which no TDS packet type is), offering the ALPN protocol `tds/8.0`; PRELOGIN
//!   and everything after it travel inside that TLS session (MS-TDS §1.7 "TDS 8.0",
//!   §3.3.5.1: no TLS negotiation happens in PRELOGIN then). Same port, same
//!   certificate; the session goes through the [`Pump`] as a whole-session one.
//!
//! TDS 7.x: TLS 1.2 only (see `server_config`), and no session tickets: a ticket
//! sent after the handshake would land, unwrapped, in a stream a login-only client
//! reads as plaintext. Strict: TLS 1.2 or 1.3 (see `strict_config`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags};
use rustls::ServerConnection;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::login::enc;
use crate::wire::{self, ptype, ReadError};

/// Why TLS could not be set up (at start) or failed (on a connection).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the configuration or the peer.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// The socket.
    #[error("TLS I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A TDS packet during the handshake.
    #[error("{0}")]
    Read(#[from] ReadError),
    /// The client broke the handshake's framing.
    #[error("{0}")]
    Protocol(String),
}

/// What PRELOGIN decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No TLS at all.
    None,
    /// TLS for LOGIN7 only.
    LoginOnly,
    /// TLS for the whole session.
    Full,
    /// The client cannot encrypt and the server requires it: answer, then close.
    Refuse,
}

/// The ALPN protocol a TDS 8.0 client offers (MS-TDS §2.1, "tds/8.0").
pub const TDS8_ALPN: &[u8] = b"tds/8.0";

/// The first byte of a TLS handshake record (RFC 8446 §5.1, ContentType
/// handshake): what a TDS 8.0 client sends first. No TDS packet type is 0x16.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The endpoint's TLS setting: a certificate and whether encryption is forced.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
    /// The same certificate for TDS 8.0 strict clients.
    strict: Arc<rustls::ServerConfig>,
    /// Force encryption (SQL Server's "Force Encryption"): clients that say OFF
    /// get the whole session encrypted, clients that cannot encrypt are refused.
    pub force: bool,
    /// Where the certificate came from, for the log.
    pub source: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("force", &self.force)
            .field("source", &self.source)
            .finish()
    }
}

/// The TDS 7.x and the TDS 8.0 (strict) configurations of one certificate.
type Configs = (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>);

fn configs(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Configs, TlsError> {
    Ok((
        server_config(chain.clone(), key.clone_key())?,
        strict_config(chain, key)?,
    ))
}

/// TDS 8.0: TLS is the transport (as HTTPS), so TLS 1.3 is fine (and preferred);
/// ALPN `tds/8.0` is answered when offered (a client offering only other protocols
/// is refused by rustls with no_application_protocol, RFC 7301 §3.2).
fn strict_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    c.alpn_protocols = vec![TDS8_ALPN.to_vec()];
    // No resumption state kept for clients that come back.
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        // TLS 1.2 only, as SQL Server over TDS 7.x (it offers 1.3 only with TDS 8.0):
        // in 1.3 the client's last flight (its Finished) follows the server's, and
        // clients such as ODBC Driver 18 send it unwrapped, no longer inside
        // PRELOGIN packets, which a 7.x server cannot tell from a TDS header.
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

impl Tls {
    /// A certificate chain and its private key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let file_err = |p: &Path, why: String| TlsError::File {
            path: p.display().to_string(),
            why,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_err(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file_err(cert, "no CERTIFICATE in the file".into()));
        }
        let k = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
        let (config, strict) = configs(chain, k)?;
        Ok(Tls {
            config,
            strict,
            force: false,
            source: format!("{} / {}", cert.display(), key.display()),
        })
    }

    /// A self-signed certificate for `names` (DNS names or IP addresses),
    /// generated now; clients must trust it explicitly (TrustServerCertificate).
    pub fn self_signed(names: &[String]) -> Result<Tls, TlsError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let chain = vec![ck.cert.der().clone()];
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let (config, strict) = configs(chain, key)?;
        Ok(Tls {
            config,
            strict,
            force: false,
            source: format!("self-signed for {}", names.join(", ")),
        })
    }

    /// Force encryption (see [`Tls::force`]).
    pub fn forced(mut self, force: bool) -> Tls {
        self.force = force;
        self
    }

    /// The PRELOGIN answer to a client's ENCRYPTION byte (None: not sent) and what
    /// the connection does next.
    pub fn answer(tls: Option<&Tls>, client: Option<u8>) -> (u8, Mode) {
        // The high bit (ENCRYPT_CLIENT_CERT) is about client certificates, not
        // about whether to encrypt.
        let client = client.map(|c| c & 0x0F);
        match (tls, client) {
            (None, Some(enc::REQ)) => (enc::NOT_SUP, Mode::Refuse),
            (None, _) => (enc::NOT_SUP, Mode::None),
            (Some(t), None | Some(enc::NOT_SUP)) if t.force => (enc::REQ, Mode::Refuse),
            (Some(_), None | Some(enc::NOT_SUP)) => (enc::NOT_SUP, Mode::None),
            (Some(t), Some(enc::OFF)) if !t.force => (enc::OFF, Mode::LoginOnly),
            (Some(_), Some(enc::OFF)) => (enc::REQ, Mode::Full),
            (Some(_), Some(_)) => (enc::ON, Mode::Full),
        }
    }
}

/// The server side of the handshake, its records wrapped in PRELOGIN packets.
pub fn handshake(tls: &Tls, stream: &mut TcpStream) -> Result<ServerConnection, TlsError> {
    let mut conn = ServerConnection::new(Arc::clone(&tls.config))?;
    let send = |conn: &mut ServerConnection, stream: &mut TcpStream| -> Result<(), TlsError> {
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            wire::write_message(stream, ptype::PRELOGIN, &out, 4096)?;
        }
        Ok(())
    };
    // Bounded: a handshake is a handful of flights.
    for _ in 0..16 {
        if !conn.is_handshaking() {
            send(&mut conn, stream)?;
            return Ok(conn);
        }
        if conn.wants_write() {
            send(&mut conn, stream)?;
            continue;
        }
        let m = wire::read_message(stream)?;
        if m.ptype != ptype::PRELOGIN {
            return Err(TlsError::Protocol(format!(
                "packet type {} during the TLS handshake (expected PRELOGIN)",
                m.ptype
            )));
        }
        let mut rd = &m.data[..];
        while !rd.is_empty() {
            conn.read_tls(&mut rd)?;
            if let Err(e) = conn.process_new_packets() {
                let _ = send(&mut conn, stream); // the alert, best effort
                return Err(e.into());
            }
        }
    }
    Err(TlsError::Protocol(
        "the TLS handshake did not finish in 16 flights".into(),
    ))
}

/// TDS 8.0 strict: the server side of a TLS handshake the client started on the
/// bare TCP connection (its ClientHello is the first thing on it). Bounded by the
/// stream's read and write timeouts (the connection's login timeout). What the
/// client sent after its Finished stays buffered in the returned connection, for
/// the [`Pump`].
pub fn strict_handshake(tls: &Tls, stream: &mut TcpStream) -> Result<ServerConnection, TlsError> {
    let mut conn = ServerConnection::new(Arc::clone(&tls.strict))?;
    // Bounded: a handshake is a handful of flights; each complete_io reads or
    // writes at least one.
    for _ in 0..16 {
        if !conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(stream)?;
            }
            return Ok(conn);
        }
        match conn.complete_io(stream) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(TlsError::Protocol(
                    "the client closed the connection during the TLS handshake".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                // rustls reports a refused handshake as InvalidData wrapping its
                // error; the alert has been queued, send it best effort.
                let _ = conn.write_tls(stream);
                return Err(e.into());
            }
        }
    }
    Err(TlsError::Protocol(
        "the TLS handshake did not finish in 16 flights".into(),
    ))
}

/// Login-only encryption: the LOGIN7 message, read through TLS; afterwards the
/// connection is plaintext again.
pub fn read_login(
    mut conn: ServerConnection,
    stream: &mut TcpStream,
) -> Result<wire::Message, TlsError> {
    let mut s = rustls::Stream::new(&mut conn, stream);
    Ok(wire::read_message(&mut s)?)
}

/// How much decrypted data may wait for the connection before the pump stops
/// reading the client (and how much plaintext it takes in per step).
const PUMP_LIMIT: usize = 1 << 20;

/// Whole-session encryption: TLS on the TCP socket, plaintext on a socket pair.
#[derive(Debug)]
pub struct Pump;

impl Pump {
    /// Starts the pump thread; returns the plaintext end for the connection.
    pub fn start(tcp: TcpStream, conn: ServerConnection) -> std::io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        tcp.set_nonblocking(true)?;
        theirs.set_nonblocking(true)?;
        std::thread::Builder::new()
            .name("tds-tls".into())
            .spawn(move || {
                let _ = pump(tcp, conn, theirs);
            })?;
        Ok(ours)
    }
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// Until either side ends: client bytes → rustls → plaintext end, and back.
fn pump(
    mut tcp: TcpStream,
    mut tls: ServerConnection,
    mut plain: UnixStream,
) -> Result<(), TlsError> {
    let mut to_plain: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut tcp_eof = false;
    let result = loop {
        // Decrypted bytes out of rustls.
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => {
                    tcp_eof = true; // close_notify
                    break;
                }
                Ok(n) => to_plain.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tcp_eof = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Plaintext to the connection.
        while !to_plain.is_empty() {
            match plain.write(&to_plain) {
                Ok(n) => {
                    to_plain.drain(..n);
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Records to the client.
        while tls.wants_write() {
            match tls.write_tls(&mut tcp) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if tcp_eof && to_plain.is_empty() {
            break Ok(());
        }
        let mut tcp_flags = PollFlags::empty();
        if !tcp_eof && to_plain.len() < PUMP_LIMIT {
            tcp_flags |= PollFlags::IN;
        }
        if tls.wants_write() {
            tcp_flags |= PollFlags::OUT;
        }
        let mut plain_flags = PollFlags::empty();
        if !tls.wants_write() {
            plain_flags |= PollFlags::IN;
        }
        if !to_plain.is_empty() {
            plain_flags |= PollFlags::OUT;
        }
        let (tcp_ready, plain_ready) = {
            let mut fds = [
                PollFd::new(&tcp, tcp_flags),
                PollFd::new(&plain, plain_flags),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => break Err(std::io::Error::from(e).into()),
            }
            (fds[0].revents(), fds[1].revents())
        };
        let gone = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
        if tcp_ready.intersects(gone) && !tcp_eof {
            match tls.read_tls(&mut tcp) {
                Ok(0) => tcp_eof = true,
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        let _ = tls.write_tls(&mut tcp); // the alert, best effort
                        break Err(e.into());
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => break Err(e.into()),
            }
        }
        if plain_ready.intersects(gone) {
            match plain.read(&mut buf) {
                Ok(0) => {
                    // The connection is over: say so to the client and stop.
                    tls.send_close_notify();
                    let _ = tcp.set_nonblocking(false);
                    let _ = tcp.set_write_timeout(Some(std::time::Duration::from_secs(5)));
                    while tls.wants_write() {
                        if tls.write_tls(&mut tcp).is_err() {
                            break;
                        }
                    }
                    break Ok(());
                }
                Ok(n) => tls.writer().write_all(&buf[..n])?,
                Err(e) if would_block(&e) => {}
                Err(e) => break Err(e.into()),
            }
        }
    };
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let _ = plain.shutdown(std::net::Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_sql_servers_table() {
        let t = Tls::self_signed(&["localhost".into()]).unwrap();
        let f = t.clone().forced(true);
        let a = |tls: Option<&Tls>, c: Option<u8>| Tls::answer(tls, c);
        assert_eq!(a(None, Some(enc::OFF)), (enc::NOT_SUP, Mode::None));
        assert_eq!(a(None, Some(enc::REQ)), (enc::NOT_SUP, Mode::Refuse));
        assert_eq!(a(Some(&t), Some(enc::NOT_SUP)), (enc::NOT_SUP, Mode::None));
        assert_eq!(a(Some(&t), None), (enc::NOT_SUP, Mode::None));
        assert_eq!(a(Some(&t), Some(enc::OFF)), (enc::OFF, Mode::LoginOnly));
        assert_eq!(a(Some(&t), Some(enc::ON)), (enc::ON, Mode::Full));
        assert_eq!(a(Some(&t), Some(enc::REQ)), (enc::ON, Mode::Full));
        assert_eq!(a(Some(&t), Some(0x80 | enc::ON)), (enc::ON, Mode::Full));
        assert_eq!(a(Some(&f), Some(enc::OFF)), (enc::REQ, Mode::Full));
        assert_eq!(a(Some(&f), Some(enc::NOT_SUP)), (enc::REQ, Mode::Refuse));
    }
}
