//! OpenID Connect identities against a loopback issuer the test makes
//! (RSA and EC keys, discovery, JWKS): a default-branch token writes the
//! main scope; a pull request's token reads it and writes only its branch
//! scope, on every write path; forged, expired, wrong-audience,
//! wrong-issuer, `alg: none`, HMAC-with-the-public-key and unknown-key
//! tokens are refused; a rotated key is picked up; an issuer that hangs
//! leaves reads that need no identity answered within the fetch deadline
//! and writes refused. The token never reaches the log.

mod common;
use common::*;
use kiln_testkit::*;

const AUD: &str = "kiln-cache";

fn auth_file(dir: &std::path::Path, iss: &str, hanging: &str) -> std::path::PathBuf {
    let p = dir.join("auth.json");
    let f = serde_json::json!({
        "anonymous": [{"prefix": "public/", "access": "read"}],
        "issuers": [
            {"issuer": iss, "audience": AUD, "refetch_seconds": 1},
            {"issuer": "https://hanging.example", "audience": AUD,
             "jwks_uri": format!("http://{hanging}/jwks")}
        ],
        "rules": [
            {"issuer": iss, "claims": {"ref_protected": "true"},
             "grants": [{"prefix": "cache/{project_path}/main/", "access": "write"},
                        {"prefix": "public/", "access": "write"}]},
            {"issuer": iss, "claims": {"project_path": "*"},
             "grants": [{"prefix": "cache/{project_path}/branch/{ref_slug}/", "access": "write"},
                        {"prefix": "cache/{project_path}/main/", "access": "read"},
                        {"prefix": "public/", "access": "read"}]},
            {"issuer": "https://hanging.example", "grants": [{"prefix": "", "access": "write"}]}
        ]
    });
    std::fs::write(&p, f.to_string()).unwrap();
    p
}

fn gitlab_claims(r#ref: &str, protected: bool) -> serde_json::Value {
    serde_json::json!({
        "aud": AUD,
        "sub": format!("project_path:team/app:ref_type:branch:ref:{ref}"),
        "project_path": "team/app",
        "ref": r#ref,
        "ref_type": "branch",
        "ref_protected": protected.to_string(),
    })
}

const MAIN: &str = "cache/team/app/main/layers";
const BRANCH: &str = "cache/team/app/branch/feature-x/layers";

