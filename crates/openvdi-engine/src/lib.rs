//! placeholder while building
#![forbid(unsafe_code)]
pub mod error;
pub mod sql;
