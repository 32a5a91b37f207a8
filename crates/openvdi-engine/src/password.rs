//! Media and backup set passwords (`BACKUP … WITH MEDIAPASSWORD = '…', PASSWORD =
//! '…'`, SQL Server 2005–2008; deprecated since and removed in SQL Server 2012).
//!
//! MTF gives each TAPE block (the media) and each SSET block (the backup set) a
//! password field: an encryption-algorithm number and a tape address pointing at
//! the stored bytes (`openvdi_mtf::password_field`). What a writer stores there is
//! its own business; SQL Server's algorithm is undocumented, so the engine can
//! neither check a password SQL Server wrote nor write one SQL Server would accept.
//!
//! What the engine writes (algorithm [`ALGORITHM`], 0x4F56, `VO` in the file):
//!
//! ```text
//! "OVP1"  salt: 16 random bytes  iterations: u32 LE  digest: 32 bytes
//! ```
//!
//! `digest` = BLAKE3 in key-derivation mode (context [`CONTEXT`]) over the salt and
//! the password as UTF-16LE (passwords are case-sensitive, as SQL Server's), then
//! `iterations` rounds of keyed BLAKE3 (the previous digest as key, the salt as
//! input). BLAKE3 because the workspace already depends on it; salted so equal
//! passwords do not give equal fields; iterated so each guess costs something.
//! It is *not* a memory-hard KDF: like SQL Server's, this protection is weak — the
//! pages are not encrypted, anyone with the file can read them with a hex editor,
//! and it only stops a restore by mistake or by a tool that honours the field.
//! Use encrypted storage (or BACKUP … WITH ENCRYPTION on a real server) for secrecy.
//!
//! Reading: a protected field needs the password (else 3279 "Access is denied due to
//! a password failure", SQL Server's text); a wrong one is 3279 too; a field written
//! by other software (another algorithm, or bytes not in the engine's layout) is
//! 3279 whatever is given, with a note saying why, since the engine cannot check it.

use crate::error::{Message, SqlError};

/// The MTF password encryption algorithm number the engine writes.
pub const ALGORITHM: u16 = 0x4F56;
/// BLAKE3 key-derivation context of the digest.
pub const CONTEXT: &str = "openvdi 2026 MTF media and backup set password v1";
/// Rounds written.
pub const ITERATIONS: u32 = 20_000;
/// Rounds accepted when reading: a field claiming more is not the engine's (a
/// hostile field must not make a RESTORE spin for hours).
const MAX_ITERATIONS: u32 = 1_000_000;
const MAGIC: &[u8; 4] = b"OVP1";
/// Bytes of a sealed field.
pub const SEALED_LEN: usize = 4 + 16 + 4 + 32;

/// Which password a field protects, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The media set (TAPE block, MEDIAPASSWORD).
    Media,
    /// The backup set (SSET block, PASSWORD).
    Set,
}

fn digest(salt: &[u8; 16], iterations: u32, password: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(salt);
    for u in password.encode_utf16() {
        h.update(&u.to_le_bytes());
    }
    let mut d = *h.finalize().as_bytes();
    for _ in 0..iterations {
        d = *blake3::keyed_hash(&d, salt).as_bytes();
    }
    d
}

/// The bytes to store in a password field for `password` (a fresh salt each time).
pub fn seal(password: &str) -> Vec<u8> {
    let salt = crate::catalog::random_bytes();
    let mut v = Vec::with_capacity(SEALED_LEN);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&salt);
    v.extend_from_slice(&ITERATIONS.to_le_bytes());
    v.extend_from_slice(&digest(&salt, ITERATIONS, password));
    v
}

/// SQL Server's 3279, exactly its text.
pub fn denied() -> SqlError {
    SqlError::msg(3279, "Access is denied due to a password failure")
}

/// Check `given` against a protected field read from the stream (untrusted).
pub fn check(
    field: &openvdi_mtf::PasswordField,
    given: Option<&str>,
    scope: Scope,
) -> Result<(), SqlError> {
    let what = match scope {
        Scope::Media => "media set (MEDIAPASSWORD)",
        Scope::Set => "backup set (PASSWORD)",
    };
    let foreign = |why: String| {
        let mut e = denied();
        e.info.push(Message::info(
            50000,
            format!(
                "The {what} is password-protected by other software ({why}); \
                 openvdi can check only the passwords it wrote itself."
            ),
        ));
        e
    };
    if field.algorithm != ALGORITHM {
        return Err(foreign(format!(
            "password algorithm {:#06x}",
            field.algorithm
        )));
    }
    let b = match field.data.as_deref() {
        Some(b) if b.len() == SEALED_LEN && &b[..4] == MAGIC => b,
        _ => {
            return Err(foreign(
                "its password field is not in openvdi's layout".into(),
            ))
        }
    };
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&b[4..20]);
    let iterations = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
    if iterations > MAX_ITERATIONS {
        return Err(foreign(format!("{iterations} hash rounds")));
    }
    let Some(given) = given else {
        return Err(denied());
    };
    let d = digest(&salt, iterations, given);
    // Compare without an early exit.
    let diff = d.iter().zip(&b[24..56]).fold(0u8, |a, (x, y)| a | (x ^ y));
    if diff == 0 {
        Ok(())
    } else {
        Err(denied())
    }
}

/// A password given to a statement: kept out of `Debug` output (statements and
/// options are logged and printed in test failures).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The passwords a reading statement was given, and whether the backup set's is
/// checked (LABELONLY reads only the media header).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub media: Option<Secret>,
    pub set: Option<Secret>,
    pub check_set: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(b: Vec<u8>) -> openvdi_mtf::PasswordField {
        openvdi_mtf::PasswordField {
            algorithm: ALGORITHM,
            data: Some(b),
        }
    }

    #[test]
    fn seal_and_check() {
        let f = field(seal("Pa55 wörd"));
        assert!(check(&f, Some("Pa55 wörd"), Scope::Media).is_ok());
        for bad in [None, Some("pa55 wörd"), Some(""), Some("Pa55 wörd ")] {
            assert_eq!(check(&f, bad, Scope::Set).unwrap_err().number(), 3279);
        }
        // Fresh salt: the same password never gives the same bytes.
        assert_ne!(seal("x"), seal("x"));
        assert_eq!(seal("x").len(), SEALED_LEN);
    }

    #[test]
    fn foreign_or_hostile_fields_are_denied_with_a_note() {
        let mut other = field(seal("x"));
        other.algorithm = 1;
        let e = check(&other, Some("x"), Scope::Media).unwrap_err();
        assert_eq!(e.number(), 3279);
        assert!(e.info[0].text.contains("other software"), "{:?}", e.info);
        for data in [None, Some(vec![]), Some(vec![0; SEALED_LEN])] {
            let f = openvdi_mtf::PasswordField {
                algorithm: ALGORITHM,
                data,
            };
            assert_eq!(check(&f, Some("x"), Scope::Set).unwrap_err().number(), 3279);
        }
        let mut spin = seal("x");
        spin[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            check(&field(spin), Some("x"), Scope::Set)
                .unwrap_err()
                .number(),
            3279
        );
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }
}
