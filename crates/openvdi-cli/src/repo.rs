//! A repository: a storage backend holding backups, each a folder of stripe objects
//! plus a manifest written last. See `naming` for the layout.

use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Keys, UnlockError};
use crate::exit::{err, Code};
use crate::manifest::{self, Manifest};
use crate::secret::Credentials;
use crate::storage::{self, Store, StoreError};

/// Marks a repository; its absence means "repository missing" (exit 10).
pub const MARKER: &str = "openvdi-repo.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    created: chrono::DateTime<chrono::Utc>,
    tool_version: String,
}

/// The object that reserves a backup id: created exclusively in the backup's folder
/// before anything else is written there (see [`Repo::unique_id`]).
pub const RESERVATION: &str = "reserved.json";

/// How many suffixes `unique_id` tries before giving up (a second backup in the same
/// second takes `_2`; a hundred in one second means something is looping).
const MAX_ID_TRIES: u32 = 100;

/// A manifest larger than this is damaged (a real one is a few KiB).
pub const MAX_MANIFEST: u64 = 1 << 20;

/// A manifest that cannot be trusted: its backup is reported, never read or deleted.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    /// Where it was found (a key from the repository's own listing).
    pub key: String,
    /// The name of the folder holding it (what the backup's id should be).
    pub folder: String,
    pub error: String,
}

/// What [`Repo::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    pub backups: Vec<Manifest>,
    pub damaged: Vec<Damaged>,
}

/// What is at a location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Missing,
    /// `openvdi-repo.json`: backups stored in the clear (format 1).
    Plain,
    /// `openvdi-config.json`: an encrypted, authenticated repository (format 2).
    Encrypted,
}

#[derive(Debug, Clone)]
pub struct Repo {
    pub store: Arc<dyn Store>,
    /// The keys of an encrypted repository, once unlocked.
    pub keys: Option<Arc<Keys>>,
    /// True for an encrypted repository (known once [`Repo::require`] or
    /// [`Repo::unlock`] ran).
    pub encrypted: bool,
}

impl Repo {
    /// Opens the backend only; nothing is read yet.
    pub fn open(url: &str) -> Result<Repo> {
        let store = storage::open(url).map_err(|e| err(Code::Usage, e.to_string()))?;
        Ok(Repo {
            store,
            keys: None,
            encrypted: false,
        })
    }

