//! [`JwtKey`] and [`Claims`]: signed tokens (JWT) minted fresh for one test, with the key files a
//! server is started with (`--jwt-secret-file`, `--jwt-public-key-file`), and the forged tokens
//! the negative tests need ([`JwtKey::mint_with_header_alg`], [`JwtKey::mint_confused`],
//! [`unsigned_token`], [`tamper_payload`]).
//!
//! Tokens are made with `jsonwebtoken`, the crate the server verifies them with; the forged
//! ones are assembled here, signed through `jsonwebtoken::crypto::sign`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Map, Value};
use tempfile::TempDir;

/// How long a token of [`Claims::for_user`] lasts.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Random bytes behind an HS256 secret.
const SECRET_BYTES: usize = 32;

/// A signing key made fresh for one test, with the file the server reads to verify its tokens.
///
/// - [`JwtKey::hs256`]: a random shared secret, written to [`secret_file`](JwtKey::secret_file)
///   (`--jwt-secret-file`).
/// - [`JwtKey::ed25519`] (EdDSA) and [`JwtKey::es256`] (P-256): a key pair whose public half is
///   written as PEM to [`public_key_file`](JwtKey::public_key_file) (`--jwt-public-key-file`).
///
/// [`key_file`](JwtKey::key_file) is whichever of the two the key has. The file lives in a
/// temporary directory owned by the `JwtKey` and removed when it is dropped, so keep the key
/// alive as long as the server that reads it.
///
/// A token with a wrong signature is one minted by another `JwtKey` (for example a second
/// `JwtKey::hs256()`): no special API is needed for it.
///
/// ```
/// use std::time::Duration;
/// use wschat_testkit::{Claims, JwtKey};
///
/// let key = JwtKey::ed25519();
/// let token = key.mint(
///     &Claims::for_user("alice")
///         .expires_in(Duration::from_secs(2))
///         .rooms(&["team-*"]),
/// );
/// assert_eq!(token.split('.').count(), 3);
/// assert_eq!(key.algorithm(), jsonwebtoken::Algorithm::EdDSA);
/// assert!(key.public_key_file().exists());
/// // start the server with `--jwt-public-key-file <key.key_file()>` and connect with `token`
/// ```
#[derive(Debug)]
pub struct JwtKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    /// The public key (SPKI PEM), exactly the content of the key file; `None` for HS256.
    public_key_pem: Option<String>,
    key_file: PathBuf,
    _dir: TempDir,
}

