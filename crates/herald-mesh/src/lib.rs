//! herald-mesh (work in progress in this session).

pub mod crypto;
