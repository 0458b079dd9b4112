//! jsonwebtoken's cryptography for the one algorithm APNs provider tokens use, ES256, done by
//! `ring` (the TLS stack's own crypto, already in the binary).
//!
//! jsonwebtoken's bundled backends bring every JWT algorithm: RustCrypto's pulls in RSA, P-384
//! and Ed25519 code the service never runs (and the `rsa` crate with its open timing
//! advisory), aws-lc-rs a second C crypto library. The crate lets a program install its own
//! provider instead; this is that provider, and it refuses every other algorithm.

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory,
    verifier_factory,
    // JWKs are never read or made here.
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Makes this the process's JWT provider, once; a provider installed before stays.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}

fn signer_factory(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if *alg != Algorithm::ES256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let rng = SystemRandom::new();
    // `inner` is the key's PKCS#8 DER (what `from_ec_der`/`from_ec_pem` hold).
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.inner(), &rng)
        .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
    Ok(Box::new(Signer { pair, rng }))
}

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if *alg != Algorithm::ES256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    // The uncompressed SEC1 point, as `DecodingKey::from_ec_pem`/`from_ec_components` hold it.
    Ok(Box::new(Verifier(key.as_bytes().to_vec())))
}

struct Signer {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        // The fixed form (r || s, 64 bytes) is JWS's.
        let sig = self
            .pair
            .sign(&self.rng, msg)
            .map_err(|_| signature::Error::new())?;
        Ok(sig.as_ref().to_vec())
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

struct Verifier(Vec<u8>);

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(msg, sig)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}
