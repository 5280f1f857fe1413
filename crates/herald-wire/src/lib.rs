//! herald-wire (work in progress in this session).
