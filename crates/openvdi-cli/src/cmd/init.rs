//! `openvdi init [--encryption | --no-encryption]`: creates a repository, encrypted
//! unless told otherwise.

use anyhow::Result;

use super::Ctx;
use crate::cli::InitArgs;
use crate::exit::{err, Code};
use crate::output;
use crate::repo::Repo;
use crate::secret::Credentials;

pub fn run(ctx: &Ctx, a: InitArgs) -> Result<()> {
    let mut repo = Repo::open(&ctx.settings.repo)?;
    let creds = Credentials::from_settings(&ctx.settings);
    // Nothing will be created on an existing repository: ask for no password there.
    let secret = if a.no_encryption || repo.kind()? != crate::repo::Kind::Missing {
        None
    } else {
        Some(creds.new_secret()?.ok_or_else(|| {
            err(
                Code::WrongKey,
                "an encrypted repository needs a password (OPENVDI_PASSWORD, --password-file \
                 FILE, or a terminal to type it on) or --key-file FILE; --no-encryption \
                 stores backups in the clear",
            )
        })?)
    };
    let created = repo.init(a.force, secret.as_ref())?;
    let loc = repo.location();
    if created && a.no_encryption {
        // Loudly, as the issue asks: this is the unsafe choice.
        eprintln!(
            "openvdi: warning: {loc} is NOT encrypted: anyone who can read it can read \
             every database backed up into it"
        );
    }
    let encrypted = repo.kind()? == crate::repo::Kind::Encrypted;
    if ctx.settings.json {
        output::json(&serde_json::json!({
            "ok": true, "repository": loc, "created": created, "encrypted": encrypted,
        }));
    } else if created {
        output::text(&format!(
            "created the {} openvdi repository at {loc}",
            if encrypted {
                "encrypted"
            } else {
                "UNENCRYPTED"
            }
        ));
    } else {
        output::text(&format!("{loc} is an openvdi repository already"));
    }
    Ok(())
}