impl JwtKey {
    /// A fresh random HS256 secret (32 random bytes, written as 64 hex characters).
    ///
    /// The secret file holds the secret followed by a newline, as `echo` would write it; the
    /// server trims that newline.
    pub fn hs256() -> Self {
        ensure_crypto_provider();
        let bytes: [u8; SECRET_BYTES] = rand::random();
        let secret = bytes.iter().fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        });
        let encoding = EncodingKey::from_secret(secret.as_bytes())
            .unwrap_or_else(|error| panic!("HS256 key: {error}"));
        let (dir, key_file) = write_key_file("jwt-secret", &format!("{secret}\n"));
        Self {
            algorithm: Algorithm::HS256,
            encoding,
            public_key_pem: None,
            key_file,
            _dir: dir,
        }
    }

    /// A fresh Ed25519 key pair: tokens are signed EdDSA.
    pub fn ed25519() -> Self {
        Self::key_pair(&rcgen::PKCS_ED25519, Algorithm::EdDSA)
    }

    /// A fresh P-256 key pair: tokens are signed ES256.
    pub fn es256() -> Self {
        Self::key_pair(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256)
    }

    /// An RSA key pair (RS256). Unlike the others it is not fresh: ring, which makes the test
    /// keys, cannot generate RSA keys, so this is one fixed 2048-bit pair made with
    /// `openssl genpkey` for tests only (`testkit/src/keys/`). Never trust it anywhere else.
    pub fn rs256() -> Self {
        ensure_crypto_provider();
        let private_pem = include_str!("keys/rs256-test-only.key.pem");
        let public_key_pem = include_str!("keys/rs256-test-only.pub.pem").to_owned();
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes())
            .unwrap_or_else(|error| panic!("RS256 signing key: {error}"));
        let (dir, key_file) = write_key_file("jwt-public-key.pem", &public_key_pem);
        Self {
            algorithm: Algorithm::RS256,
            encoding,
            public_key_pem: Some(public_key_pem),
            key_file,
            _dir: dir,
        }
    }

    fn key_pair(rcgen_algorithm: &'static rcgen::SignatureAlgorithm, algorithm: Algorithm) -> Self {
        ensure_crypto_provider();
        let pair = rcgen::KeyPair::generate_for(rcgen_algorithm)
            .unwrap_or_else(|error| panic!("{algorithm:?} key pair: {error}"));
        let private_pem = pair.serialize_pem(); // PKCS#8
        let encoding = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        }
        .unwrap_or_else(|error| panic!("{algorithm:?} signing key: {error}"));
        let public_key_pem = pair.public_key_pem(); // SPKI
        let (dir, key_file) = write_key_file("jwt-public-key.pem", &public_key_pem);
        Self {
            algorithm,
            encoding,
            public_key_pem: Some(public_key_pem),
            key_file,
            _dir: dir,
        }
    }

    /// The algorithm this key signs with, and the one the server expects for it.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public key (SPKI PEM, exactly the content of [`public_key_file`](Self::public_key_file)),
    /// or `None` for an HS256 key.
    pub fn public_key_pem(&self) -> Option<&str> {
        self.public_key_pem.as_deref()
    }

    /// The file the server verifies with: the secret file for HS256, the public key file
    /// otherwise.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Points `config` at this key: `--jwt-secret-file` for HS256, `--jwt-public-key-file`
    /// otherwise.
    ///
    /// ```
    /// use wschat_testkit::{Claims, JwtKey, TestServer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let key = JwtKey::hs256();
    /// let server = TestServer::start_with(|config| {
    ///     config.token = None; // users only: no shared secret
    ///     key.configure(config);
    /// })
    /// .await;
    /// let alice = server
    ///     .client()
    ///     .bearer(key.mint(&Claims::for_user("alice")))
    ///     .connect_ok()
    ///     .await;
    /// assert_eq!(alice.user(), "alice");
    /// # }
    /// ```
    pub fn configure(&self, config: &mut wschat::Config) {
        let path = self.key_file.clone();
        config.jwt_key = Some(match self.algorithm {
            Algorithm::HS256 => wschat::identity::jwt::JwtKeyFile::Secret(path),
            _ => wschat::identity::jwt::JwtKeyFile::PublicKey(path),
        });
    }

    /// The file holding the HS256 secret (`--jwt-secret-file`).
    ///
    /// # Panics
    ///
    /// For a key pair, which has no secret file.
    pub fn secret_file(&self) -> &Path {
        assert!(
            self.public_key_pem.is_none(),
            "a {:?} key has no secret file; use public_key_file()",
            self.algorithm
        );
        &self.key_file
    }

    /// The file holding the public key as PEM (`--jwt-public-key-file`).
    ///
    /// # Panics
    ///
    /// For an HS256 key, which has no public key.
    pub fn public_key_file(&self) -> &Path {
        assert!(
            self.public_key_pem.is_some(),
            "an HS256 key has no public key file; use secret_file()"
        );
        &self.key_file
    }

    /// The key that verifies this key's tokens, as the server builds it from the key file.
    pub fn decoding_key(&self) -> DecodingKey {
        let key = match (&self.public_key_pem, self.algorithm) {
            (None, _) => DecodingKey::from_secret(self.encoding.as_bytes()),
            (Some(pem), Algorithm::EdDSA) => DecodingKey::from_ed_pem(pem.as_bytes()),
            (Some(pem), _) => DecodingKey::from_ec_pem(pem.as_bytes()),
        };
        key.unwrap_or_else(|error| panic!("{:?} verifying key: {error}", self.algorithm))
    }

    /// A valid token: `claims` signed with this key, header `{"typ":"JWT","alg":<algorithm>}`.
    pub fn mint(&self, claims: &Claims) -> String {
        ensure_crypto_provider();
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims.map, &self.encoding)
            .unwrap_or_else(|error| panic!("minting a {:?} token: {error}", self.algorithm))
    }

    /// A token correctly signed with this key and its own algorithm, but whose header claims
    /// `alg` is `alg_name` (any string, known to `jsonwebtoken` or not, including `"none"`).
    ///
    /// The signature covers the rewritten header, so it is valid for this key: only the header's
    /// `alg` is wrong, and a server that trusts it must refuse the token.
    pub fn mint_with_header_alg(&self, claims: &Claims, alg_name: &str) -> String {
        let header = serde_json::json!({ "alg": alg_name, "typ": "JWT" });
        self.sign_parts(&header, claims, &self.encoding, self.algorithm)
    }

    /// The classic algorithm-confusion attack: an HS256 token whose HMAC secret is this key's
    /// public key PEM, byte for byte the content of [`public_key_file`](Self::public_key_file).
    /// A server that lets the header pick the algorithm and feeds it the key file as an HMAC
    /// secret accepts it.
    ///
    /// # Panics
    ///
    /// For an HS256 key, which has no public key.
    pub fn mint_confused(&self, claims: &Claims) -> String {
        let Some(public_key_pem) = &self.public_key_pem else {
            panic!("mint_confused needs a key pair, not an HS256 key");
        };
        let secret = EncodingKey::from_secret(public_key_pem.as_bytes())
            .unwrap_or_else(|error| panic!("HS256 key from the public key: {error}"));
        let header = serde_json::json!({ "alg": "HS256", "typ": "JWT" });
        self.sign_parts(&header, claims, &secret, Algorithm::HS256)
    }

    fn sign_parts(
        &self,
        header: &Value,
        claims: &Claims,
        key: &EncodingKey,
        algorithm: Algorithm,
    ) -> String {
        ensure_crypto_provider();
        let message = format!("{}.{}", encode_json(header), claims.encode());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, algorithm)
            .unwrap_or_else(|error| panic!("signing with {algorithm:?}: {error}"));
        format!("{message}.{signature}")
    }
}

