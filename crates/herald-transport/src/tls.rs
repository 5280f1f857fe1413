//! TLS for the TCP transport (rustls 0.23, ring provider).
//!
//! A [`TlsConfig`] holds a server side (used for accepted connections) and a client side
//! (used when dialing). [`TlsConfig::from_pem`] builds both from PEM text, like casty's
//! `tls.Config.from_paths`: the node's certificate chain and key, and the CA that signs
//! every node. With `mutual = true` the server requires and verifies a client
//! certificate signed by that CA, and the client presents its own.
//!
//! The client checks the server's certificate and its **host name against the dialed
//! host, i.e. after the address map** (casty does the same through Python's `ssl`).
//! Frames and handshakes are unchanged inside TLS.
//!
//! ```no_run
//! use herald_transport::tls::TlsConfig;
//! let tls = TlsConfig::from_pem_files("node.pem", "node.key", "ca.pem", true)?;
//! # Ok::<(), herald_transport::tls::TlsError>(())
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// PEM text held nothing usable.
    #[error("no {what} found in {source_name}")]
    Empty {
        /// What was looked for (certificate, private key).
        what: &'static str,
        /// Where.
        source_name: String,
    },
    /// PEM text could not be parsed.
    #[error("invalid PEM in {source_name}: {message}")]
    Pem {
        /// Where.
        source_name: String,
        /// Parser message.
        message: String,
    },
    /// rustls refused the material (bad key, CA not usable, ...).
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
}

/// Server and client TLS configurations of a node.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// Used for accepted connections (`None`: accepted connections are plain TCP).
    pub server: Option<Arc<ServerConfig>>,
    /// Used when dialing (`None`: dialed connections are plain TCP).
    pub client: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server", &self.server.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8], source_name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            source_name: source_name.to_owned(),
        });
    }
    Ok(certs)
}

fn key(pem: &[u8], source_name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            source_name: source_name.to_owned(),
        },
        other => TlsError::Pem {
            source_name: source_name.to_owned(),
            message: other.to_string(),
        },
    })
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA bundle")? {
        roots
            .add(c)
            .map_err(|e| TlsError::Rustls(format!("CA certificate not usable: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn rustls_err(e: impl fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

impl TlsConfig {
    /// Builds server and client sides from PEM text: this node's certificate chain and
    /// private key, and the CA certificate(s) trusted for peers. With `mutual`, the
    /// server requires a client certificate signed by the CA and the client presents
    /// this node's certificate.
    pub fn from_pem(
        cert_chain: &[u8],
        private_key: &[u8],
        ca: &[u8],
        mutual: bool,
    ) -> Result<Self, TlsError> {
        let chain = certs(cert_chain, "certificate chain")?;
        let roots = roots(ca)?;
        let server_builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?;
        let server = if mutual {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(rustls_err)?;
            server_builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key(private_key, "private key")?)
        } else {
            server_builder
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key(private_key, "private key")?)
        }
        .map_err(rustls_err)?;
        let client = Self::client_config(roots, mutual.then_some((chain, private_key)))?;
        Ok(TlsConfig {
            server: Some(Arc::new(server)),
            client: Some(Arc::new(client)),
        })
    }

    /// A dial-only configuration (for client-only nodes and `herald tell`): trusts `ca`
    /// and optionally presents a client certificate (`(chain PEM, key PEM)`).
    pub fn client_from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, TlsError> {
        let roots = roots(ca)?;
        let identity = match identity {
            Some((chain, k)) => Some((certs(chain, "certificate chain")?, k)),
            None => None,
        };
        Ok(TlsConfig {
            server: None,
            client: Some(Arc::new(Self::client_config(roots, identity)?)),
        })
    }

    fn client_config(
        roots: Arc<RootCertStore>,
        identity: Option<(Vec<CertificateDer<'static>>, &[u8])>,
    ) -> Result<ClientConfig, TlsError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(rustls_err)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .with_webpki_verifier(verifier);
        match identity {
            Some((chain, k)) => builder
                .with_client_auth_cert(chain, key(k, "private key")?)
                .map_err(rustls_err),
            None => Ok(builder.with_no_client_auth()),
        }
    }

    /// [`from_pem`](Self::from_pem) reading the three files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
        ca: impl AsRef<Path>,
        mutual: bool,
    ) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Self::from_pem(
            &read(cert_chain.as_ref())?,
            &read(private_key.as_ref())?,
            &read(ca.as_ref())?,
            mutual,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_gives_clear_errors() {
        let e = TlsConfig::from_pem(b"nope", b"nope", b"nope", true).err();
        assert!(
            matches!(
                e,
                Some(TlsError::Empty {
                    what: "certificate",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = TlsConfig::from_pem_files("/nonexistent/x.pem", "k", "c", false).err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("/nonexistent/x.pem"), "{msg}");
    }
}
