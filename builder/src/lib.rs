//! hearth's builder: the content-addressed store, the pinned fetcher, recipes, OCI
//! registry pulls, and (in `format`) the byte-level image formats.
//!
//! Boundaries: `digest`, `recipe` parsing and `format` are pure (bytes in, bytes
//! out); `store` touches only the store directory; `fetch` and `oci` do network I/O;
//! nothing here prints (progress goes through [`report::Reporter`]).

#![warn(missing_docs)]

pub mod build;
pub mod cmd;
pub mod config;
pub mod digest;
pub mod fetch;
pub mod files;
pub mod fill;
pub mod format;
pub mod layers;
pub mod lock;
pub mod oci;
pub mod recipe;
pub mod report;
pub mod store;
pub mod tree;
