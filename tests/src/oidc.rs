//! A loopback OpenID Connect issuer made by the test: its own RSA and EC
//! keys (made with `openssl`), a discovery document and a JWK set served
//! by [`StaticHttp`], and tokens minted with whatever claims a test wants
//! (GitHub-, GitLab- or Kubernetes-shaped). Keys rotate by rewriting the
//! set.

use super::*;
use base64::Engine;

/// One signing key of the issuer.
pub struct IssuerKey {
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    /// PKCS#8 PEM of the private key.
    pem: Vec<u8>,
    /// Its public half as a JWK.
    jwk: serde_json::Value,
}

pub struct OidcIssuer {
    http: StaticHttp,
    pub url: String,
    pub keys: Vec<IssuerKey>,
    dir: tempfile::TempDir,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl IssuerKey {
    /// A new RSA (`RS256`) or P-256 (`ES256`) key.
    pub fn new(dir: &Path, kid: &str, alg: jsonwebtoken::Algorithm) -> IssuerKey {
        let key = dir.join(format!("{kid}.pem"));
        let algo = match alg {
            jsonwebtoken::Algorithm::ES256 => {
                vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
            }
            _ => vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        };
        run(Command::new("openssl")
            .arg("genpkey")
            .args(&algo)
            .arg("-out")
            .arg(&key));
        let jwk = if alg == jsonwebtoken::Algorithm::ES256 {
            let der = Command::new("openssl")
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(&key)
                .output()
                .expect("openssl");
            let point = &der.stdout[der.stdout.len() - 65..];
            assert_eq!(point[0], 4, "uncompressed point");
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64(&point[1..33]), "y": b64(&point[33..])})
        } else {
            let m = run(Command::new("openssl")
                .args(["rsa", "-noout", "-modulus", "-in"])
                .arg(&key));
            let hex = m.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64(&n), "e": "AQAB"})
        };
        IssuerKey {
            kid: kid.to_string(),
            alg,
            pem: std::fs::read(&key).unwrap(),
            jwk,
        }
    }

    /// The public key as PEM (what an attacker could use as an HMAC secret).
    pub fn public_pem(&self, dir: &Path) -> Vec<u8> {
        let key = dir.join(format!("{}.pem", self.kid));
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .expect("openssl")
            .stdout
    }
}

impl OidcIssuer {
    /// An issuer with one RSA key (`rsa-1`) and one EC key (`ec-1`).
    pub fn start() -> OidcIssuer {
        let dir = tempfile::tempdir().unwrap();
        let keys = vec![
            IssuerKey::new(dir.path(), "rsa-1", jsonwebtoken::Algorithm::RS256),
            IssuerKey::new(dir.path(), "ec-1", jsonwebtoken::Algorithm::ES256),
        ];
        let http = StaticHttp::start(&[]);
        let url = http.url.clone();
        let me = OidcIssuer {
            http,
            url,
            keys,
            dir,
        };
        std::fs::create_dir_all(me.http.dir().join(".well-known")).unwrap();
        std::fs::write(
            me.http.dir().join(".well-known/openid-configuration"),
            serde_json::json!({"issuer": me.url, "jwks_uri": format!("{}/jwks.json", me.url)})
                .to_string(),
        )
        .unwrap();
        me.publish();
        me
    }

    /// Writes the JWK set of the current keys.
    pub fn publish(&self) {
        let keys: Vec<&serde_json::Value> = self.keys.iter().map(|k| &k.jwk).collect();
        std::fs::write(
            self.http.dir().join("jwks.json"),
            serde_json::json!({ "keys": keys }).to_string(),
        )
        .unwrap();
    }

    /// Replaces every key with a new RSA key `kid` and publishes it.
    pub fn rotate(&mut self, kid: &str) {
        self.keys = vec![IssuerKey::new(
            self.dir.path(),
            kid,
            jsonwebtoken::Algorithm::RS256,
        )];
        self.publish();
    }

    /// A token signed with key `kid` carrying `claims` (iss, iat, nbf and
    /// exp an hour ahead are added unless given).
    pub fn mint(&self, kid: &str, claims: serde_json::Value) -> String {
        let k = self.keys.iter().find(|k| k.kid == kid).expect("key");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut c = serde_json::json!({"iss": self.url, "iat": now, "nbf": now, "exp": now + 3600});
        for (key, v) in claims.as_object().unwrap() {
            c[key] = v.clone();
        }
        let enc = match k.alg {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&k.pem),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&k.pem),
        }
        .unwrap();
        let mut h = jsonwebtoken::Header::new(k.alg);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, &c, &enc).unwrap()
    }

    /// The directory the keys' PEM files are in.
    pub fn key_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Requests the issuer answered.
    pub fn gets(&self) -> usize {
        self.http.gets()
    }
}

/// A token with `header` and `claims` and the signature `sig`, assembled
/// by hand (for `alg: none` and other forgeries a JWT library refuses to
/// make).
pub fn raw_token(header: serde_json::Value, claims: serde_json::Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(sig)
    )
}
