//! nuropb-compatible message encryption: RSA-OAEP-SHA256 wrapping a per-call Fernet key.
//!
//! This is the scheme of nuropb 0.1.8 (`nuropb/encodings/encryption.py`), byte for byte:
//!
//! * A **Fernet key** is 32 random bytes (16 signing + 16 encryption) written as 44
//!   characters of URL-safe base64. A fresh key is made for every encrypted call.
//! * A **Fernet token** is `0x80 ‖ timestamp (u64 BE seconds) ‖ IV (16) ‖
//!   AES-128-CBC/PKCS#7 ciphertext ‖ HMAC-SHA256(signing key, everything before)`, written as
//!   URL-safe base64 with padding.
//! * An **encrypted body** on the wire is
//!   `base64(RSA-OAEP(SHA-256, MGF1-SHA-256, key text)) "." base64(token text)`, both parts
//!   in *standard* base64. A request's key part is encrypted with the target service's public
//!   key; a reply reuses the request's Fernet key and puts the key part under the *service's own*
//!   public key (the client ignores it and decrypts with the key it remembered).
//!
//! The message header `encrypted: "yes"` marks such a body; `content_type` stays
//! `application/json`.
//!
//! Unlike nuropb, a [`ServiceKey`] can be loaded from a PEM file so that every instance of a
//! service shares one key pair (nuropb generates one per instance, which breaks encrypted
//! calls as soon as a service runs twice).
//!
//! ```
//! use herald_mesh::crypto::{FernetKey, open_reply, seal_reply};
//!
//! // The Fernet layer alone (RSA key generation is slow in debug builds).
//! let key = FernetKey::generate();
//! let token = key.encrypt(b"{\"a\":1}");
//! assert_eq!(key.decrypt(token.as_bytes()).unwrap(), b"{\"a\":1}");
//! assert!(FernetKey::generate().decrypt(token.as_bytes()).is_err());
//! # let _ = (open_reply, seal_reply);
//! ```

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aes::Aes128;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

use crate::error::MeshError;
use crate::service::{ClientCipher, ServiceKeys, SessionKey};

type HmacSha256 = Hmac<Sha256>;
type Aes128CbcEnc = cbc::Encryptor<Aes128>;
type Aes128CbcDec = cbc::Decryptor<Aes128>;

/// Fernet's version byte.
pub const FERNET_VERSION: u8 = 0x80;
/// Length of a Fernet key in URL-safe base64 text (32 bytes).
pub const FERNET_KEY_TEXT_LEN: usize = 44;
/// The RSA modulus size Herald generates (the size nuropb's examples use).
pub const DEFAULT_RSA_BITS: usize = 2048;
/// Largest encrypted body Herald will try to open (guards the base64 and RSA work).
pub const MAX_ENCRYPTED_BODY: usize = 64 * 1024 * 1024;

/// Fixed overhead of a Fernet token before base64: version, timestamp, IV, HMAC.
const TOKEN_OVERHEAD: usize = 1 + 8 + 16 + 32;

/// What went wrong while encrypting or decrypting a nuropb payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A Fernet key was not 32 bytes of URL-safe base64.
    #[error("invalid Fernet key: {reason} (got {len} characters)")]
    BadFernetKey {
        /// What was wrong.
        reason: &'static str,
        /// Length of the text that was given.
        len: usize,
    },
    /// A Fernet token was malformed or failed authentication.
    #[error("invalid Fernet token: {0}")]
    BadToken(&'static str),
    /// An encrypted body did not have the `key "." token` shape.
    #[error("malformed encrypted body ({len} bytes): {reason}")]
    BadEnvelope {
        /// What was wrong.
        reason: &'static str,
        /// Body length.
        len: usize,
    },
    /// An encrypted body was larger than [`MAX_ENCRYPTED_BODY`].
    #[error("encrypted body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// RSA-OAEP failed (wrong key, corrupted key part, key too small).
    #[error("RSA-OAEP {op} failed: {source}")]
    Rsa {
        /// `"encrypt"` or `"decrypt"`.
        op: &'static str,
        /// The underlying error.
        source: rsa::Error,
    },
    /// A PEM key could not be parsed.
    #[error("cannot parse {what} PEM: {reason}")]
    BadPem {
        /// `"public key"` or `"private key"`.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// RSA key generation failed.
    #[error("RSA key generation ({bits} bits) failed: {source}")]
    KeyGen {
        /// The requested size.
        bits: usize,
        /// The underlying error.
        source: rsa::Error,
    },
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A Fernet key: 16 bytes of HMAC signing key followed by 16 bytes of AES-128 key.
///
/// `Debug` does not print the key material.
#[derive(Clone, PartialEq, Eq)]
pub struct FernetKey([u8; 32]);

impl fmt::Debug for FernetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FernetKey(..)")
    }
}

