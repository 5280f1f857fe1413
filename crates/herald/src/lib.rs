//! Herald facade (filled in as the layers land).
#[cfg(feature = "wire")]
pub use herald_wire as wire;
#[cfg(feature = "transport")]
pub use herald_transport as transport;
#[cfg(feature = "registry")]
pub use herald_registry as registry;
#[cfg(feature = "mesh")]
pub use herald_mesh as mesh;
