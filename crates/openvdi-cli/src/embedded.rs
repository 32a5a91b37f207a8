//! The embedded engine (openvdi-engine), pending its landing.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::engine::Engine;

pub fn open(data_dir: &Path, _server: Option<String>) -> Result<Arc<dyn Engine>> {
    anyhow::bail!(
        "the embedded engine is not built yet (data dir {}); use --engine-cmd",
        data_dir.display()
    )
}