impl FernetKey {
    /// A fresh random key (as `Fernet.generate_key()`).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps 32 raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the 44-character URL-safe base64 text form.
    pub fn from_base64(text: &[u8]) -> Result<Self, CryptoError> {
        let text = trim_ascii(text);
        let bad = |reason| CryptoError::BadFernetKey {
            reason,
            len: text.len(),
        };
        if text.len() != FERNET_KEY_TEXT_LEN {
            return Err(bad("expected 44 characters of URL-safe base64"));
        }
        let raw = URL_SAFE
            .decode(text)
            .map_err(|_| bad("not URL-safe base64"))?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| bad("does not decode to 32 bytes"))?;
        Ok(Self(bytes))
    }

    /// The 44-character URL-safe base64 text form (what nuropb RSA-encrypts).
    pub fn to_base64(&self) -> String {
        URL_SAFE.encode(self.0)
    }

    fn signing_key(&self) -> &[u8] {
        &self.0[..16]
    }

    fn encryption_key(&self) -> &[u8] {
        &self.0[16..]
    }

    /// Encrypts `plaintext` into a Fernet token (URL-safe base64 text), with the current
    /// time and a random IV.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        let mut iv = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.encrypt_with(plaintext, now, iv)
    }

    /// Encrypts with an explicit timestamp and IV (deterministic; for test vectors).
    pub fn encrypt_with(&self, plaintext: &[u8], timestamp: u64, iv: [u8; 16]) -> String {
        let cipher = Aes128CbcEnc::new(self.encryption_key().into(), (&iv).into());
        let ciphertext = cipher.encrypt_padded_vec_mut::<Pkcs7>(plaintext);
        let mut token = Vec::with_capacity(TOKEN_OVERHEAD + ciphertext.len());
        token.push(FERNET_VERSION);
        token.extend_from_slice(&timestamp.to_be_bytes());
        token.extend_from_slice(&iv);
        token.extend_from_slice(&ciphertext);
        let tag = self.mac(&token);
        token.extend_from_slice(&tag);
        URL_SAFE.encode(token)
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail for a 16-byte key.
        let mut mac = match HmacSha256::new_from_slice(self.signing_key()) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Verifies and decrypts a Fernet token (URL-safe base64 text). The token's age is
    /// not checked, as nuropb does not check it either.
    pub fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let token = trim_ascii(token);
        let raw = URL_SAFE
            .decode(token)
            .map_err(|_| CryptoError::BadToken("not URL-safe base64"))?;
        if raw.len() < TOKEN_OVERHEAD + 16 {
            return Err(CryptoError::BadToken("too short"));
        }
        if raw[0] != FERNET_VERSION {
            return Err(CryptoError::BadToken(
                "unknown version byte (expected 0x80)",
            ));
        }
        let (signed, tag) = raw.split_at(raw.len() - 32);
        let mut mac = match HmacSha256::new_from_slice(self.signing_key()) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(signed);
        mac.verify_slice(tag)
            .map_err(|_| CryptoError::BadToken("HMAC mismatch (wrong key or tampered token)"))?;
        let iv: [u8; 16] = signed[9..25]
            .try_into()
            .map_err(|_| CryptoError::BadToken("truncated IV"))?;
        let ciphertext = &signed[25..];
        if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
            return Err(CryptoError::BadToken(
                "ciphertext is not a multiple of the AES block size",
            ));
        }
        let cipher = Aes128CbcDec::new(self.encryption_key().into(), (&iv).into());
        cipher
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .map_err(|_| CryptoError::BadToken("bad PKCS#7 padding"))
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // `Hmac::new_from_slice` only fails for MACs with a fixed key size, which HMAC is not.
    panic!("HMAC-SHA256 rejected a 16-byte key")
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// An RSA public key as nuropb publishes it in `nuropb_describe` (`public_key`, PEM
/// SubjectPublicKeyInfo).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: RsaPublicKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use rsa::traits::PublicKeyParts;
        write!(f, "PublicKey(RSA-{})", self.key.size() * 8)
    }
}