    /// Which kind of repository is there. An unencrypted repository's marker of a
    /// format this version does not know is refused (so a future format can never be
    /// written in an older one's layout).
    pub fn kind(&self) -> Result<Kind> {
        let ctx = || format!("reading {}", self.location());
        if self.store.exists(crypto::CONFIG).with_context(ctx)? {
            return Ok(Kind::Encrypted);
        }
        if !self.store.exists(MARKER).with_context(ctx)? {
            return Ok(Kind::Missing);
        }
        let bytes = self.store.get(MARKER).with_context(ctx)?;
        let m: Marker = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: unreadable {MARKER}: {e}", self.location()))?;
        if m.format != 1 {
            return Err(err(
                Code::Failure,
                format!(
                    "{} is an openvdi repository of format {}, which this openvdi ({}) does \
                     not know: upgrade openvdi",
                    self.location(),
                    m.format,
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        Ok(Kind::Plain)
    }

    /// For an encrypted repository: reads the config object and opens a key slot
    /// with the credentials (exit 12 if they do not open it or none were given).
    /// An unencrypted one needs nothing. Fails with exit 10 if there is no repository.
    pub fn unlock(&mut self, creds: &Credentials) -> Result<()> {
        self.require()?;
        if !self.encrypted || self.keys.is_some() {
            return Ok(());
        }
        let secret = creds.secret()?.ok_or_else(crate::secret::none_given)?;
        let stored = self
            .store
            .get(crypto::CONFIG)
            .with_context(|| format!("reading {}", self.location()))?;
        match Keys::open(&stored, &secret) {
            Ok(k) => {
                self.keys = Some(Arc::new(k));
                Ok(())
            }
            Err(UnlockError::Wrong) => Err(err(
                Code::WrongKey,
                format!(
                    "wrong {}: it opens none of the key slots of {}",
                    match secret {
                        crypto::Secret::Password(_) => "password",
                        crypto::Secret::KeyFile(_) => "key file",
                    },
                    self.location()
                ),
            )),
            Err(UnlockError::Damaged(why)) => Err(err(
                Code::Verify,
                format!("the repository's {} is damaged: {why}", crypto::CONFIG),
            )),
        }
    }

    /// The keys new stripes are sealed with: None for an unencrypted repository. An
    /// encrypted one that was not unlocked is an error here, so a writer can never
    /// fall back to storing a stripe in the clear (`publish` refuses the manifest
    /// the same way).
    pub fn sealing_keys(&self) -> Result<Option<&Arc<Keys>>> {
        match (self.encrypted, &self.keys) {
            (false, _) => Ok(None),
            (true, Some(k)) => Ok(Some(k)),
            (true, None) => Err(anyhow::anyhow!(
                "refusing to write into the encrypted repository {} without its key",
                self.location()
            )),
        }
    }

    /// Stores the (changed) key slots of an unlocked repository: the config object
    /// is the only object written.
    pub fn save_config(&self, keys: &Keys) -> Result<()> {
        self.store
            .put_atomic(crypto::CONFIG, &keys.to_config())
            .with_context(|| format!("writing the key slots of {}", self.location()))
    }

    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Fails with exit code 10 unless the repository exists.
    pub fn require(&mut self) -> Result<()> {
        let kind = self.kind()?;
        if kind != Kind::Missing {
            self.encrypted = kind == Kind::Encrypted;
            Ok(())
        } else {
            Err(err(
                Code::RepoMissing,
                format!(
                    "no openvdi repository at {loc}; create one with `openvdi init --repo {loc}`",
                    loc = self.location()
                ),
            ))
        }
    }

    /// For commands that store (backup, import): the default repository is created
    /// on first use, so a fresh machine's first `openvdi backup` works; any location
    /// the user named must exist already (`openvdi init`), so a mistyped `--repo`
    /// fails (exit 10) instead of quietly starting a second repository.
    /// The default repository is created encrypted when a password or key file is
    /// at hand (else this fails with exit 12: `openvdi init` can create it).
    pub fn require_or_create_default(
        &mut self,
        is_default: bool,
        creds: &Credentials,
    ) -> Result<()> {
        if is_default && self.kind()? == Kind::Missing {
            let secret = creds.new_secret()?.ok_or_else(|| {
                err(
                    Code::WrongKey,
                    format!(
                        "creating the default repository {} encrypted needs a password \
                         (OPENVDI_PASSWORD, --password-file FILE, a terminal) or --key-file \
                         FILE; or create it with `openvdi init` (`--no-encryption` to store \
                         backups in the clear)",
                        self.location()
                    ),
                )
            })?;
            self.init(false, Some(&secret))?;
        }
        self.unlock(creds)
    }

    /// `openvdi init`: creates the repository. Refuses a location that already holds
    /// anything else (a folder or prefix with objects but no repository marker): a
    /// repository is not started inside unrelated data. Returns false if a
    /// repository was there already (nothing is changed).
    /// With `secret` the repository is encrypted (a config object with one key
    /// slot, argon2id parameters from [`crypto::Argon2Params::from_env`]); without,
    /// backups are stored in the clear.
    pub fn init(&mut self, allow_non_empty: bool, secret: Option<&crypto::Secret>) -> Result<bool> {
        if self.kind()? != Kind::Missing {
            return Ok(false);
        }
        if !allow_non_empty {
            // A listing that fails (a bucket an object store creates on first write,
            // say) cannot show foreign data: the marker's write then decides.
            let found = self.store.list("").unwrap_or_default();
            if let Some(e) = found.first() {
                return Err(err(
                    Code::Usage,
                    format!(
                        "{} is not empty (it holds {:?} and {} other object(s)) and is not an \
                         openvdi repository; pick an empty location, or pass --force to \
                         create the repository there anyway",
                        self.location(),
                        e.key,
                        found.len() - 1
                    ),
                ));
            }
        }
        if let Some(secret) = secret {
            let keys = Keys::create(secret, crypto::Argon2Params::from_env())
                .map_err(|e| anyhow::anyhow!("creating the repository's keys: {e}"))?;
            // Exclusive: two `init`s racing never leave two master keys, one of which
            // would encrypt backups the other's password cannot read.
            if !self
                .store
                .create_exclusive(crypto::CONFIG, &keys.to_config())
                .with_context(|| format!("creating the repository at {}", self.location()))?
            {
                return Ok(false);
            }
            self.encrypted = true;
            self.keys = Some(Arc::new(keys));
            return Ok(true);
        }
        let m = Marker {
            format: 1,
            created: chrono::Utc::now(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
        };
        self.store
            .put_atomic(MARKER, &serde_json::to_vec_pretty(&m)?)
            .with_context(|| format!("creating the repository at {}", self.location()))?;
        self.encrypted = false;
        Ok(true)
    }

    /// Every complete backup (one with a valid manifest), oldest first. Damaged
    /// manifests are left out (see [`Repo::scan`]): one bad manifest never stops
    /// the others from being served.
    pub fn backups(&self) -> Result<Vec<Manifest>> {
        Ok(self.scan()?.backups)
    }

    /// Every manifest in the repository: the valid ones, oldest first, and the
    /// damaged ones (unreadable, checksum mismatch, or naming paths outside their
    /// own folder), by key.
    pub fn scan(&self) -> Result<Scan> {
        let suffix = format!("/{}", manifest::FILE_NAME);
        let mut out = Scan::default();
        for e in self.store.list("")? {
            if !e.key.ends_with(&suffix) {
                continue;
            }
            let damaged = |error: String| Damaged {
                folder: e.key[..e.key.len() - suffix.len()]
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                key: e.key.clone(),
                error,
            };
            if e.size > MAX_MANIFEST {
                out.damaged
                    .push(damaged(format!("manifest of {} bytes", e.size)));
                continue;
            }
            let bytes = match self.store.get(&e.key) {
                Ok(b) => b,
                Err(StoreError::NotFound(_)) => continue, // pruned meanwhile
                Err(e) => return Err(e.into()),
            };
            let plain = match (self.encrypted, &self.keys) {
                (false, _) => Ok(bytes),
                (true, Some(k)) => k.open_manifest(&e.key, &bytes),
                (true, None) => {
                    return Err(crate::secret::none_given()
                        .context("reading the backups of an encrypted repository"))
                }
            };
            match plain.and_then(|b| Manifest::parse(&e.key, &b)) {
                Ok(m) => out.backups.push(m),
                Err(why) => out.damaged.push(damaged(why)),
            }
        }
        // In the order they were taken, parents from the backups' own LSNs over the
        // whole repository (see `chain`), whatever order they were stored in.
        crate::chain::sort(&mut out.backups);
        crate::chain::link(&mut out.backups);
        out.damaged.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Resolves a backup by id, `latest`, or `latest:DATABASE`. Exit 10 if none;
    /// exit 3 if the id names a backup whose manifest is damaged.
    pub fn find(&self, sel: &str) -> Result<Manifest> {
        let Scan {
            backups: all,
            damaged,
        } = self.scan()?;
        if (sel == "latest" || sel.starts_with("latest:")) && !damaged.is_empty() {
            // `latest` means the newest *trusted* backup; say that others were skipped.
            eprintln!(
                "openvdi: warning: {} damaged manifest(s) skipped when resolving {sel:?} (see `openvdi list`)",
                damaged.len()
            );
        }
        let found = if sel == "latest" {
            all.into_iter().next_back()
        } else if let Some(db) = sel.strip_prefix("latest:") {
            all.into_iter()
                .rev()
                .find(|m| m.database.eq_ignore_ascii_case(db))
        } else {
            if let Some(d) = damaged.iter().find(|d| d.folder == sel) {
                return Err(err(
                    Code::Verify,
                    format!("backup {sel} is damaged: {}: {}", d.key, d.error),
                ));
            }
            all.into_iter().find(|m| m.id == sel)
        };
        found.ok_or_else(|| {
            err(
                Code::RepoMissing,
                format!(
                    "no backup {sel:?} in {} (see `openvdi list`)",
                    self.location()
                ),
            )
        })
    }

    /// The manifest's key for a backup folder.
    pub fn manifest_key(dir: &str) -> String {
        format!("{dir}/{}", manifest::FILE_NAME)
    }

    /// Publishes a manifest: the last write of a backup. It is validated exactly as
    /// a reader will (so the tool never writes a manifest it would call damaged),
    /// then stored with `put_atomic` (local: temp file, fsync, rename, fsync of the
    /// directory; object store: one PUT).
    pub fn publish(&self, dir: &str, m: &Manifest) -> Result<()> {
        let key = Self::manifest_key(dir);
        let bytes = m.to_json();
        Manifest::parse(&key, &bytes).map_err(|e| {
            anyhow::anyhow!("refusing to write an invalid manifest for {}: {e}", m.id)
        })?;
        if let Ok(fail) = std::env::var("OPENVDI_TEST_FAIL_MANIFEST") {
            // Test hook: a storage failure at the manifest write.
            if fail == "1" {
                anyhow::bail!("writing the manifest of {}: injected failure", m.id);
            }
        }
        let bytes = match (self.encrypted, &self.keys) {
            (false, _) => bytes,
            (true, Some(k)) => k.seal_manifest(&key, &bytes),
            (true, None) => {
                anyhow::bail!("writing a manifest of an encrypted repository without its key")
            }
        };
        self.store
            .put_atomic(&key, &bytes)
            .with_context(|| format!("writing the manifest of {}", m.id))
    }

    /// The folder of a backup (validated manifests name only keys inside it).
    pub fn dir_of(m: &Manifest) -> String {
        m.dir()
    }

    /// Reserves a backup id: the base (`SERVER_DB_FULL_YYYYMMDD_HHMMSS`) or, if taken,
    /// `base_2`, `base_3`, … An id is taken when its folder holds anything; it is ours
    /// once [`Store::create_exclusive`] of its [`RESERVATION`] object succeeded, which
    /// exactly one of several processes racing for it gets (local: `O_EXCL`; object
    /// stores: a conditional PUT). So two backups started in the same second get two
    /// ids, and neither can overwrite the other's stripes or manifest.
    pub fn unique_id(&self, base: &str, dir_of: impl Fn(&str) -> String) -> Result<String> {
        #[derive(Serialize)]
        struct Reservation<'a> {
            id: &'a str,
            host: String,
            pid: u32,
            created: chrono::DateTime<chrono::Utc>,
        }
        for n in 1..=MAX_ID_TRIES {
            let id = if n == 1 {
                base.to_string()
            } else {
                format!("{base}_{n}")
            };
            let dir = dir_of(&id);
            // Folders of older backups (and of runs of older versions) hold no
            // reservation object: anything in the folder means taken.
            if !self.store.list(&dir)?.is_empty() {
                continue;
            }
            let r = Reservation {
                id: &id,
                host: crate::lock::hostname(),
                pid: std::process::id(),
                created: chrono::Utc::now(),
            };
            let key = format!("{dir}/{RESERVATION}");
            if self
                .store
                .create_exclusive(&key, &serde_json::to_vec(&r)?)
                .with_context(|| format!("reserving backup id {id}"))?
            {
                return Ok(id);
            }
        }
        anyhow::bail!("no free backup id for {base} after {MAX_ID_TRIES} tries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encrypted repository not (yet) unlocked never hands a writer "no keys",
    /// which would store its stripes in the clear; an unencrypted one does.
    #[test]
    fn an_encrypted_repository_without_its_key_is_never_written_in_the_clear() {
        let secret = crypto::Secret::Password(zeroize::Zeroizing::new("pw".into()));
        let params = crypto::Argon2Params {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let repo = Repo {
            keys: Some(Arc::new(Keys::create(&secret, params).unwrap())),
            encrypted: true,
            ..Repo::open("memory://b/enc").unwrap()
        };
        assert!(repo.sealing_keys().unwrap().is_some());
        // The same repository, as a command sees it before unlocking.
        let locked = Repo {
            keys: None,
            ..repo.clone()
        };
        assert!(locked.encrypted);
        let e = locked.sealing_keys().unwrap_err();
        assert!(format!("{e}").contains("without its key"), "{e}");
        let plain = Repo::open("memory://b/plain").unwrap();
        assert!(plain.sealing_keys().unwrap().is_none());
    }

    #[test]
    fn a_reserved_id_is_never_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        for url in ["memory://b/p".to_string(), dir.path().display().to_string()] {
            let mut repo = Repo::open(&url).unwrap();
            repo.init(false, None).unwrap();
            let dir_of = |id: &str| format!("S/db/FULL/{id}");
            let a = repo.unique_id("S_db_FULL_1", dir_of).unwrap();
            let b = repo.unique_id("S_db_FULL_1", dir_of).unwrap();
            let c = repo.unique_id("S_db_FULL_1", dir_of).unwrap();
            assert_eq!(
                (a.as_str(), b.as_str(), c.as_str()),
                ("S_db_FULL_1", "S_db_FULL_1_2", "S_db_FULL_1_3"),
                "{url}"
            );
            // The reservation itself is exclusive: a second create of it fails.
            let key = format!("{}/{RESERVATION}", dir_of(&a));
            assert!(!repo.store.create_exclusive(&key, b"x").unwrap(), "{url}");
        }
    }
}
