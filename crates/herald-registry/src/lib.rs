//! herald-registry (work in progress in this session).
