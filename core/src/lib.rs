//! Types every Leanloop crate shares: the canonical event model and the one
//! mapping from error classes to HTTP answers.
//!
//! Nothing here does I/O. Crates define their own error enums and classify them
//! with [`error::Classify`]; only [`error::ApiError`] turns a class into a status.

pub mod error;
pub mod event;

pub use error::{ApiError, Classify, ErrorClass, JsonFault};
pub use event::{Event, EventKind, UserUpdate, EARLIEST_MS};
