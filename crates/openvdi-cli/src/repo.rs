//! A repository: a storage backend holding backups, each a folder of stripe objects
//! plus a manifest written last. See `naming` for the layout.

use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::exit::{err, Code};
use crate::manifest::{self, Manifest};
use crate::storage::{self, Store, StoreError};

/// Marks a repository; its absence means "repository missing" (exit 10).
pub const MARKER: &str = "openvdi-repo.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    created: chrono::DateTime<chrono::Utc>,
    tool_version: String,
}

#[derive(Debug, Clone)]
pub struct Repo {
    pub store: Arc<dyn Store>,
}

impl Repo {
    /// Opens the backend only; nothing is read yet.
    pub fn open(url: &str) -> Result<Repo> {
        let store = storage::open(url).map_err(|e| err(Code::Usage, e.to_string()))?;
        Ok(Repo { store })
    }

    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Fails with exit code 10 unless the repository exists.
    pub fn require(&self) -> Result<()> {
        if self
            .store
            .exists(MARKER)
            .with_context(|| format!("reading {}", self.location()))?
        {
            Ok(())
        } else {
            Err(err(
                Code::RepoMissing,
                format!(
                    "no openvdi repository at {} (a first `openvdi backup` creates one)",
                    self.location()
                ),
            ))
        }
    }

    /// Creates the repository if it does not exist (backup, import).
    pub fn init_if_missing(&self) -> Result<()> {
        if self.store.exists(MARKER)? {
            return Ok(());
        }
        let m = Marker {
            format: 1,
            created: chrono::Utc::now(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
        };
        self.store
            .put_atomic(MARKER, &serde_json::to_vec_pretty(&m)?)
            .with_context(|| format!("creating the repository at {}", self.location()))
    }

    /// Every complete backup (one with a manifest), oldest first.
    pub fn backups(&self) -> Result<Vec<Manifest>> {
        let suffix = format!("/{}", manifest::FILE_NAME);
        let mut out = Vec::new();
        for e in self.store.list("")? {
            if !e.key.ends_with(&suffix) {
                continue;
            }
            let bytes = match self.store.get(&e.key) {
                Ok(b) => b,
                Err(StoreError::NotFound(_)) => continue, // pruned meanwhile
                Err(e) => return Err(e.into()),
            };
            let m: Manifest = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading manifest {}", e.key))?;
            out.push(m);
        }
        out.sort_by(|a, b| {
            a.timings
                .started
                .cmp(&b.timings.started)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// Resolves a backup by id, `latest`, or `latest:DATABASE`. Exit 10 if none.
    pub fn find(&self, sel: &str) -> Result<Manifest> {
        let all = self.backups()?;
        let found = if sel == "latest" {
            all.into_iter().next_back()
        } else if let Some(db) = sel.strip_prefix("latest:") {
            all.into_iter()
                .rev()
                .find(|m| m.database.eq_ignore_ascii_case(db))
        } else {
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

    /// Publishes a manifest: the last write of a backup.
    pub fn publish(&self, dir: &str, m: &Manifest) -> Result<()> {
        self.store
            .put_atomic(&Self::manifest_key(dir), &m.to_json())
            .with_context(|| format!("writing the manifest of {}", m.id))
    }

    /// The folder of a backup, from its first stripe's key.
    pub fn dir_of(m: &Manifest) -> String {
        crate::naming::backup_dir(&m.server, &m.database, m.kind, &m.id)
    }

    /// A backup id not yet used (a second backup in the same second gets `_2`, …).
    pub fn unique_id(&self, base: &str, dir_of: impl Fn(&str) -> String) -> Result<String> {
        let mut id = base.to_string();
        let mut n = 1;
        while !self.store.list(&dir_of(&id))?.is_empty() {
            n += 1;
            id = format!("{base}_{n}");
        }
        Ok(id)
    }
}
