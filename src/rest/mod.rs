//! The REST API: `POST /identify` (SPEC §5) and the health endpoints.

pub mod health;
pub mod identify;
