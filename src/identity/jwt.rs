//! Signed tokens (SPEC §10): verifying a JWT against the one configured key.
//!
//! The algorithm follows the key, never the token: an HS256 secret accepts only HS256, an
//! Ed25519 / P-256 / RSA public key only EdDSA / ES256 / RS256. jsonwebtoken refuses any other
//! header `alg` (`none` included) before it looks at the signature, so a token cannot pick a
//! weaker check, and an HS256 token "signed" with a public key as its secret (the classic
//! confusion) is refused because HS256 is not the key's algorithm.
//!
//! The clock is an argument: jsonwebtoken checks the signature, `iss`, `aud` and that `sub`
//! and `exp` are present; `nbf` and `exp` are checked here against the `now` the caller gives,
//! so that "only `exp` failed" (answered `token expired`) is told apart from every other
//! failure, and so the checks are testable without waiting. What this module does not do: decide
//! which rooms a connection may join (see [`RoomGrant`]) or keep a connection's deadline.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::handshake::is_valid_name;

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the
/// hash output (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeyFile {
    /// `--jwt-secret-file`: an HS256 secret, the whole file less its final line break.
    Secret(PathBuf),
    /// `--jwt-public-key-file`: a PEM public key, Ed25519, P-256 or RSA.
    PublicKey(PathBuf),
}

/// What the verifier checks besides the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Tolerated clock difference for `exp` and `nbf`.
    pub leeway: Duration,
}

/// A key that cannot be used; one line naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("cannot read JWT key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JWT secret file {path} holds {len} bytes; HS256 needs at least {MIN_SECRET_BYTES}")]
    ShortSecret { path: PathBuf, len: usize },
    #[error("JWT public key file {path} is not a PEM Ed25519, P-256 or RSA public key")]
    NotAPublicKey { path: PathBuf },
}

/// Why a token was refused. `Expired` only when everything but its `exp` was right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRejection {
    Invalid,
    Expired,
}

/// A verified token: who, until when, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub subject: String,
    /// `exp`, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    pub rooms: Option<RoomGrant>,
}

/// The `rooms` claim: the rooms a user may join. An entry ending in `*` matches every room
/// that starts with what comes before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomGrant(Vec<String>);

impl RoomGrant {
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    pub fn allows(&self, room: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => pattern == room,
            })
    }
}

/// The claims wschat reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Verifies tokens against one key. Cheap to share behind an `Arc`.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the key file and builds the verifier.
    pub fn load(key_file: &JwtKeyFile, rules: &JwtRules) -> Result<Self, JwtKeyError> {
        let (key, algorithm) = match key_file {
            JwtKeyFile::Secret(path) => (read_secret(path)?, Algorithm::HS256),
            JwtKeyFile::PublicKey(path) => read_public_key(path)?,
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Times are checked in `verify`, against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        match &rules.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &rules.audience {
            Some(audience) => validation.set_audience(&[audience]),
            // Not configured: a token's `aud` is ignored (SPEC §10).
            None => validation.validate_aud = false,
        }
        Ok(Self {
            key,
            validation,
            leeway: rules.leeway,
        })
    }

    /// The one algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks `token` as of `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Verified, JwtRejection> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| JwtRejection::Invalid)?
            .claims;
        if !is_valid_name(&claims.sub) {
            return Err(JwtRejection::Invalid);
        }
        let now_ms = millis_since_epoch(now);
        let leeway_ms = u64::try_from(self.leeway.as_millis()).unwrap_or(u64::MAX);
        if let Some(nbf) = claims.nbf {
            if seconds_to_millis(nbf) > now_ms.saturating_add(leeway_ms) {
                return Err(JwtRejection::Invalid);
            }
        }
        let expires_at_ms = seconds_to_millis(claims.exp);
        if expires_at_ms.saturating_add(leeway_ms) <= now_ms {
            return Err(JwtRejection::Expired);
        }
        Ok(Verified {
            subject: claims.sub,
            expires_at_ms,
            rooms: claims.rooms.map(RoomGrant::new),
        })
    }

    /// The clock leeway, for the connection's deadline.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }
}

fn read_secret(path: &Path) -> Result<DecodingKey, JwtKeyError> {
    let bytes = read(path)?;
    let secret = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(&bytes);
    if secret.len() < MIN_SECRET_BYTES {
        return Err(JwtKeyError::ShortSecret {
            path: path.to_owned(),
            len: secret.len(),
        });
    }
    DecodingKey::from_secret(secret).map_err(|_| JwtKeyError::ShortSecret {
        path: path.to_owned(),
        len: secret.len(),
    })
}

type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// The key and its algorithm, told from the PEM itself: each constructor accepts only its own
/// kind of key, so the first that succeeds names the algorithm.
fn read_public_key(path: &Path) -> Result<(DecodingKey, Algorithm), JwtKeyError> {
    let pem = read(path)?;
    let candidates: [(PemParser, Algorithm); 3] = [
        (DecodingKey::from_ed_pem, Algorithm::EdDSA),
        (DecodingKey::from_ec_pem, Algorithm::ES256),
        (DecodingKey::from_rsa_pem, Algorithm::RS256),
    ];
    candidates
        .into_iter()
        .find_map(|(parse, algorithm)| {
            let key = parse(&pem).ok()?;
            usable(&key, algorithm).then_some((key, algorithm))
        })
        .ok_or_else(|| JwtKeyError::NotAPublicKey {
            path: path.to_owned(),
        })
}