/// An unsigned token: header `{"alg":"none","typ":"JWT"}`, `claims`, and an empty signature
/// (`<header>.<payload>.`). A server must refuse it.
pub fn unsigned_token(claims: &Claims) -> String {
    let header = serde_json::json!({ "alg": "none", "typ": "JWT" });
    format!("{}.{}.", encode_json(&header), claims.encode())
}

/// `token` with its payload replaced by `claims`, header and signature kept: the signature no
/// longer matches, and a server must refuse it.
///
/// # Panics
///
/// If `token` does not have three dot-separated parts.
pub fn tamper_payload(token: &str, claims: &Claims) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, _, signature] = parts[..] else {
        panic!("not a JWT (three dot-separated parts): {token:?}");
    };
    format!("{header}.{}.{signature}", claims.encode())
}

/// The claims of a token to mint: a builder over a JSON object.
///
/// Times are whole seconds since the Unix epoch, rounded so the token is at least as valid, or
/// invalid, as asked: `exp` in the future and `nbf` round up, `exp` in the past rounds down.
///
/// ```
/// use std::time::Duration;
/// use wschat_testkit::Claims;
///
/// let claims = Claims::for_user("alice")
///     .issuer("https://id.example")
///     .audience("wschat")
///     .not_before_in(Duration::from_secs(30))
///     .without("exp");
/// assert!(claims.exp_millis().is_none());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    map: Map<String, Value>,
}

impl Claims {
    /// Claims for the user `sub`, expiring in one hour.
    pub fn for_user(sub: impl Into<String>) -> Self {
        let mut map = Map::new();
        map.insert("sub".to_owned(), Value::String(sub.into()));
        Self { map }.expires_in(DEFAULT_LIFETIME)
    }

    /// Sets `exp` to `after` from now (rounded up to a whole second).
    pub fn expires_in(self, after: Duration) -> Self {
        let exp = ceil_secs(since_epoch() + after);
        self.claim("exp", exp.into())
    }

    /// Sets `exp` to `ago` in the past (rounded down to a whole second): an expired token.
    pub fn expired_ago(self, ago: Duration) -> Self {
        let exp = since_epoch().saturating_sub(ago).as_secs();
        self.claim("exp", exp.into())
    }

