//! Shared helpers for Herald benchmarks.
