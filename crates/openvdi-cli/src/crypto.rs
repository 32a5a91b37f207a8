//! Encrypted repositories: the config object and its key slots, the per-purpose
//! subkeys, and the AEAD of stored frames and manifests. The byte-level format is
//! `docs/REPOSITORY.md`; this file is its implementation, and the two are kept in step.
//!
//! * A random 32-byte master key never leaves memory unwrapped. Each *key slot* of
//!   the config object holds it wrapped (AES-256-GCM) under a key-encryption key
//!   (KEK) derived from a password (argon2id, parameters and salt in the slot) or
//!   from a key file (HKDF-SHA256). Adding or removing a slot rewrites the config
//!   object only, never a data object.
//! * Subkeys come from the master key with HKDF-SHA256 (salt = the repository id,
//!   info = `openvdi/v2/<purpose>`): one for manifests, one MAC key for the config
//!   object, one for lock objects.
//! * Each stored stripe has its own AES-256-GCM key, HKDF of the master key with a
//!   random 16-byte salt from the stripe header and the backup id and stripe index
//!   in `info`. The nonce is then a plain counter (frame index, final flag): unique
//!   because the key is unique to this one object and the counter never repeats in
//!   it. The associated data names repository, backup, stripe, position, final flag,
//!   codec and raw length, so a frame authenticates only at its own place.
//!
//! Only well-kept RustCrypto crates do the cryptography; nothing here is home-made
//! beyond concatenating the inputs as the document says.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The config object of an encrypted repository (an unencrypted one has
/// `openvdi-repo.json` instead; a client that knows only that one refuses this
/// repository as missing, so it can never write into it in the clear).
pub const CONFIG: &str = "openvdi-config.json";
/// The repository format with encryption.
pub const FORMAT: u32 = 2;
pub const AEAD_NAME: &str = "aes-256-gcm";
pub const TAG_LEN: usize = 16;
pub const SALT_LEN: usize = 16;
/// Frame associated data starts with this.
pub const FRAME_AD_MAGIC: &[u8; 8] = b"OVDIFRM2";
/// A config object larger than this is damaged (a real one is a few KiB).
pub const MAX_CONFIG: usize = 1 << 20;
/// Largest argon2id memory accepted from a config object (a bigger one would be a
/// denial of service planted in the repository).
const MAX_KDF_MEMORY_KIB: u32 = 4 << 20;
const MAX_KDF_ITERATIONS: u32 = 64;

type HmacSha256 = Hmac<Sha256>;

/// What opens a key slot.
pub enum Secret {
    Password(Zeroizing<String>),
    KeyFile(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Password(_) => "Secret::Password(…)",
            Secret::KeyFile(_) => "Secret::KeyFile(…)",
        })
    }
}

impl Secret {
    fn kind(&self) -> SlotKind {
        match self {
            Secret::Password(_) => SlotKind::Password,
            Secret::KeyFile(_) => SlotKind::KeyFile,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    Password,
    #[serde(rename = "keyfile")]
    KeyFile,
}

/// argon2id's cost parameters, recorded per slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Params {
    /// 64 MiB, 3 passes, 1 lane (OWASP's argon2id guidance), unless
    /// `OPENVDI_KDF_MEMORY_MIB` / `OPENVDI_KDF_ITERATIONS` say otherwise.
    pub fn from_env() -> Argon2Params {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        Argon2Params {
            memory_kib: num("OPENVDI_KDF_MEMORY_MIB").map_or(64 * 1024, |m| m.max(1) * 1024),
            iterations: num("OPENVDI_KDF_ITERATIONS").unwrap_or(3).max(1),
            parallelism: 1,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Slot {
    pub id: u32,
    pub kind: SlotKind,
    pub created: chrono::DateTime<chrono::Utc>,
    /// Password slots: argon2id's parameters (the salt is `salt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2id: Option<Argon2Params>,
    /// 16 bytes, hex: argon2id's salt, or HKDF's salt for a key file.
    pub salt: String,
    /// 12 bytes, hex.
    pub nonce: String,
    /// The master key under the KEK: 32 bytes of ciphertext + 16 of tag, hex.
    pub wrapped: String,
}

/// The authenticated body of the config object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigBody {
    pub format: u32,
    /// 16 bytes, hex.
    pub repo_id: String,
    pub aead: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub tool_version: String,
    pub slots: Vec<Slot>,
}

/// The stored config object: the body as a JSON string (so its exact bytes are
/// what the MAC covers) and HMAC-SHA256 of those bytes under the config MAC key.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    format: u32,
    body: String,
    mac: String,
}

/// Why a repository did not open.
#[derive(Debug)]
pub enum UnlockError {
    /// No slot of the secret's kind opened: a wrong password or key file.
    Wrong,
    /// The config object itself is malformed or fails its MAC.
    Damaged(String),
}

/// An unlocked repository's keys.
pub struct Keys {
    pub repo_id: [u8; 16],
    master: Zeroizing<[u8; 32]>,
    /// The slot that opened it (0 for a repository just created: slot 1).
    pub slot_used: u32,
    pub body: ConfigBody,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("repo_id", &hex(&self.repo_id))
            .field("slot_used", &self.slot_used)
            .finish_non_exhaustive()
    }
}

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS random source failing is not something to continue past.
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    b
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// One lower-case hex digit. Strict on purpose: accepting `A`–`F` too would let a
/// byte of a stored object be flipped (`a` ↔ `A` is one bit) without any check
/// noticing, and every stored byte must matter.
fn nibble(c: u8) -> Result<u8, String> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(format!("{:?} is not a lower-case hex digit", c as char)),
    }
}

