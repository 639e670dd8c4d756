//! `wschat-load auth-cost`: what checking one token costs, without the network. Builds the
//! server's own `Authenticator` (SPEC §10) with one source configured, exactly as the server
//! does at start, and calls `authenticate` on the given token in a loop: the part of a
//! handshake's CPU that depends on the source, apart from the rest (TCP, HTTP, upgrade,
//! `welcome`, logs), which is the same for every source.
//!
//! ```sh
//! wschat-load auth-cost --source users --key-file users --token "$TOKEN"
//! wschat-load auth-cost --source eddsa --key-file ed25519.pub.pem --token "$JWT"
//! ```
//!
//! Prints one JSON object: the median over `--batches` batches of nanoseconds per call. For a
//! JWT it also splits the check: building jsonwebtoken's verifier from the key (which
//! `jsonwebtoken::decode` does on every call), the signature check alone with a verifier built
//! once, and the rest (base64, the header and claims JSON, the claim checks).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use clap::{Args, ValueEnum};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey};
use wschat::config::Token;
use wschat::identity::jwt::JwtKeyFile;
use wschat::identity::{Authenticator, Identity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The shared secret (`--token`): the token is the secret
    Shared,
    /// `--users-file`
    Users,
    /// `--jwt-secret-file`
    Hs256,
    /// `--jwt-public-key-file` (an Ed25519, P-256 or RSA public key)
    Eddsa,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Shared => "shared",
            Source::Users => "users",
            Source::Hs256 => "hs256",
            Source::Eddsa => "eddsa",
        }
    }
}

#[derive(Debug, Args)]
pub struct AuthCostArgs {
    #[arg(long, value_enum)]
    source: Source,
    /// The users file, the JWT secret file or the public key file (not for `shared`)
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The token to check; it must be accepted
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    token: String,
    /// How long one batch of calls takes (the calls per batch are fitted to it); the batches
    /// of the parts of a JWT check are taken in turn, so short batches keep them side by side
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    batch: std::time::Duration,
    #[arg(long, default_value_t = 51)]
    batches: usize,
}

/// Runs the loop; the report is one JSON object.
pub fn run(args: &AuthCostArgs) -> Result<serde_json::Value, String> {
    let mut config = wschat::Config::default();
    let key_file = || {
        args.key_file
            .clone()
            .ok_or_else(|| format!("--source {} needs --key-file", args.source.name()))
    };
    match args.source {
        Source::Shared => config.token = Some(Token::new(args.token.clone())),
        Source::Users => config.users_file = Some(key_file()?),
        Source::Hs256 => config.jwt_key = Some(JwtKeyFile::Secret(key_file()?)),
        Source::Eddsa => config.jwt_key = Some(JwtKeyFile::PublicKey(key_file()?)),
    }
    let auth = Authenticator::from_config(&config).map_err(|error| error.to_string())?;
    match auth.authenticate(&args.token, SystemTime::now()) {
        Ok(Identity::Guest) if args.source == Source::Shared => {}
        Ok(Identity::User(_)) if args.source != Source::Shared => {}
        other => return Err(format!("the token is not accepted as expected: {other:?}")),
    }
    let batches = args.batches.max(1);
    let check = || {
        let _ = black_box(auth.authenticate(black_box(&args.token), SystemTime::now()));
    };
    let started = Instant::now();
    for _ in 0..100 {
        check();
    }
    let iterations =
        (args.batch.as_nanos() * 100 / started.elapsed().as_nanos().max(1)).max(1) as u64;
    let mut report = serde_json::json!({
        "scenario": "auth_cost",
        "source": args.source.name(),
        "token_bytes": args.token.len(),
        "iterations": iterations,
        "batches": batches,
    });
    let total = match jwt_key(args)? {
        None => {
            let [total] = time(batches, iterations, [&check]);
            total
        }
        Some((key, algorithm)) => {
            let provider = CryptoProvider::try_get_default().ok_or("no JWT crypto provider")?;
            let build = || (provider.verifier_factory)(&algorithm, &key);
            let verifier = build().map_err(|error| format!("JWT verifier: {error}"))?;
            let (message, signature) = args
                .token
                .rsplit_once('.')
                .ok_or("the token is not a JWT")?;
            let signature = base64url_decode(signature).ok_or("the signature is not base64url")?;
            let build_only = || {
                let _ = black_box(build());
            };
            let signature_only = || {
                let _ = black_box(verifier.verify(black_box(message.as_bytes()), &signature));
            };
            let [total, build, signature] = time(
                batches,
                iterations,
                [&check as &dyn Fn(), &build_only, &signature_only],
            );
            // The rest of each batch, then its median: the batches of the three are taken in
            // turn, so a drift of the machine's speed falls on all three alike.
            let rest: Vec<f64> = (0..batches)
                .map(|batch| total[batch] - build[batch] - signature[batch])
                .collect();
            report["jwt_build_verifier_ns"] = round(median(&build)).into();
            report["jwt_signature_ns"] = round(median(&signature)).into();
            report["jwt_rest_ns"] = round(median(&rest)).into();
            total
        }
    };
    report["ns_per_call"] = round(median(&total)).into();
    report["ns_per_call_min"] = round(total.iter().copied().fold(f64::INFINITY, f64::min)).into();
    report["ns_per_call_max"] = round(total.iter().copied().fold(0.0, f64::max)).into();
    Ok(report)
}

/// Nanoseconds per call of each probe, batch by batch: every batch runs each probe
/// `iterations` times, in turn.
fn time<const N: usize>(batches: usize, iterations: u64, probes: [&dyn Fn(); N]) -> [Vec<f64>; N] {
    let mut per_call: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(batches));
    for _ in 0..batches {
        for (probe, times) in probes.iter().zip(per_call.iter_mut()) {
            let started = Instant::now();
            for _ in 0..iterations {
                probe();
            }
            times.push(started.elapsed().as_nanos() as f64 / iterations as f64);
        }
    }
    per_call
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn round(ns: f64) -> f64 {
    (ns * 10.0).round() / 10.0
}

/// The key and algorithm the server verifies with, read as the server reads them (the secret
/// without its final line break); `None` for the sources that are not JWT.
fn jwt_key(args: &AuthCostArgs) -> Result<Option<(DecodingKey, Algorithm)>, String> {
    let Some(path) = &args.key_file else {
        return Ok(None);
    };
    let read = || std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()));
    let key = match args.source {
        Source::Shared | Source::Users => return Ok(None),
        Source::Hs256 => {
            let bytes = read()?;
            let secret = bytes
                .strip_suffix(b"\r\n")
                .or_else(|| bytes.strip_suffix(b"\n"))
                .unwrap_or(&bytes);
            (DecodingKey::from_secret(secret), Algorithm::HS256)
        }
        Source::Eddsa => (DecodingKey::from_ed_pem(&read()?), Algorithm::EdDSA),
    };
    match key {
        (Ok(key), algorithm) => Ok(Some((key, algorithm))),
        (Err(error), _) => Err(format!("{}: {error}", path.display())),
    }
}

/// Base64url without padding (RFC 4648 §5), as JWT segments are written.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::base64url_decode;

    #[test]
    fn base64url_decodes_rfc_4648_vectors_without_padding() {
        for (encoded, decoded) in [
            ("", ""),
            ("Zg", "f"),
            ("Zm8", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
            ("Zm9vYmE", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(base64url_decode(encoded).unwrap(), decoded.as_bytes());
        }
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64url_decode("a+b"), None);
    }
}