impl PublicKey {
    /// Parses a PEM public key: `-----BEGIN PUBLIC KEY-----` (SPKI, nuropb's format) or
    /// `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = RsaPublicKey::from_public_key_pem(pem.trim()).or_else(|spki| {
            RsaPublicKey::from_pkcs1_pem(pem.trim()).map_err(|_| CryptoError::BadPem {
                what: "public key",
                reason: spki.to_string(),
            })
        })?;
        Ok(Self { key })
    }

    /// The SPKI PEM text, exactly as Python `cryptography` writes it (64-column base64,
    /// `\n` line endings, trailing newline).
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|e| {
                // Encoding a valid in-memory key cannot fail; keep the error visible anyway.
                tracing::error!(error = %e, "encoding an RSA public key to PEM failed");
                String::new()
            })
    }

    /// RSA-OAEP(SHA-256) encrypts a Fernet key's text form and returns it in standard base64.
    pub fn wrap_key(&self, key: &FernetKey) -> Result<String, CryptoError> {
        let text = key.to_base64();
        let sealed = self
            .key
            .encrypt(
                &mut rand::rngs::OsRng,
                Oaep::new::<Sha256>(),
                text.as_bytes(),
            )
            .map_err(|source| CryptoError::Rsa {
                op: "encrypt",
                source,
            })?;
        Ok(STANDARD.encode(sealed))
    }
}

/// A service's RSA key pair. Load it from a PEM file shared by every instance of the service
/// ([`ServiceKey::from_pem_file`]) so that any instance can open any encrypted request.
#[derive(Clone)]
pub struct ServiceKey {
    private: RsaPrivateKey,
    public: PublicKey,
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceKey({:?}, private part hidden)", self.public)
    }
}

impl ServiceKey {
    /// Generates a fresh key pair of `bits` bits (2048 is nuropb's size; slow in debug builds).
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
            .map_err(|source| CryptoError::KeyGen { bits, source })?;
        Ok(Self::from_private(private))
    }

    fn from_private(private: RsaPrivateKey) -> Self {
        let public = PublicKey {
            key: private.to_public_key(),
        };
        Self { private, public }
    }

    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, what Python's
    /// `cryptography` writes with `PrivateFormat.PKCS8`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem.trim()).or_else(|p8| {
            RsaPrivateKey::from_pkcs1_pem(pem.trim()).map_err(|_| CryptoError::BadPem {
                what: "private key",
                reason: p8.to_string(),
            })
        })?;
        Ok(Self::from_private(private))
    }

    /// Reads a PEM private key file (see [`ServiceKey::from_pem`]).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, CryptoError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CryptoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&text)
    }

    /// The private key as unencrypted PKCS#8 PEM (for writing a shared key file).
    pub fn to_pkcs8_pem(&self) -> Result<String, CryptoError> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| CryptoError::BadPem {
                what: "private key",
                reason: e.to_string(),
            })
    }

    /// The public half, as published in `nuropb_describe`.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Decrypts the standard-base64 RSA-OAEP key part of an encrypted body.
    pub fn unwrap_key(&self, key_part: &[u8]) -> Result<FernetKey, CryptoError> {
        let sealed =
            STANDARD
                .decode(trim_ascii(key_part))
                .map_err(|_| CryptoError::BadEnvelope {
                    reason: "key part is not standard base64",
                    len: key_part.len(),
                })?;
        let text = self
            .private
            .decrypt_blinded(&mut rand::rngs::OsRng, Oaep::new::<Sha256>(), &sealed)
            .map_err(|source| CryptoError::Rsa {
                op: "decrypt",
                source,
            })?;
        FernetKey::from_base64(&text)
    }
}