pub fn unhex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let bytes = s.as_bytes();
    if bytes.len() != 2 * N {
        return Err(format!(
            "expected {} hex digits, got {}",
            2 * N,
            bytes.len()
        ));
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(bytes[2 * i])? << 4 | nibble(bytes[2 * i + 1])?;
    }
    Ok(out)
}

fn unhex_vec(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    b.chunks_exact(2)
        .map(|d| Ok(nibble(d[0])? << 4 | nibble(d[1])?))
        .collect()
}

/// HKDF-SHA256(salt, ikm, info) → 32 bytes.
fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let info: Vec<u8> = info.concat();
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(&info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

fn slot_ad(repo_id: &[u8; 16], slot: u32) -> Vec<u8> {
    [b"openvdi/v2/slot".as_slice(), repo_id, &slot.to_le_bytes()].concat()
}

/// The key-encryption key of a slot.
fn kek(secret: &Secret, slot: &Slot) -> Result<Zeroizing<[u8; 32]>, String> {
    let salt: [u8; SALT_LEN] = unhex(&slot.salt).map_err(|e| format!("slot salt: {e}"))?;
    match secret {
        Secret::KeyFile(k) => Ok(hkdf(&salt, k, &[b"openvdi/v2/keyfile-kek"])),
        Secret::Password(p) => {
            let a = slot
                .argon2id
                .ok_or("a password slot without argon2id parameters")?;
            if a.memory_kib > MAX_KDF_MEMORY_KIB
                || a.iterations > MAX_KDF_ITERATIONS
                || a.parallelism == 0
                || a.parallelism > 16
            {
                return Err(format!(
                    "slot {}: argon2id parameters out of range",
                    slot.id
                ));
            }
            let params = argon2::Params::new(a.memory_kib, a.iterations, a.parallelism, Some(32))
                .map_err(|e| format!("slot {}: argon2id parameters: {e}", slot.id))?;
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = Zeroizing::new([0u8; 32]);
            argon
                .hash_password_into(p.as_bytes(), &salt, out.as_mut())
                .map_err(|e| format!("argon2id: {e}"))?;
            Ok(out)
        }
    }
}

fn make_slot(
    id: u32,
    secret: &Secret,
    params: Argon2Params,
    repo_id: &[u8; 16],
    master: &[u8; 32],
) -> Result<Slot, String> {
    let nonce: [u8; 12] = random();
    let mut slot = Slot {
        id,
        kind: secret.kind(),
        created: chrono::Utc::now(),
        argon2id: matches!(secret, Secret::Password(_)).then_some(params),
        salt: hex(&random::<SALT_LEN>()),
        nonce: hex(&nonce),
        wrapped: String::new(),
    };
    let k = kek(secret, &slot)?;
    let mut buf = master.to_vec();
    cipher(&k)
        .encrypt_in_place(Nonce::from_slice(&nonce), &slot_ad(repo_id, id), &mut buf)
        .map_err(|_| "wrapping the master key failed")?;
    slot.wrapped = hex(&buf);
    Ok(slot)
}

fn unwrap_slot(secret: &Secret, slot: &Slot, repo_id: &[u8; 16]) -> Option<Zeroizing<[u8; 32]>> {
    if slot.kind != secret.kind() {
        return None;
    }
    let k = kek(secret, slot).ok()?;
    let nonce: [u8; 12] = unhex(&slot.nonce).ok()?;
    let mut buf = Zeroizing::new(unhex_vec(&slot.wrapped).ok()?);
    if buf.len() != 32 + TAG_LEN {
        return None;
    }
    cipher(&k)
        .decrypt_in_place(
            Nonce::from_slice(&nonce),
            &slot_ad(repo_id, slot.id),
            &mut *buf,
        )
        .ok()?;
    let mut m = Zeroizing::new([0u8; 32]);
    m.copy_from_slice(&buf[..32]);
    Some(m)
}

impl Keys {
    /// A new repository: fresh id and master key, one slot for `secret`.
    pub fn create(secret: &Secret, params: Argon2Params) -> Result<Keys, String> {
        let repo_id: [u8; 16] = random();
        let master = Zeroizing::new(random::<32>());
        let slot = make_slot(1, secret, params, &repo_id, &master)?;
        Ok(Keys {
            repo_id,
            master,
            slot_used: 1,
            body: ConfigBody {
                format: FORMAT,
                repo_id: hex(&repo_id),
                aead: AEAD_NAME.into(),
                created: chrono::Utc::now(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
                slots: vec![slot],
            },
        })
    }

    /// Opens a stored config object with `secret`: the first slot it unwraps gives
    /// the master key, which must then authenticate the whole config object.
    pub fn open(stored: &[u8], secret: &Secret) -> Result<Keys, UnlockError> {
        let damaged = |m: String| UnlockError::Damaged(m);
        if stored.len() > MAX_CONFIG {
            return Err(damaged(format!("{} bytes", stored.len())));
        }
        let env: Envelope =
            serde_json::from_slice(stored).map_err(|e| damaged(format!("unreadable: {e}")))?;
        if env.format != FORMAT {
            return Err(damaged(format!(
                "repository format {} (this openvdi reads 1 and {FORMAT})",
                env.format
            )));
        }
        let body: ConfigBody = serde_json::from_str(&env.body)
            .map_err(|e| damaged(format!("unreadable body: {e}")))?;
        if body.format != FORMAT || body.aead != AEAD_NAME {
            return Err(damaged(format!(
                "format {} with {:?} (this openvdi knows format {FORMAT} with {AEAD_NAME})",
                body.format, body.aead
            )));
        }
        let repo_id: [u8; 16] =
            unhex(&body.repo_id).map_err(|e| damaged(format!("repo_id: {e}")))?;
        let Some((slot_used, master)) = body
            .slots
            .iter()
            .find_map(|s| unwrap_slot(secret, s, &repo_id).map(|m| (s.id, m)))
        else {
            return Err(UnlockError::Wrong);
        };
        let keys = Keys {
            repo_id,
            master,
            slot_used,
            body,
        };
        let mac: [u8; 32] = unhex(&env.mac).map_err(|e| damaged(format!("mac: {e}")))?;
        if !keys.verify_mac("config", env.body.as_bytes(), &mac) {
            return Err(damaged(
                "the config object fails its MAC (edited or damaged)".into(),
            ));
        }
        Ok(keys)
    }

    /// A copy to change (key management edits the slots, then stores the copy).
    pub fn duplicate(&self) -> Keys {
        Keys {
            repo_id: self.repo_id,
            master: Zeroizing::new(*self.master),
            slot_used: self.slot_used,
            body: self.body.clone(),
        }
    }

    /// The config object as stored (body and its MAC).
    pub fn to_config(&self) -> Vec<u8> {
        let body = serde_json::to_string_pretty(&self.body).expect("a config serialises");
        let mac = self.mac("config", body.as_bytes());
        let env = Envelope {
            format: FORMAT,
            body,
            mac: hex(&mac),
        };
        let mut v = serde_json::to_vec_pretty(&env).expect("an envelope serialises");
        v.push(b'\n');
        v
    }

    /// Adds a slot for `secret`; returns its id. Only the config object changes.
    pub fn add_slot(&mut self, secret: &Secret, params: Argon2Params) -> Result<u32, String> {
        let id = self.body.slots.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        let slot = make_slot(id, secret, params, &self.repo_id, &self.master)?;
        self.body.slots.push(slot);
        Ok(id)
    }

    /// Removes slot `id`; the last slot is never removed.
    pub fn remove_slot(&mut self, id: u32) -> Result<(), String> {
        if !self.body.slots.iter().any(|s| s.id == id) {
            return Err(format!("no key slot {id}"));
        }
        if self.body.slots.len() == 1 {
            return Err(format!(
                "slot {id} is the only key slot: removing it would lock everyone out"
            ));
        }
        self.body.slots.retain(|s| s.id != id);
        Ok(())
    }

    fn subkey(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        hkdf(
            &self.repo_id,
            self.master.as_ref(),
            &[b"openvdi/v2/", purpose.as_bytes()],
        )
    }

    /// HMAC-SHA256 under the `<purpose>-mac` subkey.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let k = self.subkey(&format!("{purpose}-mac"));
        let mut m = <HmacSha256 as Mac>::new_from_slice(k.as_ref()).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().into()
    }

    pub fn verify_mac(&self, purpose: &str, data: &[u8], tag: &[u8; 32]) -> bool {
        let k = self.subkey(&format!("{purpose}-mac"));
        let mut m = <HmacSha256 as Mac>::new_from_slice(k.as_ref()).expect("any key length");
        m.update(data);
        m.verify_slice(tag).is_ok()
    }

    fn manifest_ad(&self, key: &str) -> Vec<u8> {
        [
            b"openvdi/v2/manifest".as_slice(),
            &self.repo_id,
            key.as_bytes(),
        ]
        .concat()
    }

    /// Encrypts a manifest stored at `key` (random nonce: a few per backup).
    pub fn seal_manifest(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = random();
        let mut buf = plain.to_vec();
        cipher(&self.subkey("manifest"))
            .encrypt_in_place(Nonce::from_slice(&nonce), &self.manifest_ad(key), &mut buf)
            .expect("AES-GCM encrypts any manifest-sized message");
        let v = serde_json::json!({
            "format": manifest_format::ENCRYPTED,
            "nonce": hex(&nonce),
            "ciphertext": hex(&buf),
        });
        let mut out = serde_json::to_vec_pretty(&v).expect("serialises");
        out.push(b'\n');
        out
    }

    /// Decrypts a manifest found at `key`; Err says why it is damaged.
    pub fn open_manifest(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, String> {
        #[derive(Deserialize)]
        struct Sealed {
            format: u32,
            nonce: String,
            ciphertext: String,
        }
        let s: Sealed = serde_json::from_slice(stored)
            .map_err(|_| "not an encrypted manifest (an encrypted repository holds only those)")?;
        if s.format != manifest_format::ENCRYPTED {
            return Err(format!("encrypted manifest format {}", s.format));
        }
        let nonce: [u8; 12] = unhex(&s.nonce)?;
        let mut buf = unhex_vec(&s.ciphertext)?;
        cipher(&self.subkey("manifest"))
            .decrypt_in_place(Nonce::from_slice(&nonce), &self.manifest_ad(key), &mut buf)
            .map_err(|_| {
                "the manifest does not authenticate (edited, damaged, or moved from \
                 another backup or repository)"
                    .to_string()
            })?;
        Ok(buf)
    }

    /// The key of one stored stripe.
    pub fn stripe(&self, backup_id: &str, index: u32, salt: &[u8; SALT_LEN]) -> StripeKey {
        let id = backup_id.as_bytes();
        let id_len = (id.len().min(u16::MAX as usize) as u16).to_le_bytes();
        let k = hkdf(
            salt,
            self.master.as_ref(),
            &[
                b"openvdi/v2/stripe",
                &self.repo_id,
                &id_len,
                id,
                &index.to_le_bytes(),
            ],
        );
        let ad_prefix = [
            FRAME_AD_MAGIC.as_slice(),
            &self.repo_id,
            &id_len,
            id,
            &index.to_le_bytes(),
        ]
        .concat();
        StripeKey {
            cipher: cipher(&k),
            ad_prefix,
        }
    }
}

/// Envelope format numbers of stored manifests (see `manifest`).
pub mod manifest_format {
    /// An encrypted manifest: `{"format": 3, "nonce": …, "ciphertext": …}`.
    pub const ENCRYPTED: u32 = 3;
}

/// One stripe's AEAD key and the fixed part of its frames' associated data.
#[derive(Clone)]
pub struct StripeKey {
    cipher: Aes256Gcm,
    ad_prefix: Vec<u8>,
}

impl std::fmt::Debug for StripeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StripeKey(…)")
    }
}

