//! Shared support for Herald cross-crate integration tests.
