//! Clustering support that is not an actor: the local outcome spool used for self-fencing
//! (docs/design.md §4). The election and dead-node detection live in `actors::coordinator` and in
//! the schema's `long_task.coordinate`; their SQL calls in `db::cluster`.
//!
//! Must never talk to the database itself.

pub mod spool;

pub use spool::{Spool, SpoolError};
