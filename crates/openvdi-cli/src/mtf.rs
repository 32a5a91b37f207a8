//! The MTF the tool reads itself — media families of `.bak` files and the streaming
//! block walk of `verify` — comes from the `openvdi-mtf` crate. Headers and file
//! lists (HEADERONLY / FILELISTONLY) come from the engine.

pub use openvdi_mtf::{order_stripes, Walker};