/// Splits an encrypted body into its key part and its (standard base64) token part.
fn split_body(wire: &[u8]) -> Result<(&[u8], &[u8]), CryptoError> {
    if wire.len() > MAX_ENCRYPTED_BODY {
        return Err(CryptoError::TooLarge {
            len: wire.len(),
            max: MAX_ENCRYPTED_BODY,
        });
    }
    let dot = wire
        .iter()
        .position(|&b| b == b'.')
        .ok_or(CryptoError::BadEnvelope {
            reason: "no '.' between key part and token part",
            len: wire.len(),
        })?;
    Ok((&wire[..dot], &wire[dot + 1..]))
}

fn open_token_part(token_part: &[u8], key: &FernetKey) -> Result<Vec<u8>, CryptoError> {
    let token = STANDARD
        .decode(trim_ascii(token_part))
        .map_err(|_| CryptoError::BadEnvelope {
            reason: "token part is not standard base64",
            len: token_part.len(),
        })?;
    key.decrypt(&token)
}

fn seal_with(body: &[u8], key: &FernetKey, key_for: &PublicKey) -> Result<Vec<u8>, CryptoError> {
    let key_part = key_for.wrap_key(key)?;
    let token = key.encrypt(body);
    let token_part = STANDARD.encode(token.as_bytes());
    let mut out = Vec::with_capacity(key_part.len() + 1 + token_part.len());
    out.extend_from_slice(key_part.as_bytes());
    out.push(b'.');
    out.extend_from_slice(token_part.as_bytes());
    Ok(out)
}

/// Client side, outgoing request or command: encrypts `body` under a fresh Fernet key
/// wrapped for the target service's public key. Keep the returned key to open the reply.
pub fn seal_request(body: &[u8], service: &PublicKey) -> Result<(Vec<u8>, FernetKey), CryptoError> {
    let key = FernetKey::generate();
    let wire = seal_with(body, &key, service)?;
    Ok((wire, key))
}

/// Service side, incoming request or command: unwraps the Fernet key with the service's
/// private key and decrypts the body. Keep the returned key to seal the reply.
pub fn open_request(
    wire: &[u8],
    service: &ServiceKey,
) -> Result<(Vec<u8>, FernetKey), CryptoError> {
    let (key_part, token_part) = split_body(wire)?;
    let key = service.unwrap_key(key_part)?;
    let body = open_token_part(token_part, &key)?;
    Ok((body, key))
}

/// Service side, outgoing reply: encrypts `body` with the request's Fernet key; the key
/// part is wrapped for the service's own public key, as nuropb does.
pub fn seal_reply(body: &[u8], key: &FernetKey, own: &PublicKey) -> Result<Vec<u8>, CryptoError> {
    seal_with(body, key, own)
}

/// Client side, incoming reply: decrypts with the Fernet key remembered for the call and
/// ignores the key part.
pub fn open_reply(wire: &[u8], key: &FernetKey) -> Result<Vec<u8>, CryptoError> {
    let (_key_part, token_part) = split_body(wire)?;
    open_token_part(token_part, key)
}

/// A per-call Fernet session as the mesh uses it ([`SessionKey`]): the call's Fernet
/// key and the public key the key part of sealed bodies is wrapped for (the service's
/// own key on the service side, as nuropb does; the target's key on the client side).
#[derive(Clone, Debug)]
pub struct FernetSession {
    key: FernetKey,
    wrap_for: PublicKey,
}

impl FernetSession {
    /// A session.
    pub fn new(key: FernetKey, wrap_for: PublicKey) -> Self {
        Self { key, wrap_for }
    }

    /// The call's Fernet key.
    pub fn key(&self) -> &FernetKey {
        &self.key
    }
}

fn mesh_err(e: CryptoError) -> MeshError {
    MeshError::Encryption(e.to_string())
}

impl SessionKey for FernetSession {
    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, MeshError> {
        seal_reply(plaintext, &self.key, &self.wrap_for).map_err(mesh_err)
    }

    fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, MeshError> {
        open_reply(ciphertext, &self.key).map_err(mesh_err)
    }
}

impl ServiceKeys for ServiceKey {
    fn public_key_pem(&self) -> String {
        self.public.to_pem()
    }

    fn open_request(&self, body: &[u8]) -> Result<(Vec<u8>, Box<dyn SessionKey>), MeshError> {
        let (plain, key) = open_request(body, self).map_err(mesh_err)?;
        Ok((
            plain,
            Box::new(FernetSession::new(key, self.public.clone())),
        ))
    }
}