    /// Sets `nbf` to `after` from now (rounded up to a whole second): a token not valid yet.
    pub fn not_before_in(self, after: Duration) -> Self {
        let nbf = ceil_secs(since_epoch() + after);
        self.claim("nbf", nbf.into())
    }

    /// Sets `iss`.
    pub fn issuer(self, issuer: impl Into<String>) -> Self {
        self.claim("iss", Value::String(issuer.into()))
    }

    /// Sets `aud` (a single string).
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.claim("aud", Value::String(audience.into()))
    }

    /// Sets `rooms`: the rooms the user may join (a trailing `*` matches a prefix).
    pub fn rooms(self, rooms: &[&str]) -> Self {
        let rooms = rooms.iter().map(|room| Value::String((*room).to_owned()));
        self.claim("rooms", Value::Array(rooms.collect()))
    }

    /// Removes the claim `name` (for example `"sub"` or `"exp"`), if it is set.
    pub fn without(mut self, name: &str) -> Self {
        self.map.remove(name);
        self
    }

    /// Sets the claim `name` to `value`, replacing any earlier value.
    pub fn claim(mut self, name: impl Into<String>, value: Value) -> Self {
        self.map.insert(name.into(), value);
        self
    }

    /// `exp` in milliseconds since the Unix epoch, as the server reports it in `expiring` and
    /// `refreshed`; `None` if `exp` is not set or not a whole number of seconds.
    pub fn exp_millis(&self) -> Option<u64> {
        self.map.get("exp")?.as_u64()?.checked_mul(1000)
    }

    /// The claims as a JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The payload segment: the claims as base64url JSON.
    fn encode(&self) -> String {
        let json = serde_json::to_vec(&self.map).unwrap_or_else(|error| panic!("JSON: {error}"));
        base64url(&json)
    }
}

/// Installs the RustCrypto provider for `jsonwebtoken` if none is in place yet: with both or
/// neither of its backend features enabled in the build, `jsonwebtoken` picks none by itself.
/// Idempotent; losing a race with another installer is fine.
fn ensure_crypto_provider() {
    if CryptoProvider::try_get_default().is_none() {
        let _ =
            CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);
    }
}