/// Whether the crypto provider can verify with `key` under `algorithm`: a P-384 key parses as
/// an EC key but cannot check ES256, and must be refused at start, not at every handshake.
fn usable(key: &DecodingKey, algorithm: Algorithm) -> bool {
    jsonwebtoken::crypto::CryptoProvider::try_get_default()
        .is_some_and(|provider| (provider.verifier_factory)(&algorithm, key).is_ok())
}

fn read(path: &Path) -> Result<Vec<u8>, JwtKeyError> {
    std::fs::read(path).map_err(|source| JwtKeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn seconds_to_millis(seconds: u64) -> u64 {
    seconds.saturating_mul(1000)
}

/// `time` in milliseconds since the Unix epoch (0 before it).
pub fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW_S: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_S)
    }

    fn verifier(rules: JwtRules) -> (JwtVerifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
        let verifier = JwtVerifier::load(&JwtKeyFile::Secret(path), &rules).unwrap();
        (verifier, dir)
    }

    fn rules() -> JwtRules {
        JwtRules {
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
        }
    }

    fn mint(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_token_yields_its_subject_expiry_and_rooms() {
        let (verifier, _dir) = verifier(rules());
        let token = mint(json!({"sub": "alice", "exp": NOW_S + 60, "rooms": ["team-*"]}));
        let verified = verifier.verify(&token, now()).unwrap();
        assert_eq!(verified.subject, "alice");
        assert_eq!(verified.expires_at_ms, (NOW_S + 60) * 1000);
        assert!(verified.rooms.as_ref().unwrap().allows("team-a"));
        assert!(!verified.rooms.unwrap().allows("lobby"));
    }

    #[test]
    fn expiry_honours_the_leeway_and_is_told_apart() {
        let (verifier, _dir) = verifier(rules());
        let within = mint(json!({"sub": "alice", "exp": NOW_S - 4}));
        assert!(verifier.verify(&within, now()).is_ok());
        let past = mint(json!({"sub": "alice", "exp": NOW_S - 5}));
        assert_eq!(verifier.verify(&past, now()), Err(JwtRejection::Expired));
    }

    #[test]
    fn an_expired_token_with_a_bad_subject_is_invalid_not_expired() {
        let (verifier, _dir) = verifier(rules());
        let token = mint(json!({"sub": "al ice", "exp": NOW_S - 100}));
        assert_eq!(verifier.verify(&token, now()), Err(JwtRejection::Invalid));
    }

    #[test]
    fn not_before_is_honoured_with_the_leeway() {
        let (verifier, _dir) = verifier(rules());
        let soon = mint(json!({"sub": "a", "exp": NOW_S + 60, "nbf": NOW_S + 5}));
        assert!(verifier.verify(&soon, now()).is_ok());
        let later = mint(json!({"sub": "a", "exp": NOW_S + 60, "nbf": NOW_S + 6}));
        assert_eq!(verifier.verify(&later, now()), Err(JwtRejection::Invalid));
    }

    #[test]
    fn missing_claims_and_wrong_issuer_or_audience_are_invalid() {
        let (verifier, _dir) = verifier(JwtRules {
            issuer: Some("https://issuer".into()),
            audience: Some("wschat".into()),
            ..rules()
        });
        let good = json!({"sub": "a", "exp": NOW_S + 60, "iss": "https://issuer", "aud": "wschat"});
        assert!(verifier.verify(&mint(good.clone()), now()).is_ok());
        for (claim, value) in [
            ("iss", json!("https://other")),
            ("aud", json!("other")),
            ("sub", json!(null)),
            ("exp", json!(null)),
            ("exp", json!("tomorrow")),
        ] {
            let mut claims = good.clone();
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(claim);
            } else {
                claims[claim] = value;
            }
            assert_eq!(
                verifier.verify(&mint(claims), now()),
                Err(JwtRejection::Invalid),
                "{claim}"
            );
        }
    }

    #[test]
    fn an_audience_is_ignored_when_none_is_configured() {
        let (verifier, _dir) = verifier(rules());
        let token = mint(json!({"sub": "a", "exp": NOW_S + 60, "aud": "anything"}));
        assert!(verifier.verify(&token, now()).is_ok());
    }

    #[test]
    fn a_short_secret_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "short\n").unwrap();
        let error = JwtVerifier::load(&JwtKeyFile::Secret(path), &rules()).unwrap_err();
        assert!(error.to_string().contains("5 bytes"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_a_public_key_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(
            &path,
            "-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n",
        )
        .unwrap();
        let error = JwtVerifier::load(&JwtKeyFile::PublicKey(path), &rules()).unwrap_err();
        assert!(
            matches!(error, JwtKeyError::NotAPublicKey { .. }),
            "{error}"
        );
    }

    #[test]
    fn room_patterns_match_exactly_or_by_prefix() {
        let grant = RoomGrant::new(vec!["lobby".into(), "team-*".into()]);
        assert!(grant.allows("lobby"));
        assert!(!grant.allows("lobby2"));
        assert!(grant.allows("team-"));
        assert!(grant.allows("team-red"));
        assert!(!grant.allows("team"));
        assert!(RoomGrant::new(vec!["*".into()]).allows("anything"));
        assert!(!RoomGrant::new(vec![]).allows("lobby"));
    }
}
