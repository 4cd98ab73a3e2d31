//! The file helpers of the appliance are the builder's: one error type that
//! names the operation and the file, one atomic write (mode from the start,
//! file and directory synced), removal of a file that may be gone.

pub use hearth_builder::files::{FileError, remove_if_present, write_atomic};
