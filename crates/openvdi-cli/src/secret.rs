//! Where the password or key file of an encrypted repository comes from: a key file
//! (`--key-file`), a password file (`--password-file`), `OPENVDI_PASSWORD`, or a
//! prompt when stdin is a terminal — never a plain flag (it would show in `ps` and
//! shell history), never printed (`redact` scrubs `OPENVDI_PASSWORD`, and every
//! password or key file read here, from all text).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use zeroize::Zeroizing;

use crate::config::Settings;
use crate::crypto::Secret;
use crate::exit::{err, Code};

/// The sources a command may take a secret from.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub password_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Credentials {
    pub fn from_settings(s: &Settings) -> Credentials {
        Credentials {
            password_file: s.password_file.clone(),
            key_file: s.key_file.clone(),
        }
    }

    /// True when a secret can be had without failing: a file named, the
    /// environment variable set, or a terminal to ask on.
    pub fn available(&self) -> bool {
        self.key_file.is_some()
            || self.password_file.is_some()
            || std::env::var("OPENVDI_PASSWORD").is_ok_and(|v| !v.is_empty())
            || std::io::stdin().is_terminal()
    }

    /// The secret that opens an existing repository; None when nothing was given
    /// and there is no terminal to ask on.
    pub fn secret(&self) -> Result<Option<Secret>> {
        if let Some(k) = &self.key_file {
            return read_key_file(k).map(Some);
        }
        if let Some(p) = &self.password_file {
            return read_password_file(p).map(Some);
        }
        if let Some(p) = env_password("OPENVDI_PASSWORD") {
            return Ok(Some(p));
        }
        if std::io::stdin().is_terminal() {
            return prompt("repository password: ").map(Some);
        }
        Ok(None)
    }

    /// The secret of a new repository (`init`): a key file (created if missing), a
    /// password file, `OPENVDI_PASSWORD`, or a prompt (asked twice).
    pub fn new_secret(&self) -> Result<Option<Secret>> {
        new_secret(
            self.password_file.as_deref(),
            self.key_file.as_deref(),
            "OPENVDI_PASSWORD",
        )
    }
}

/// The message for "no secret given".
pub fn none_given() -> anyhow::Error {
    err(
        Code::WrongKey,
        "the repository is encrypted: give its password (OPENVDI_PASSWORD, \
         --password-file FILE, or a terminal to type it on) or --key-file FILE",
    )
}

/// A new secret: from `password_file`, `key_file` (created if missing), the
/// environment variable `var`, or a prompt asked twice.
pub fn new_secret(
    password_file: Option<&Path>,
    key_file: Option<&Path>,
    var: &str,
) -> Result<Option<Secret>> {
    if let Some(k) = key_file {
        if !k.exists() {
            create_key_file(k)?;
        }
        return read_key_file(k).map(Some);
    }
    if let Some(p) = password_file {
        return read_password_file(p).map(Some);
    }
    if let Some(p) = env_password(var) {
        return Ok(Some(p));
    }
    if std::io::stdin().is_terminal() {
        let a = prompt("new password: ")?;
        let b = prompt("new password again: ")?;
        return match (&a, &b) {
            (Secret::Password(x), Secret::Password(y)) if x == y => Ok(Some(a)),
            _ => Err(err(Code::Usage, "the two passwords differ")),
        };
    }
    Ok(None)
}

fn env_password(var: &str) -> Option<Secret> {
    let v = std::env::var(var).ok().filter(|v| !v.is_empty())?;
    Some(Secret::Password(Zeroizing::new(v)))
}

fn prompt(text: &str) -> Result<Secret> {
    let p = rpassword::prompt_password(text)
        .map_err(|e| err(Code::WrongKey, format!("reading the password: {e}")))?;
    if p.is_empty() {
        return Err(err(Code::WrongKey, "an empty password"));
    }
    // Like OPENVDI_PASSWORD: masked in anything printed, should it ever get there.
    crate::redact::register_secret(&p);
    Ok(Secret::Password(Zeroizing::new(p)))
}

/// The first line of a password file.
fn read_password_file(p: &Path) -> Result<Secret> {
    let text = Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
        err(
            Code::WrongKey,
            format!("password file {}: {e}", p.display()),
        )
    })?);
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(err(
            Code::WrongKey,
            format!("password file {}: its first line is empty", p.display()),
        ));
    }
    crate::redact::register_secret(line);
    Ok(Secret::Password(Zeroizing::new(line.to_string())))
}

/// A key file's bytes (trailing whitespace dropped, so an editor's newline does
/// not change the key).
fn read_key_file(p: &Path) -> Result<Secret> {
    let mut b = Zeroizing::new(
        std::fs::read(p)
            .map_err(|e| err(Code::WrongKey, format!("key file {}: {e}", p.display())))?,
    );
    while b.last().is_some_and(|c| c.is_ascii_whitespace()) {
        b.pop();
    }
    if b.len() < 16 {
        return Err(err(
            Code::WrongKey,
            format!(
                "key file {}: {} bytes (a key file holds at least 16)",
                p.display(),
                b.len()
            ),
        ));
    }
    if let Ok(text) = std::str::from_utf8(&b) {
        crate::redact::register_secret(text);
    }
    Ok(Secret::KeyFile(b))
}

/// A new key file: 32 random bytes as 64 hex digits and a newline, mode 0600,
/// never over an existing file.
fn create_key_file(p: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| anyhow::anyhow!("creating key file {}: {e}", p.display()))?;
    let k = Zeroizing::new(crate::crypto::hex(&crate::crypto::random::<32>()));
    f.write_all(k.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    eprintln!(
        "openvdi: created key file {}: keep a copy somewhere safe, without it (and \
         without another key slot) the backups cannot be read",
        p.display()
    );
    Ok(())
}
