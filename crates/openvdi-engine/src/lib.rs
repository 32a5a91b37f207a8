//! placeholder while building
#![forbid(unsafe_code)]
pub mod catalog;
pub mod db;
pub mod error;
pub mod page;
pub mod sql;
