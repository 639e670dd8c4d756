//! `wschat-load mint-jwt`: a signed token for the identity benchmarks (SPEC §10), made with
//! `jsonwebtoken`, the crate the server verifies tokens with.
//!
//! ```sh
//! wschat-load mint-jwt --alg hs256 --key-file secret --new-key             # writes the secret
//! wschat-load mint-jwt --alg eddsa --key-file ed.pem --public-key-file ed.pub.pem --new-key
//! wschat-load mint-jwt --alg eddsa --key-file ed.pem --sub bench --ttl 30days
//! ```
//!
//! HS256: `--key-file` is the server's `--jwt-secret-file` (a fresh one is 32 random bytes as
//! 64 hex characters and a newline; the final line break is not part of the secret, as for the
//! server). EdDSA: `--key-file` is the PKCS#8 PEM private key (`openssl genpkey -algorithm
//! ed25519` writes one too) and `--public-key-file` the SPKI PEM the server's
//! `--jwt-public-key-file` reads. Claims: `sub`, `iat` and `exp`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Alg {
    /// HMAC-SHA256 with a shared secret (`--jwt-secret-file`)
    Hs256,
    /// Ed25519 signatures (`--jwt-public-key-file`)
    Eddsa,
}

#[derive(Debug, Args)]
pub struct MintArgs {
    #[arg(long, value_enum)]
    alg: Alg,
    /// HS256: the secret file; EdDSA: the PKCS#8 PEM private key
    #[arg(long, value_name = "PATH")]
    key_file: PathBuf,
    /// EdDSA with --new-key: where to write the public key (SPKI PEM) for the server
    #[arg(long, value_name = "PATH")]
    public_key_file: Option<PathBuf>,
    /// Make a fresh key and write it to --key-file (and --public-key-file) first; existing
    /// files are not overwritten
    #[arg(long)]
    new_key: bool,
    /// The `sub` claim: the user's name
    #[arg(long, default_value = "bench")]
    sub: String,
    /// How long the token is valid (`exp` = now + this)
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// Makes the key if asked, then mints the token.
pub fn run(args: &MintArgs) -> Result<String, String> {
    if CryptoProvider::try_get_default().is_none() {
        let _ =
            CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);
    }
    if args.new_key {
        new_key(args)?;
    }
    let key = std::fs::read(&args.key_file)
        .map_err(|error| format!("cannot read {}: {error}", args.key_file.display()))?;
    let (encoding, algorithm) = match args.alg {
        Alg::Hs256 => {
            let secret = key
                .strip_suffix(b"\r\n")
                .or_else(|| key.strip_suffix(b"\n"))
                .unwrap_or(&key);
            (EncodingKey::from_secret(secret), Algorithm::HS256)
        }
        Alg::Eddsa => (EncodingKey::from_ed_pem(&key), Algorithm::EdDSA),
    };
    let encoding = encoding.map_err(|error| {
        format!(
            "{} is not a {:?} key: {error}",
            args.key_file.display(),
            args.alg
        )
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| format!("clock before the Unix epoch: {error}"))?;
    let claims = serde_json::json!({
        "sub": args.sub,
        "iat": now.as_secs(),
        "exp": (now + args.ttl).as_secs(),
    });
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &encoding)
        .map_err(|error| format!("signing: {error}"))
}

fn new_key(args: &MintArgs) -> Result<(), String> {
    match args.alg {
        Alg::Hs256 => {
            let bytes: [u8; 32] = rand::random();
            let hex = bytes.iter().fold(String::new(), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            });
            write_new(&args.key_file, &format!("{hex}\n"))
        }
        Alg::Eddsa => {
            let public = args
                .public_key_file
                .as_deref()
                .ok_or("--new-key with --alg eddsa needs --public-key-file")?;
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .map_err(|error| format!("Ed25519 key pair: {error}"))?;
            write_new(&args.key_file, &pair.serialize_pem())?;
            write_new(public, &pair.public_key_pem())
        }
    }
}

fn write_new(path: &Path, content: &str) -> Result<(), String> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| file.write_all(content.as_bytes()))
        .map_err(|error| format!("cannot create {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn args(dir: &Path, alg: Alg, new_key: bool) -> MintArgs {
        MintArgs {
            alg,
            key_file: dir.join("key"),
            public_key_file: Some(dir.join("public.pem")),
            new_key,
            sub: "bench".into(),
            ttl: Duration::from_secs(3600),
        }
    }

    fn claims(token: &str, key: &DecodingKey, algorithm: Algorithm) -> serde_json::Value {
        jsonwebtoken::decode::<serde_json::Value>(token, key, &Validation::new(algorithm))
            .expect("the token verifies")
            .claims
    }

    #[test]
    fn new_keys_mint_tokens_the_server_side_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let token = run(&args(dir.path(), Alg::Hs256, true)).unwrap();
        let file = std::fs::read_to_string(dir.path().join("key")).unwrap();
        assert_eq!(file.len(), 65, "64 hex characters and a newline");
        let secret = DecodingKey::from_secret(file.trim_end().as_bytes()).unwrap();
        let hs = claims(&token, &secret, Algorithm::HS256);
        assert_eq!(hs["sub"], "bench");
        assert!(hs["exp"].as_u64().unwrap() > hs["iat"].as_u64().unwrap());

        let dir = tempfile::tempdir().unwrap();
        let token = run(&args(dir.path(), Alg::Eddsa, true)).unwrap();
        let public = std::fs::read(dir.path().join("public.pem")).unwrap();
        let public = DecodingKey::from_ed_pem(&public).unwrap();
        assert_eq!(claims(&token, &public, Algorithm::EdDSA)["sub"], "bench");
        // The same key again, without --new-key.
        let again = run(&args(dir.path(), Alg::Eddsa, false)).unwrap();
        assert_eq!(claims(&again, &public, Algorithm::EdDSA)["sub"], "bench");
    }

    #[test]
    fn an_existing_key_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "keep me\n").unwrap();
        let error = run(&args(dir.path(), Alg::Hs256, true)).unwrap_err();
        assert!(error.contains("cannot create"), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("key")).unwrap(),
            "keep me\n"
        );
    }
}
