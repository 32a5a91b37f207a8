//! `openvdi key add|remove|list|passwd`: the key slots of an encrypted repository.
//! Every change rewrites the config object only: the master key, and so every
//! stored stripe and manifest, stays as it is.

use anyhow::Result;

use super::Ctx;
use crate::cli::{KeyCommand, NewSecretArgs};
use crate::crypto::{Argon2Params, Keys, SlotKind};
use crate::exit::{err, Code};
use crate::output;

fn new_secret(a: &NewSecretArgs) -> Result<crate::crypto::Secret> {
    crate::secret::new_secret(
        a.new_password_file.as_deref(),
        a.new_key_file.as_deref(),
        "OPENVDI_NEW_PASSWORD",
    )?
    .ok_or_else(|| {
        err(
            Code::Usage,
            "give the new secret: --new-password-file FILE, OPENVDI_NEW_PASSWORD, \
             --new-key-file FILE, or a terminal to type it on",
        )
    })
}

fn keys_of(repo: &crate::repo::Repo) -> Result<Keys> {
    let keys = repo.keys.as_ref().ok_or_else(|| {
        err(
            Code::Usage,
            format!("{} is not encrypted: it has no key slots", repo.location()),
        )
    })?;
    // A private copy to change: re-open the stored config with the same master key
    // would need the secret again, so clone what `Keys` holds through its config.
    Ok(keys.duplicate())
}

pub fn run(ctx: &Ctx, k: KeyCommand) -> Result<()> {
    let repo = super::open_repo(ctx)?;
    let mut keys = keys_of(&repo)?;
    let _lock = crate::lock::acquire(
        &repo.store,
        crate::lock::Mode::Exclusive,
        "key",
        repo.keys.as_deref(),
    )?;
    let (what, json) = match k {
        KeyCommand::List => {
            let slots: Vec<serde_json::Value> = keys
                .body
                .slots
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "id": s.id, "kind": s.kind, "created": s.created,
                        "argon2id": s.argon2id, "used": s.id == keys.slot_used,
                    })
                })
                .collect();
            let text = keys
                .body
                .slots
                .iter()
                .map(|s| {
                    format!(
                        "{}{:>3}  {:<8}  {}{}",
                        if s.id == keys.slot_used { "*" } else { " " },
                        s.id,
                        match s.kind {
                            SlotKind::Password => "password",
                            SlotKind::KeyFile => "keyfile",
                        },
                        s.created.format("%Y-%m-%d %H:%M:%S UTC"),
                        s.argon2id
                            .map(|a| format!(
                                "  argon2id m={} KiB t={} p={}",
                                a.memory_kib, a.iterations, a.parallelism
                            ))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (text, serde_json::json!({"ok": true, "slots": slots}))
        }
        KeyCommand::Add(a) => {
            let secret = new_secret(&a)?;
            let id = keys
                .add_slot(&secret, Argon2Params::from_env())
                .map_err(anyhow::Error::msg)?;
            repo.save_config(&keys)?;
            (
                format!("added key slot {id}"),
                serde_json::json!({"ok": true, "added": id}),
            )
        }
        KeyCommand::Remove { slot } => {
            keys.remove_slot(slot).map_err(|e| err(Code::Usage, e))?;
            repo.save_config(&keys)?;
            (
                format!("removed key slot {slot}"),
                serde_json::json!({"ok": true, "removed": slot}),
            )
        }
        KeyCommand::Passwd(a) => {
            let secret = new_secret(&a)?;
            let old = keys.slot_used;
            let id = keys
                .add_slot(&secret, Argon2Params::from_env())
                .map_err(anyhow::Error::msg)?;
            keys.remove_slot(old).map_err(anyhow::Error::msg)?;
            repo.save_config(&keys)?;
            (
                format!("replaced key slot {old} by key slot {id}"),
                serde_json::json!({"ok": true, "added": id, "removed": old}),
            )
        }
    };
    if ctx.settings.json {
        output::json(&json);
    } else {
        output::text(&what);
    }
    Ok(())
}