impl StripeKey {
    fn nonce(frame: u64, last: bool) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&frame.to_le_bytes());
        n[8..].copy_from_slice(&u32::from(last).to_le_bytes());
        n
    }

    fn ad(&self, frame: u64, last: bool, codec: u8, raw_len: u32) -> Vec<u8> {
        let mut ad = Vec::with_capacity(self.ad_prefix.len() + 14);
        ad.extend_from_slice(&self.ad_prefix);
        ad.extend_from_slice(&frame.to_le_bytes());
        ad.push(u8::from(last));
        ad.push(codec);
        ad.extend_from_slice(&raw_len.to_le_bytes());
        ad
    }

    /// Encrypts `buf` in place (the tag is appended).
    pub fn seal(&self, frame: u64, last: bool, codec: u8, raw_len: u32, buf: &mut Vec<u8>) {
        self.cipher
            .encrypt_in_place(
                Nonce::from_slice(&Self::nonce(frame, last)),
                &self.ad(frame, last, codec, raw_len),
                buf,
            )
            .expect("AES-GCM encrypts any frame under 64 GiB");
    }

    /// Decrypts and authenticates `buf` in place (the tag is removed).
    pub fn open(
        &self,
        frame: u64,
        last: bool,
        codec: u8,
        raw_len: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), aes_gcm::Error> {
        self.cipher.decrypt_in_place(
            Nonce::from_slice(&Self::nonce(frame, last)),
            &self.ad(frame, last, codec, raw_len),
            buf,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Argon2Params {
        Argon2Params {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn pw(s: &str) -> Secret {
        Secret::Password(Zeroizing::new(s.into()))
    }

    #[test]
    fn slots_open_and_close() {
        let mut k = Keys::create(&pw("one"), fast()).unwrap();
        let stored = k.to_config();
        assert!(Keys::open(&stored, &pw("one")).is_ok());
        assert!(matches!(
            Keys::open(&stored, &pw("two")),
            Err(UnlockError::Wrong)
        ));
        let file = Secret::KeyFile(Zeroizing::new(vec![7u8; 32]));
        let id = k.add_slot(&file, fast()).unwrap();
        let stored = k.to_config();
        let k2 = Keys::open(&stored, &file).unwrap();
        assert_eq!(k2.slot_used, id);
        assert_eq!(k2.master.as_ref(), k.master.as_ref());
        k.remove_slot(1).unwrap();
        assert!(k.remove_slot(id).is_err(), "the last slot stays");
        let stored = k.to_config();
        assert!(matches!(
            Keys::open(&stored, &pw("one")),
            Err(UnlockError::Wrong)
        ));
        // Any edit of the body fails the MAC.
        let text = String::from_utf8(stored).unwrap();
        let edited = text.replace("aes-256-gcm", "aes-256-gcn");
        assert!(matches!(
            Keys::open(edited.as_bytes(), &file),
            Err(UnlockError::Damaged(_))
        ));
    }

    #[test]
    fn frames_authenticate_only_in_place() {
        let k = Keys::create(&pw("p"), fast()).unwrap();
        let salt = [1u8; 16];
        let s = k.stripe("B1", 1, &salt);
        let mut buf = b"hello".to_vec();
        s.seal(0, false, 1, 5, &mut buf);
        for (frame, last, id, idx) in [
            (1, false, "B1", 1),
            (0, true, "B1", 1),
            (0, false, "B2", 1),
            (0, false, "B1", 2),
        ] {
            let mut b = buf.clone();
            assert!(k
                .stripe(id, idx, &salt)
                .open(frame, last, 1, 5, &mut b)
                .is_err());
        }
        let mut b = buf.clone();
        assert!(s.open(0, false, 1, 6, &mut b).is_err());
        s.open(0, false, 1, 5, &mut buf).unwrap();
        assert_eq!(buf, b"hello");
        assert_eq!(unhex::<2>("0aff").unwrap(), [10, 255]);
        assert!(unhex::<2>("0AFF").is_err(), "upper case is a flipped bit");
        assert!(unhex_vec("0A").is_err());
        let sealed = k.seal_manifest("a/manifest.json", b"{}");
        assert_eq!(k.open_manifest("a/manifest.json", &sealed).unwrap(), b"{}");
        assert!(k.open_manifest("b/manifest.json", &sealed).is_err());
    }
}
