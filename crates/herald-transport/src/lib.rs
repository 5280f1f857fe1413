//! herald-transport (work in progress in this session).
