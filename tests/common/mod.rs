//! Helpers shared by integration tests (`mod common;`).

pub mod fake_es;