/// Every write a client can make into `repo`, with `token`: the HTTP
/// statuses of blob upload (POST), a cross-repository mount from
/// `mount_from`, a manifest PUT, a tag DELETE.
async fn writes(url: &str, repo: &str, token: &str, mount_from: &str, blob: &str) -> Vec<u16> {
    let c = client();
    let auth = format!("Bearer {token}");
    let mut out = Vec::new();
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    out.push(r.status().as_u16());
    let r = c
        .post(format!(
            "{url}/v2/{repo}/blobs/uploads/?mount={blob}&from={mount_from}"
        ))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    out.push(r.status().as_u16());
    let m = manifest_json(b"{}", &[]);
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/pr"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(m)
        .send()
        .await
        .unwrap();
    out.push(r.status().as_u16());
    let r = c
        .delete(format!("{url}/v2/{repo}/manifests/v1"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    out.push(r.status().as_u16());
    out
}

async fn status(url: &str, token: Option<&str>) -> u16 {
    let mut r = client().get(url);
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    r.send().await.unwrap().status().as_u16()
}

/// Pushes a config blob and a manifest tagged `v1` into `repo` as `token`.
async fn push(url: &str, repo: &str, token: &str) -> String {
    let c = client();
    let auth = format!("Bearer {token}");
    let config = b"{}".to_vec();
    let d = sha(&config);
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("Authorization", &auth)
        .body(config)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{repo}: {:?}", r.text().await);
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/v1"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest_json(b"{}", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    d
}

#[test]
fn ci_tokens_scope_writes_and_forgeries_are_refused() {
    let mut issuer = OidcIssuer::start();
    // An issuer that accepts connections and never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_addr = hanging.local_addr().unwrap().to_string();
    let t = tempfile::tempdir().unwrap();
    let auth = auth_file(t.path(), &issuer.url, &hanging_addr);
    let s = Backend::file().start(&["--auth-file", auth.to_str().unwrap()]);
    let url = s.url();
    let main_tok = issuer.mint("rsa-1", gitlab_claims("main", true));
    let main_ec = issuer.mint("ec-1", gitlab_claims("main", true));
    let pr_tok = issuer.mint("rsa-1", gitlab_claims("refs/heads/feature/x", false));
    rt().block_on(async {
        // The default branch writes main's scope (RSA and EC keys alike).
        let blob = push(&url, MAIN, &main_tok).await;
        push(&url, "cache/team/app/main/other", &main_ec).await;
        let manifest = format!("{url}/v2/{MAIN}/manifests/v1");
        assert_eq!(status(&manifest, Some(&pr_tok)).await, 200);
        assert_eq!(
            status(&format!("{url}/v2/{MAIN}/blobs/{blob}"), Some(&pr_tok)).await,
            200
        );
        // A pull request reads main's scope, and can write none of it, by
        // any path; its own branch scope it can write.
        let pr_into_main = writes(&url, MAIN, &pr_tok, BRANCH, &blob).await;
        assert!(pr_into_main.iter().all(|s| *s == 403), "{pr_into_main:?}");
        push(&url, BRANCH, &pr_tok).await;
        let pr_own = writes(&url, BRANCH, &pr_tok, MAIN, &blob).await;
        assert_eq!(pr_own[0], 202, "{pr_own:?}");
        assert_eq!(
            pr_own[1], 201,
            "mount from main into the branch: {pr_own:?}"
        );
        // Main's scope is as main left it.
        assert_eq!(status(&manifest, Some(&main_tok)).await, 200);
        assert_eq!(
            status(&format!("{url}/v2/{MAIN}/manifests/pr"), Some(&main_tok)).await,
            404
        );
        // The batch lookup: main's scope readable, with the branch's.
        let r = client()
            .post(format!("{url}/v2/_kiln/lookup"))
            .header("Authorization", format!("Bearer {pr_tok}"))
            .header("Content-Type", "application/json")
            .body(
                serde_json::json!({"repository": BRANCH, "keys": ["v1"], "fallbacks": [MAIN]})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        // The branch's own `v1` was deleted above: the answer is main's
        // entry, from the fallback, saying who wrote it.
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let e = &v["entries"]["v1"];
        assert_eq!(e["repository"], MAIN, "{v}");
        let w = &e["writer"];
        assert_eq!(w["issuer"], issuer.url.as_str(), "{v}");
        assert_eq!(w["claims"]["ref_protected"], "true", "{v}");
        assert!(w["subject"].as_str().unwrap().ends_with("ref:main"), "{v}");
        // And so does the writers endpoint, to anyone who may read the tag.
        let r = client()
            .get(format!("{url}/v2/_kiln/writers/{MAIN}/v1"))
            .header("Authorization", format!("Bearer {pr_tok}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["writer"]["claims"]["ref_protected"], "true", "{v}");
        assert_eq!(v["digest"], e["digest"], "{v}");
        assert_eq!(
            status(&format!("{url}/v2/_kiln/writers/{MAIN}/v1"), None).await,
            401
        );

        // Forgeries.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut forged = Vec::new();
        let mut flipped = main_tok.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == 'A' { 'B' } else { 'A' });
        forged.push(("bad signature", flipped));
        let mut expired = gitlab_claims("main", true);
        expired["exp"] = serde_json::json!(now - 600);
        expired["nbf"] = serde_json::json!(now - 7200);
        expired["iat"] = serde_json::json!(now - 7200);
        forged.push(("expired", issuer.mint("rsa-1", expired)));
        let mut future = gitlab_claims("main", true);
        future["nbf"] = serde_json::json!(now + 3600);
        forged.push(("not yet valid", issuer.mint("rsa-1", future)));
        let mut aud = gitlab_claims("main", true);
        aud["aud"] = serde_json::json!("another-service");
        forged.push(("wrong audience", issuer.mint("rsa-1", aud)));
        let mut iss = gitlab_claims("main", true);
        iss["iss"] = serde_json::json!("https://evil.example");
        forged.push(("wrong issuer", issuer.mint("rsa-1", iss)));
        let mut claims = gitlab_claims("main", true);
        claims["iss"] = serde_json::json!(issuer.url);
        claims["exp"] = serde_json::json!(now + 600);
        forged.push((
            "alg none",
            raw_token(
                serde_json::json!({"alg": "none", "typ": "JWT"}),
                claims.clone(),
                b"",
            ),
        ));
        let public = issuer.keys[0].public_pem(issuer.key_dir());
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap();
        forged.push(("HMAC with the public key", hs));
        let stranger = IssuerKey::new(t.path(), "rsa-1", jsonwebtoken::Algorithm::RS256);
        let mut other = OidcIssuer::start();
        other.keys = vec![stranger];
        let mut c2 = gitlab_claims("main", true);
        c2["iss"] = serde_json::json!(issuer.url);
        forged.push(("another key under a known id", other.mint("rsa-1", c2)));
        for (what, tok) in &forged {
            let st = writes(&url, MAIN, tok, BRANCH, &blob).await;
            assert!(st.iter().all(|s| *s == 401), "{what}: {st:?}");
            assert_eq!(status(&manifest, Some(tok)).await, 401, "{what}");
        }

        // Rotation: the issuer's new key is fetched when a token names it.
        issuer.rotate("rsa-2");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let rotated = issuer.mint("rsa-2", gitlab_claims("main", true));
        assert_eq!(status(&manifest, Some(&rotated)).await, 200);
        push(&url, MAIN, &rotated).await;

        // An issuer that hangs: reads that need no identity are answered
        // within the fetch deadline, writes are refused.
        let mut hc = gitlab_claims("main", true);
        hc["iss"] = serde_json::json!("https://hanging.example");
        let hang_tok = issuer.mint("rsa-2", hc);
        push(&url, "public/x", &rotated).await;
        let started = std::time::Instant::now();
        assert_eq!(
            status(&format!("{url}/v2/public/x/manifests/v1"), Some(&hang_tok)).await,
            200
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let st = writes(&url, "public/x", &hang_tok, MAIN, &blob).await;
        assert!(st.iter().all(|s| *s == 401), "{st:?}");
    });
    let m = s.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "kiln_cache_refused_writes_total",
            &[&format!("repo=\"{MAIN}\""), "caller=\"identity\""]
        ),
        4.0,
        "{m}"
    );
    drop(hanging);
    let log = s.log();
    for tok in [&main_tok, &pr_tok] {
        let sig = tok.rsplit('.').next().unwrap();
        assert!(!log.contains(sig), "a token reached the log");
    }
    assert!(log.contains("refused a token"), "{log}");
}
