//! PKCS#12 bundles (`.p12`) that browsers and phones can import as a client identity.
//!
//! p12-keystore 0.4 writes PBES2 (PBKDF2-SHA256 + AES-256-CBC) with an HMAC-SHA256 MAC by
//! default. iOS/macOS Keychain before 2023 and Android before 12 cannot open that and report
//! a wrong password. The legacy scheme (pbeWithSHAAnd3-KeyTripleDES-CBC for keys and
//! certificates, SHA-1 MAC) is what `openssl pkcs12 -legacy` writes and imports everywhere,
//! including current browsers, so bundles use it. The weak cipher protects a dev identity
//! whose password is documented anyway; the real protection is where the file is kept.

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Ca, CertError, Issued};

/// Password of the dev bundles unless one is given. iOS refuses bundles with an empty password.
pub const DEFAULT_P12_PASSWORD: &str = "iot-bridge";

/// Key derivation rounds, as OpenSSL's legacy mode uses; old Android is slow with many more.
const ITERATIONS: u32 = 2048;

impl Issued {
    /// Bundles this certificate, its key and the CA certificate into a password-protected
    /// PKCS#12 file. `friendly_name` is what certificate pickers show.
    pub fn to_pkcs12(
        &self,
        ca: &Ca,
        friendly_name: &str,
        password: &str,
    ) -> Result<Vec<u8>, CertError> {
        if password.is_empty() {
            return Err(CertError::Pkcs12(
                "the password must not be empty (iOS and macOS cannot import such bundles)".into(),
            ));
        }
        let p12 = |e: p12_keystore::error::Error| CertError::Pkcs12(e.to_string());
        let leaf = Certificate::from_der(&self.cert_der).map_err(p12)?;
        let ca_cert = Certificate::from_der(ca.cert_der()).map_err(p12)?;
        let key = PrivateKey::from_der(&self.key_der).map_err(p12)?;

        // The local key id ties the key bag to its certificate bag; the certificate's serial
        // number is unique under this CA, which is all the id has to be.
        let (_, x509) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| CertError::invalid("certificate", e))?;
        let local_key_id = x509.raw_serial().to_vec();

        // The CA goes into the chain so the importer can show (and on Android offer to
        // install) the issuer; trusting it for servers is still a separate, explicit step.
        let chain = PrivateKeyChain::new(local_key_id, key, [leaf, ca_cert]);
        let mut store = KeyStore::new();
        store.add_entry(friendly_name, KeyStoreEntry::PrivateKeyChain(chain));
        store
            .writer(password)
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .encryption_iterations(ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(ITERATIONS)
            .write()
            .map_err(p12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p12_keystore::Pkcs12ImportPolicy;

    /// DER encodings of the algorithm OIDs that decide whether old Apple/Android devices
    /// can open the bundle.
    const OID_3DES_PBE: &[u8] = &[
        0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x03,
    ];
    const OID_SHA1: &[u8] = &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a];
    const OID_PBES2: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
    ];

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn uses_the_legacy_algorithms() {
        let ca = Ca::generate("test CA").unwrap();
        let alice = ca.issue_client("alice").unwrap();
        let der = alice.to_pkcs12(&ca, "alice", "pw").unwrap();
        assert!(contains(&der, OID_3DES_PBE), "3DES PBE not used");
        assert!(contains(&der, OID_SHA1), "SHA-1 MAC not used");
        assert!(!contains(&der, OID_PBES2), "PBES2 must not appear");
    }

    #[test]
    fn round_trip_keeps_key_and_chain() {
        let ca = Ca::generate("test CA").unwrap();
        let alice = ca.issue_client("alice").unwrap();
        let der = alice.to_pkcs12(&ca, "alice", "secret").unwrap();
        let store = KeyStore::from_pkcs12(&der, "secret", Pkcs12ImportPolicy::Strict).unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, "alice");
        assert_eq!(chain.key().as_der(), alice.key_der.as_slice());
        let certs: Vec<&[u8]> = chain.certs().iter().map(|c| c.as_der()).collect();
        assert_eq!(certs, vec![alice.cert_der.as_slice(), ca.cert_der()]);
        assert!(KeyStore::from_pkcs12(&der, "wrong", Pkcs12ImportPolicy::Strict).is_err());
    }

    #[test]
    fn empty_password_is_refused() {
        let ca = Ca::generate("test CA").unwrap();
        let alice = ca.issue_client("alice").unwrap();
        assert!(matches!(
            alice.to_pkcs12(&ca, "alice", ""),
            Err(CertError::Pkcs12(_))
        ));
    }
}
