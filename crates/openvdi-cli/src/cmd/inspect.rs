//! `openvdi inspect`: pending the MTF reader.

use anyhow::Result;

use super::Ctx;
use crate::cli::InspectArgs;

pub fn run(_ctx: &Ctx, _a: InspectArgs) -> Result<()> {
    anyhow::bail!("inspect needs the MTF reader, which has not landed yet")
}
