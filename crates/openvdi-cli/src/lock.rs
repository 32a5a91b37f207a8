//! The repository lock: writers (backup, import) share it, `prune` takes it alone.
//!
//! A lock must never outlive a crash, or the next scheduled run fails:
//! * local repositories use `flock(2)` on `.openvdi.lock`; the kernel drops it when the
//!   process dies, however it dies;
//! * object stores have no locks, so each holder puts `locks/HOST-PID-START.json`. A
//!   lock object whose host is this host and whose process (pid *and* start time, so a
//!   reused pid does not count) is gone is stale and deleted. Locks of other hosts are
//!   honoured; `openvdi unlock` is the manual escape hatch for a crashed remote host.
//!   In an encrypted repository a lock object is `{"body": JSON, "mac": HEX}` with
//!   HMAC-SHA256 under the lock MAC key: one that does not authenticate is honoured
//!   as held (never deleted as stale, since its host and pid cannot be trusted).

use std::fs::OpenOptions;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::exit::{err, Code};
use crate::storage::Store;

pub const LOCAL_FILE: &str = ".openvdi.lock";
pub const PREFIX: &str = "locks/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    start_time: u64,
    exclusive: bool,
    command: String,
    created: chrono::DateTime<chrono::Utc>,
}

/// Held while alive; released on drop.
#[derive(Debug)]
pub enum Lock {
    /// Held for its flock, which closing the file releases.
    Local {
        _flock: std::fs::File,
    },
    Object {
        store: Arc<dyn Store>,
        key: String,
    },
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Lock::Object { store, key } = self {
            let _ = store.delete(key);
        }
    }
}

pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The kernel's start time of `pid` (clock ticks since boot), None if it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Takes the lock or fails with exit code 11.
pub fn acquire(
    store: &Arc<dyn Store>,
    mode: Mode,
    command: &str,
    keys: Option<&crate::crypto::Keys>,
) -> Result<Lock> {
    if let Some(root) = store.local_root() {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let path = root.join(LOCAL_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let op = match mode {
            Mode::Shared => rustix::fs::FlockOperation::NonBlockingLockShared,
            Mode::Exclusive => rustix::fs::FlockOperation::NonBlockingLockExclusive,
        };
        return match rustix::fs::flock(&f, op) {
            Ok(()) => Ok(Lock::Local { _flock: f }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(err(
                Code::LockHeld,
                format!(
                    "the repository {} is locked by another openvdi process ({})",
                    store.location(),
                    if mode == Mode::Exclusive {
                        "a backup, import or prune is running"
                    } else {
                        "a prune is running"
                    }
                ),
            )),
            Err(e) => Err(anyhow::Error::new(std::io::Error::from(e)))
                .with_context(|| format!("locking {}", path.display())),
        };
    }
    let host = hostname();
    let pid = std::process::id();
    let st = start_time(pid).unwrap_or(0);
    let key = format!("{PREFIX}{}-{pid}-{st}.json", crate::naming::segment(&host));
    let me = Holder {
        host: host.clone(),
        pid,
        start_time: st,
        exclusive: mode == Mode::Exclusive,
        command: command.to_string(),
        created: chrono::Utc::now(),
    };
    store.put_atomic(&key, &seal(&me, keys)?)?;
    let lock = Lock::Object {
        store: store.clone(),
        key: key.clone(),
    };
    for e in store.list(PREFIX)? {
        if e.key == key {
            continue;
        }
        let Ok(bytes) = store.get(&e.key) else {
            continue; // released meanwhile
        };
        let h = match open(&bytes, keys) {
            Some(h) => h,
            None if keys.is_some() => Holder {
                host: format!("an unauthenticated lock object {}", e.key),
                pid: 0,
                start_time: 0,
                exclusive: true,
                command: "unknown".into(),
                created: chrono::Utc::now(),
            },
            None => continue,
        };
        if h.pid != 0 && h.host == host && start_time(h.pid) != Some(h.start_time) {
            store.delete(&e.key)?; // its process is gone: stale
            continue;
        }
        if h.exclusive || mode == Mode::Exclusive {
            drop(lock); // deletes our lock object
            return Err(err(
                Code::LockHeld,
                format!(
                    "the repository {} is locked by {} (pid {} on {}, since {}); \
                     if that host crashed, run `openvdi unlock`",
                    store.location(),
                    h.command,
                    h.pid,
                    h.host,
                    h.created
                ),
            ));
        }
    }
    Ok(lock)
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    body: String,
    mac: String,
}

fn seal(h: &Holder, keys: Option<&crate::crypto::Keys>) -> Result<Vec<u8>> {
    let body = serde_json::to_string(h)?;
    Ok(match keys {
        None => body.into_bytes(),
        Some(k) => {
            let mac = crate::crypto::hex(&k.mac("lock", body.as_bytes()));
            serde_json::to_vec(&Sealed { body, mac })?
        }
    })
}

fn open(bytes: &[u8], keys: Option<&crate::crypto::Keys>) -> Option<Holder> {
    match keys {
        None => serde_json::from_slice(bytes).ok(),
        Some(k) => {
            let s: Sealed = serde_json::from_slice(bytes).ok()?;
            let tag: [u8; 32] = crate::crypto::unhex(&s.mac).ok()?;
            if !k.verify_mac("lock", s.body.as_bytes(), &tag) {
                return None;
            }
            serde_json::from_str(&s.body).ok()
        }
    }
}

/// Removes every lock object (object stores) — for a crashed remote host.
pub fn force_unlock(store: &Arc<dyn Store>) -> Result<usize> {
    let locks = store.list(PREFIX)?;
    for e in &locks {
        store.delete(&e.key)?;
    }
    Ok(locks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shared_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::storage::open(dir.path().to_str().unwrap()).unwrap();
        let a = acquire(&s, Mode::Shared, "backup", None).unwrap();
        let b = acquire(&s, Mode::Shared, "backup", None).unwrap();
        let e = acquire(&s, Mode::Exclusive, "prune", None).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::LockHeld);
        drop((a, b));
        let x = acquire(&s, Mode::Exclusive, "prune", None).unwrap();
        assert!(acquire(&s, Mode::Shared, "backup", None).is_err());
        drop(x);
    }

    #[test]
    fn object_lock_of_a_dead_process_is_stale() {
        let s = crate::storage::open("memory://bucket").unwrap();
        let host = hostname();
        // A holder whose start time cannot match: its process is gone.
        let dead = Holder {
            host: host.clone(),
            pid: std::process::id(),
            start_time: u64::MAX,
            exclusive: true,
            command: "backup".into(),
            created: chrono::Utc::now(),
        };
        s.put_atomic("locks/dead.json", &serde_json::to_vec(&dead).unwrap())
            .unwrap();
        let live = Holder {
            host: "other-host".into(),
            ..dead
        };
        let l = acquire(&s, Mode::Shared, "backup", None).unwrap();
        assert!(!s.exists("locks/dead.json").unwrap());
        drop(l);
        s.put_atomic("locks/live.json", &serde_json::to_vec(&live).unwrap())
            .unwrap();
        let e = acquire(&s, Mode::Shared, "backup", None).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::LockHeld);
        assert_eq!(
            s.list(PREFIX).unwrap().len(),
            1,
            "the loser removed its own lock"
        );
        assert_eq!(force_unlock(&s).unwrap(), 1);
    }

    fn keys(pw: &str) -> crate::crypto::Keys {
        let params = crate::crypto::Argon2Params {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let secret = crate::crypto::Secret::Password(zeroize::Zeroizing::new(pw.into()));
        crate::crypto::Keys::create(&secret, params).unwrap()
    }

    /// In an encrypted repository a lock object is believed only when its MAC
    /// verifies: a dead holder sealed with the repository's key is stale and removed;
    /// the same holder unsealed, sealed under another repository's key, or with its
    /// body changed after sealing is honoured as held (exit 11) and left in place.
    #[test]
    fn encrypted_lock_objects_are_believed_only_when_their_mac_verifies() {
        let k = keys("lock test");
        let other = keys("another repository");
        let dead = Holder {
            host: hostname(),
            pid: std::process::id(),
            start_time: u64::MAX, // cannot match: its process is gone
            exclusive: false,
            command: "backup".into(),
            created: chrono::Utc::now(),
        };
        let s = crate::storage::open("memory://bucket").unwrap();
        s.put_atomic("locks/dead.json", &seal(&dead, Some(&k)).unwrap())
            .unwrap();
        let l = acquire(&s, Mode::Exclusive, "prune", Some(&k)).unwrap();
        assert!(
            !s.exists("locks/dead.json").unwrap(),
            "stale, sealed: removed"
        );
        drop(l);

        let body = serde_json::to_string(&dead).unwrap();
        // The body changed after sealing, the MAC kept.
        let mut sealed: Sealed = serde_json::from_slice(&seal(&dead, Some(&k)).unwrap()).unwrap();
        sealed.body = sealed
            .body
            .replace("\"exclusive\":false", "\"exclusive\":true");
        assert!(sealed.body.contains("\"exclusive\":true"));
        let altered = serde_json::to_string(&sealed).unwrap();
        for (what, bytes) in [
            ("unsealed", body.into_bytes()),
            ("another key", seal(&dead, Some(&other)).unwrap()),
            ("body altered", altered.into_bytes()),
            ("not JSON", b"garbage".to_vec()),
        ] {
            let s = crate::storage::open("memory://bucket").unwrap();
            s.put_atomic("locks/forged.json", &bytes).unwrap();
            for mode in [Mode::Shared, Mode::Exclusive] {
                let e = acquire(&s, mode, "backup", Some(&k)).unwrap_err();
                assert_eq!(crate::exit::code_of(&e), Code::LockHeld, "{what}");
                assert!(
                    format!("{e:#}").contains("unauthenticated"),
                    "{what}: {e:#}"
                );
                assert!(s.exists("locks/forged.json").unwrap(), "{what}: removed");
                assert_eq!(s.list(PREFIX).unwrap().len(), 1, "{what}: ours left");
            }
        }
    }
}