/// Writes `content` to a file named `name` in a new temporary directory.
fn write_key_file(name: &str, content: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("wschat-jwt-")
        .tempdir()
        .unwrap_or_else(|error| panic!("temporary directory for a JWT key: {error}"));
    let path = dir.path().join(name);
    std::fs::write(&path, content)
        .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
    (dir, path)
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_else(|error| panic!("clock before the Unix epoch: {error}"))
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A JWT segment: `value` as base64url JSON.
fn encode_json(value: &Value) -> String {
    let json = serde_json::to_vec(value).unwrap_or_else(|error| panic!("JSON: {error}"));
    base64url(&json)
}

/// Base64url without padding (RFC 4648 §5), as JWT segments are written.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let bits = u32::from_be_bytes([0, group[0], group[1], group[2]]);
        // 1 byte → 2 characters, 2 → 3, 3 → 4.
        for index in 0..=chunk.len() {
            let sextet = (bits >> (18 - 6 * index)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::{decode, decode_header, Validation};

    use super::*;

    fn validation(algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        validation
    }

    fn verify(key: &JwtKey, token: &str) -> jsonwebtoken::errors::Result<Map<String, Value>> {
        decode::<Map<String, Value>>(token, &key.decoding_key(), &validation(key.algorithm()))
            .map(|data| data.claims)
    }

    fn all_keys() -> [JwtKey; 3] {
        [JwtKey::hs256(), JwtKey::ed25519(), JwtKey::es256()]
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in vectors {
            assert_eq!(base64url(input.as_bytes()), expected, "input {input:?}");
        }
        // The URL-safe characters where standard base64 has `+` and `/`.
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }

    #[test]
    fn jwt_every_key_mints_tokens_its_own_key_file_verifies() {
        for key in all_keys() {
            let claims = Claims::for_user("alice").rooms(&["team-*"]);
            let token = key.mint(&claims);
            let header = decode_header(&token).unwrap();
            assert_eq!(header.alg, key.algorithm());
            assert_eq!(header.typ.as_deref(), Some("JWT"));

            // Verify the way the server does: with the key built from the key file.
            let file = std::fs::read_to_string(key.key_file()).unwrap();
            let decoding = match key.algorithm() {
                Algorithm::HS256 => {
                    DecodingKey::from_secret(file.trim_end_matches('\n').as_bytes()).unwrap()
                }
                Algorithm::EdDSA => DecodingKey::from_ed_pem(file.as_bytes()).unwrap(),
                _ => DecodingKey::from_ec_pem(file.as_bytes()).unwrap(),
            };
            let verified =
                decode::<Map<String, Value>>(&token, &decoding, &validation(key.algorithm()))
                    .unwrap_or_else(|error| panic!("{:?}: {error}", key.algorithm()));
            assert_eq!(&verified.claims, claims.as_map());
            assert_eq!(verified.claims["rooms"], serde_json::json!(["team-*"]));
        }
    }

    #[test]
    fn jwt_key_files_and_accessors() {
        let hs = JwtKey::hs256();
        assert_eq!(hs.algorithm(), Algorithm::HS256);
        assert!(hs.public_key_pem().is_none());
        assert_eq!(hs.secret_file(), hs.key_file());
        let secret = std::fs::read_to_string(hs.secret_file()).unwrap();
        assert!(secret.ends_with('\n'));
        assert_eq!(secret.trim_end().len(), 2 * SECRET_BYTES);
        assert_ne!(
            secret,
            std::fs::read_to_string(JwtKey::hs256().key_file()).unwrap()
        );

        for (key, algorithm) in [
            (JwtKey::ed25519(), Algorithm::EdDSA),
            (JwtKey::es256(), Algorithm::ES256),
        ] {
            assert_eq!(key.algorithm(), algorithm);
            assert_eq!(key.public_key_file(), key.key_file());
            let pem = key.public_key_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
            assert_eq!(std::fs::read_to_string(key.public_key_file()).unwrap(), pem);
        }

        let path = hs.key_file().to_owned();
        drop(hs);
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    #[should_panic(expected = "no public key file")]
    fn jwt_public_key_file_of_hs256_panics() {
        let _ = JwtKey::hs256().public_key_file();
    }

    #[test]
    #[should_panic(expected = "needs a key pair")]
    fn jwt_mint_confused_with_hs256_panics() {
        let _ = JwtKey::hs256().mint_confused(&Claims::for_user("alice"));
    }

    #[test]
    fn jwt_another_key_is_a_wrong_signature() {
        for (signer, verifier) in [
            (JwtKey::hs256(), JwtKey::hs256()),
            (JwtKey::ed25519(), JwtKey::ed25519()),
            (JwtKey::es256(), JwtKey::es256()),
        ] {
            let token = signer.mint(&Claims::for_user("alice"));
            let error = verify(&verifier, &token).unwrap_err();
            assert_eq!(error.kind(), &ErrorKind::InvalidSignature);
        }
    }

    #[test]
    fn jwt_mint_confused_is_the_real_attack() {
        for key in [JwtKey::ed25519(), JwtKey::es256()] {
            let claims = Claims::for_user("mallory");
            let token = key.mint_confused(&claims);
            assert_eq!(decode_header(&token).unwrap().alg, Algorithm::HS256);
            let file = std::fs::read(key.public_key_file()).unwrap();
            let as_secret = DecodingKey::from_secret(&file).unwrap();
            let verified =
                decode::<Map<String, Value>>(&token, &as_secret, &validation(Algorithm::HS256))
                    .unwrap();
            assert_eq!(&verified.claims, claims.as_map());
            // A server that keeps to the key's own algorithm refuses it.
            assert!(verify(&key, &token).is_err());
        }
    }

    #[test]
    fn jwt_header_alg_rewriting() {
        for key in all_keys() {
            for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES384] {
                let token =
                    key.mint_with_header_alg(&Claims::for_user("alice"), &format!("{alg:?}"));
                assert_eq!(decode_header(&token).unwrap().alg, alg);
                // The signature is the key's own, over the rewritten header.
                let (message, signature) = token.rsplit_once('.').unwrap();
                let valid = jsonwebtoken::crypto::verify(
                    signature,
                    message.as_bytes(),
                    &key.decoding_key(),
                    key.algorithm(),
                )
                .unwrap();
                assert!(
                    valid,
                    "{:?} signature with header alg {alg:?}",
                    key.algorithm()
                );
            }
            let token = key.mint_with_header_alg(&Claims::for_user("alice"), "none");
            assert!(
                decode_header(&token).is_err(),
                "`none` is no jsonwebtoken algorithm"
            );
            assert!(verify(&key, &token).is_err());
        }
    }

    #[test]
    fn jwt_unsigned_token_has_an_empty_signature() {
        let token = unsigned_token(&Claims::for_user("alice"));
        assert_eq!(token.matches('.').count(), 2);
        assert!(token.ends_with('.'));
        let header = token.split('.').next().unwrap();
        assert_eq!(header, base64url(br#"{"alg":"none","typ":"JWT"}"#));
        for key in all_keys() {
            assert!(verify(&key, &token).is_err());
        }
    }

    #[test]
    fn jwt_tampered_payload_fails_the_signature() {
        for key in all_keys() {
            let token = key.mint(&Claims::for_user("alice"));
            let tampered = tamper_payload(&token, &Claims::for_user("admin"));
            assert_eq!(token.split('.').next(), tampered.split('.').next());
            assert_eq!(token.rsplit('.').next(), tampered.rsplit('.').next());
            assert_ne!(token, tampered);
            let error = verify(&key, &tampered).unwrap_err();
            assert_eq!(error.kind(), &ErrorKind::InvalidSignature);
        }
    }

    #[test]
    fn jwt_claims_builder() {
        let now = since_epoch().as_secs();
        let claims = Claims::for_user("alice");
        let exp = claims.as_map()["exp"].as_u64().unwrap();
        assert!(
            (now + 3600..=now + 3601).contains(&exp),
            "exp {exp}, now {now}"
        );
        assert_eq!(claims.exp_millis(), Some(exp * 1000));

        let claims = Claims::for_user("alice")
            .expires_in(Duration::from_secs(2))
            .issuer("iss-1")
            .audience("aud-1")
            .rooms(&["a", "team-*"])
            .claim("extra", serde_json::json!(7))
            .without("sub");
        let map = claims.as_map();
        assert!(!map.contains_key("sub"));
        assert_eq!(map["iss"], "iss-1");
        assert_eq!(map["aud"], "aud-1");
        assert_eq!(map["rooms"], serde_json::json!(["a", "team-*"]));
        assert_eq!(map["extra"], 7);
        let exp = map["exp"].as_u64().unwrap();
        assert!((now + 2..=now + 3).contains(&exp), "exp {exp}, now {now}");
        assert_eq!(Claims::for_user("alice").without("exp").exp_millis(), None);
    }

    #[test]
    fn jwt_time_claims_are_enforced() {
        let key = JwtKey::es256();
        let expired = key.mint(&Claims::for_user("alice").expired_ago(Duration::from_secs(10)));
        assert_eq!(
            verify(&key, &expired).unwrap_err().kind(),
            &ErrorKind::ExpiredSignature
        );

        let early = key.mint(&Claims::for_user("alice").not_before_in(Duration::from_secs(60)));
        let mut checks_nbf = validation(key.algorithm());
        checks_nbf.validate_nbf = true;
        let error = decode::<Map<String, Value>>(&early, &key.decoding_key(), &checks_nbf);
        assert_eq!(error.unwrap_err().kind(), &ErrorKind::ImmatureSignature);

        let no_exp = key.mint(&Claims::for_user("alice").without("exp"));
        assert!(verify(&key, &no_exp).is_err());

        let full = key.mint(&Claims::for_user("alice").issuer("i").audience("a"));
        let mut checks_all = validation(key.algorithm());
        checks_all.set_issuer(&["i"]);
        checks_all.set_audience(&["a"]);
        decode::<Map<String, Value>>(&full, &key.decoding_key(), &checks_all).unwrap();
        checks_all.set_audience(&["b"]);
        assert!(decode::<Map<String, Value>>(&full, &key.decoding_key(), &checks_all).is_err());
    }
}
