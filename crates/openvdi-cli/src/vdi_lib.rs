//! `--vdi-library`: a libsqlvdi.so loaded at run time (pending).

use std::path::Path;

use anyhow::Result;

use crate::vdi::{Native, Transport};

pub fn transport(lib: Option<&Path>) -> Result<Box<dyn Transport>> {
    match lib {
        None => Ok(Box::new(Native)),
        Some(p) => anyhow::bail!("--vdi-library {} is not supported yet", p.display()),
    }
}
