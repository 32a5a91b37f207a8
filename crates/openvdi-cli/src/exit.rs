//! The exit-code table, and the error type that carries a code through `anyhow`.
//!
//! Error policy: every command returns `anyhow::Result`; errors get context on the
//! way up. Where the cause decides the exit code (verification failed, repository
//! missing, lock held, interrupted), the failing layer wraps it in [`Exit`] and
//! `main` finds it with `downcast_ref` anywhere in the chain. Anything else is 1.

use std::fmt;

/// Documented exit codes (README "Exit codes"). Scripts depend on them: never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The command did what it was asked.
    Ok = 0,
    /// Any failure not listed below.
    Failure = 1,
    /// Bad command line or configuration (clap also exits 2).
    Usage = 2,
    /// A checksum, a size or the MTF walk did not match: the backup is damaged.
    Verify = 3,
    /// The repository does not exist (or holds no such backup).
    RepoMissing = 10,
    /// Another live process holds the repository lock.
    LockHeld = 11,
    /// The repository is encrypted and the password or key file given does not open
    /// it, or none was given (or a key file named cannot be read).
    WrongKey = 12,
    /// Interrupted by SIGINT/SIGTERM; the set was aborted and nothing partial is listed.
    Interrupted = 130,
}

impl Code {
    /// The process exit status.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
    /// The stable lower-case name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Failure => "failure",
            Code::Usage => "usage",
            Code::Verify => "verification_failed",
            Code::RepoMissing => "repository_missing",
            Code::LockHeld => "lock_held",
            Code::WrongKey => "wrong_password",
            Code::Interrupted => "interrupted",
        }
    }
}

/// An error that decides the exit code. Wrap the cause's message in it.
#[derive(Debug)]
pub struct Exit {
    pub code: Code,
    pub message: String,
}

impl Exit {
    pub fn new(code: Code, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Builds an `anyhow::Error` carrying `code`.
pub fn err(code: Code, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit::new(code, message))
}

/// The exit code an error chain asks for: the first [`Exit`] found, else 1.
pub fn code_of(e: &anyhow::Error) -> Code {
    e.chain()
        .find_map(|c| c.downcast_ref::<Exit>().map(|x| x.code))
        .unwrap_or(Code::Failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn code_survives_context() {
        let e: anyhow::Result<()> = Err(err(Code::LockHeld, "held"));
        let e = e.context("outer").unwrap_err();
        assert_eq!(code_of(&e), Code::LockHeld);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Code::Failure);
        assert_eq!(Code::Interrupted.as_i32(), 130);
    }
}
