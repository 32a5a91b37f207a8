//! placeholder while building
#![forbid(unsafe_code)]
pub mod catalog;
pub mod db;
pub mod error;
pub mod fault;
pub mod page;
pub mod sql;
pub mod vdi;
