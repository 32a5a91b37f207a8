//! Adapter over the openvdi-mtf reader (pending: the crate has not landed yet).

use crate::manifest::Chain;
use crate::repo::Repo;

/// Streams a native backup stream through the MTF walker.
#[derive(Debug, Default)]
pub struct Walker {
    bytes: u64,
}

#[derive(Debug)]
pub struct WalkSummary {
    pub blocks: u64,
}

impl Walker {
    pub fn new() -> Walker {
        Walker::default()
    }
    pub fn finish(self) -> Result<WalkSummary, String> {
        Err(format!(
            "the MTF walker is not available yet ({} bytes seen)",
            self.bytes
        ))
    }
}

impl std::io::Write for Walker {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Chain facts read from the stored stream's metadata.
pub fn chain_of_stored(_repo: &Repo, _stripes: &[crate::manifest::Stripe]) -> Option<Chain> {
    None
}

/// What the MTF metadata of a backup's stripe files says.
#[derive(Debug, Default, Clone)]
pub struct MediaInfo {
    pub database: Option<String>,
    pub server: Option<String>,
    pub kind: Option<crate::manifest::Kind>,
    pub chain: Chain,
    pub backup_start: Option<chrono::DateTime<chrono::Utc>>,
    /// Family number (1-based) of each input file, in input order.
    pub families: Vec<Option<u32>>,
}

impl MediaInfo {
    /// The files in media-family order (input order where unknown).
    pub fn ordered_files(&self, files: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
        let mut v: Vec<(u32, usize)> = (0..files.len())
            .map(|i| {
                (
                    self.families
                        .get(i)
                        .copied()
                        .flatten()
                        .unwrap_or(i as u32 + 1),
                    i,
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, i)| files[i].clone()).collect()
    }
}

/// Reads the metadata of plain `.bak` files (pending the MTF crate: nothing yet).
pub fn describe_files(files: &[std::path::PathBuf]) -> Result<MediaInfo, String> {
    Ok(MediaInfo {
        families: vec![None; files.len()],
        ..Default::default()
    })
}
