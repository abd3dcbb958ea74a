//! The REST API: `POST /identify` (docs/SPEC.md §5) and the health endpoints.

pub mod health;
pub mod identify;