/// The client side of nuropb encryption ([`ClientCipher`]): a fresh Fernet key per call,
/// RSA-OAEP-wrapped for the target service's published public key.
#[derive(Clone, Copy, Debug, Default)]
pub struct NuropbCipher;

impl ClientCipher for NuropbCipher {
    fn seal_request(
        &self,
        public_key_pem: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Box<dyn SessionKey>), MeshError> {
        let public = PublicKey::from_pem(public_key_pem).map_err(mesh_err)?;
        let (wire, key) = seal_request(plaintext, &public).map_err(mesh_err)?;
        Ok((wire, Box::new(FernetSession::new(key, public))))
    }
}

/// Fuzzing entry point for the decoders of encrypted traffic: the first byte picks one.
/// `0`: `data` as a PEM public key (what a remote describe document carries); `1`: as
/// an encrypted request body opened with a service key (reachable by any publisher);
/// `2`: as a reply body opened with a call's Fernet key; `3`: as a plaintext, which
/// must come back unchanged through `seal_reply` and `open_reply` (an oracle for the
/// Fernet layer). Must never panic otherwise.
pub fn fuzz_crypto(data: &[u8]) {
    use std::sync::OnceLock;
    // One small key for the whole run: generating RSA keys per input would be all the
    // fuzzer does.
    static KEY: OnceLock<Option<ServiceKey>> = OnceLock::new();
    let Some((&route, rest)) = data.split_first() else {
        return;
    };
    let fernet = FernetKey::from_bytes([7; 32]);
    match route % 4 {
        0 => {
            let _ = PublicKey::from_pem(&String::from_utf8_lossy(rest));
        }
        1 => {
            if let Some(key) = KEY.get_or_init(|| ServiceKey::generate(1024).ok()) {
                let _ = open_request(rest, key);
            }
        }
        2 => {
            let _ = open_reply(rest, &fernet);
        }
        _ => {
            if let Some(key) = KEY.get_or_init(|| ServiceKey::generate(1024).ok())
                && let Ok(wire) = seal_reply(rest, &fernet, key.public_key())
            {
                match open_reply(&wire, &fernet) {
                    Ok(back) => assert_eq!(back, rest, "sealed reply does not open to itself"),
                    Err(e) => panic!("a reply sealed here does not open: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fernet_round_trip_and_tamper_detection() {
        let key = FernetKey::generate();
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let msg = vec![b'x'; len];
            let token = key.encrypt(&msg);
            assert_eq!(key.decrypt(token.as_bytes()).unwrap(), msg, "len {len}");
        }
        let token = key.encrypt(b"hello");
        let mut raw = URL_SAFE.decode(&token).unwrap();
        let last = raw.len() - 40;
        raw[last] ^= 1;
        let tampered = URL_SAFE.encode(raw);
        assert!(matches!(
            key.decrypt(tampered.as_bytes()),
            Err(CryptoError::BadToken(m)) if m.contains("HMAC")
        ));
    }

    #[test]
    fn fernet_known_answer_from_the_spec() {
        // The Fernet specification's "generate" vector (github.com/fernet/spec).
        let key = FernetKey::from_base64(b"cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=").unwrap();
        let iv: [u8; 16] = core::array::from_fn(|i| i as u8);
        let token = key.encrypt_with(b"hello", 499_162_800, iv);
        assert_eq!(
            token,
            "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA=="
        );
        assert_eq!(key.decrypt(token.as_bytes()).unwrap(), b"hello");
    }

    #[test]
    fn bad_keys_and_tokens_are_errors_not_panics() {
        assert!(FernetKey::from_base64(b"short").is_err());
        assert!(FernetKey::from_base64(&[b'!'; 44]).is_err());
        let key = FernetKey::generate();
        for junk in [&b""[..], b"gAAAA", b"!!!!", &[0xff; 200]] {
            assert!(key.decrypt(junk).is_err());
        }
        assert!(matches!(
            open_reply(b"no-dot-here", &key),
            Err(CryptoError::BadEnvelope { .. })
        ));
        assert!(open_reply(b"a.b", &key).is_err());
        assert!(PublicKey::from_pem("not a pem").is_err());
        assert!(
            ServiceKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
