//! Compression codecs for stored chunks, parsed from `zstd[:LEVEL]`, `lz4`, `none`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How each chunk is compressed. The codec is recorded in the stripe header and the
/// manifest, so a reader never guesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Codec {
    /// Stored as the engine wrote it.
    None,
    /// zstd at `level` (1..=22; 3 is zstd's own default).
    Zstd { level: i32 },
    /// LZ4 block format (lz4_flex), for CPU-poor hosts.
    Lz4,
}

impl Codec {
    /// The byte stored in the stripe header.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd { .. } => 1,
            Codec::Lz4 => 2,
        }
    }

    /// The codec from a stripe header's id (the level is irrelevant when decoding).
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd { level: 0 }),
            2 => Some(Codec::Lz4),
            _ => None,
        }
    }

    /// File-name suffix of a stored stripe.
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Zstd { .. } => ".zst",
            Codec::Lz4 => ".lz4",
        }
    }

    /// Compresses `raw`, appending to `out`.
    pub fn compress(self, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Codec::None => out.extend_from_slice(raw),
            Codec::Zstd { level } => {
                let bound = zstd::zstd_safe::compress_bound(raw.len());
                let start = out.len();
                out.resize(start + bound, 0);
                let n = zstd::bulk::compress_to_buffer(raw, &mut out[start..], level)?;
                out.truncate(start + n);
            }
            Codec::Lz4 => {
                let start = out.len();
                out.resize(
                    start + lz4_flex::block::get_maximum_output_size(raw.len()),
                    0,
                );
                let n = lz4_flex::block::compress_into(raw, &mut out[start..])
                    .map_err(std::io::Error::other)?;
                out.truncate(start + n);
            }
        }
        Ok(())
    }

    /// Decompresses `stored` into `out`, which must come out exactly `raw_len` long.
    pub fn decompress(
        self,
        stored: &[u8],
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        out.clear();
        match self {
            Codec::None => out.extend_from_slice(stored),
            Codec::Zstd { .. } => {
                // Into the spare capacity (no zero-fill of the megabyte first), with one
                // decompression context per thread instead of one per chunk.
                thread_local! {
                    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                        const { std::cell::RefCell::new(None) };
                }
                out.reserve(raw_len);
                DCTX.with(|d| -> std::io::Result<()> {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new()?);
                    }
                    let d = d.as_mut().expect("created above");
                    d.decompress_to_buffer(stored, out)?;
                    Ok(())
                })?;
            }
            Codec::Lz4 => {
                out.resize(raw_len, 0);
                let n = lz4_flex::block::decompress_into(stored, &mut out[..])
                    .map_err(std::io::Error::other)?;
                out.truncate(n);
            }
        }
        if out.len() != raw_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "chunk decompressed to {} bytes, expected {raw_len}",
                    out.len()
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => f.write_str("none"),
            Codec::Zstd { level } => write!(f, "zstd:{level}"),
            Codec::Lz4 => f.write_str("lz4"),
        }
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Codec, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "none" | "off" => Ok(Codec::None),
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd { level: 3 }),
            _ => match s.strip_prefix("zstd:") {
                Some(l) => {
                    let level: i32 = l
                        .parse()
                        .map_err(|_| format!("bad zstd level {l:?} (1..=22)"))?;
                    if !(1..=22).contains(&level) {
                        return Err(format!("zstd level {level} out of range 1..=22"));
                    }
                    Ok(Codec::Zstd { level })
                }
                None => Err(format!(
                    "unknown codec {s:?}: use zstd[:LEVEL], lz4 or none"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_roundtrip() {
        assert_eq!("zstd:1".parse::<Codec>().unwrap(), Codec::Zstd { level: 1 });
        assert_eq!("ZSTD".parse::<Codec>().unwrap(), Codec::Zstd { level: 3 });
        assert!("zstd:0".parse::<Codec>().is_err());
        assert!("gzip".parse::<Codec>().is_err());
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in [Codec::None, Codec::Zstd { level: 1 }, Codec::Lz4] {
            let mut z = Vec::new();
            c.compress(&raw, &mut z).unwrap();
            let mut back = Vec::new();
            Codec::from_id(c.id())
                .unwrap()
                .decompress(&z, raw.len(), &mut back)
                .unwrap();
            assert_eq!(back, raw, "{c}");
        }
    }
}
