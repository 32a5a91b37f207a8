//! `openvdi import`: pending the MTF reader.

use anyhow::Result;

use super::Ctx;
use crate::cli::ImportArgs;

pub fn run(_ctx: &Ctx, _a: ImportArgs) -> Result<()> {
    anyhow::bail!("import needs the MTF reader, which has not landed yet")
}
