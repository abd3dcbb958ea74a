//! The REST API: `POST /identify` (docs/SPEC.md §5), `POST /identify/batch` (§13)
//! and the health endpoints.

pub mod batch;
pub mod health;
pub mod identify;
