//! Registry logins without writing credentials into config.json, as
//! kaniko's image had them: ECR through a real `GetAuthorizationToken`
//! (moto), with static keys and with web identity (IRSA) through moto's STS;
//! Google through a metadata server (a loopback fake of the documented
//! endpoint); ACR through Entra ID workload identity and the registry's
//! token exchange (loopback fakes of both documented endpoints, in front of
//! a real docker-registry); kaniko's `KANIKO_<HOST>_USER` variables. Each registry is a
//! docker-registry requiring exactly the password that login yields, so a
//! push succeeds only if the login produced it.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::{Command, Output};

/// moto's ECR answers every account's token as `AWS:<account>-auth-token`.
const MOTO_ECR_PASSWORD: &str = "123456789012-auth-token";

/// A build of `FROM scratch` + one file, pushed to `dest`, with exactly
/// `env` for credentials (the machine's AWS/Google/KANIKO_ variables are
/// cleared) and `docker_config` as DOCKER_CONFIG.
fn push_with(
    dest: &str,
    docker_config: &std::path::Path,
    env: &[(&str, String)],
    extra: &[&str],
) -> Output {
    let ctx = context_with("FROM scratch\nCOPY f /f\n");
    write(ctx.path(), "f", "logged in\n");
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut c = executor();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_")
            || k.starts_with("GOOGLE_")
            || k.starts_with("GCE_")
            || k.starts_with("KANIKO_")
            || k.starts_with("AZURE_")
            || k.starts_with("CI_")
        {
            c.env_remove(k);
        }
    }
    c.env("HOME", home.path())
        .env("DOCKER_CONFIG", docker_config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--context")
        .arg(ctx.path())
        .arg("--kaniko-dir")
        .arg(work.path())
        .args(["--destination", dest, "--insecure"])
        .args(extra);
    c.output().expect("run executor")
}

/// A config.json mapping `host` to a credential helper by name.
fn helper_config(host: &str, helper: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("config.json"),
        format!(r#"{{"credHelpers":{{"{host}":"{helper}"}}}}"#),
    )
    .unwrap();
    d
}

fn pushed(dest: &str, user: &str, password: &str) -> bool {
    Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--creds",
            &format!("{user}:{password}"),
        ])
        .arg(format!("docker://{dest}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ecr_login_with_keys_and_with_web_identity() {
    // Over TLS from a private CA: object_store's STS client refuses HTTP.
    let (_ca_dir, ca, cert, key) = private_ca();
    let moto = S3Server::start_tls(&cert, &key);
    let reg = Registry::start_with_auth(Some(("AWS", MOTO_ECR_PASSWORD)));
    let cfg = helper_config(&reg.addr, "ecr-login");
    let aws = |extra: &[(&'static str, String)]| {
        let mut v = vec![
            ("AWS_ENDPOINT_URL_ECR", moto.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("SSL_CERT_FILE", ca.display().to_string()),
        ];
        v.extend(extra.iter().cloned());
        v
    };

    // Static keys in the environment.
    let dest = format!("{}/app:ecr-keys", reg.addr);
    let keys = aws(&[
        ("AWS_ACCESS_KEY_ID", "AKIDKILNTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
    ]);
    let out = push_with(&dest, cfg.path(), &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pushed(&dest, "AWS", MOTO_ECR_PASSWORD));
    assert!(
        !stderr(&out).contains(MOTO_ECR_PASSWORD),
        "token in the log"
    );

    // IRSA: a web identity token file and a role, exchanged at (moto's) STS.
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "eyJraWxuIjoidGVzdCJ9.web-identity-token").unwrap();
    let dest = format!("{}/app:ecr-irsa", reg.addr);
    let irsa = aws(&[
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token.path().display().to_string(),
        ),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/kiln-builder".into(),
        ),
        ("AWS_ROLE_SESSION_NAME", "kiln-test".into()),
        ("AWS_ENDPOINT_URL_STS", moto.endpoint.clone()),
    ]);
    let out = push_with(&dest, cfg.path(), &irsa, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pushed(&dest, "AWS", MOTO_ECR_PASSWORD));

    // No AWS identity at all: the login config.json asks for fails, named.
    let dest = format!("{}/app:ecr-none", reg.addr);
    let out = push_with(
        &dest,
        cfg.path(),
        &aws(&[(
            "AWS_METADATA_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )]),
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ecr login for"), "{err}");
}

/// A loopback fake of a documented JSON endpoint. `handler` is python,
/// indented 8 spaces, that may set `code` and `obj` (the reply) from
/// `self.path`, `self.headers`, `f` (the form body) and `args` (`args`
/// here); anything it does not accept is a 400.
fn json_fake(port: u16, handler: &str, args: &[&str]) -> std::process::Child {
    const FRAME: &str = r#"import sys, json, http.server, urllib.parse
port, args = int(sys.argv[1]), sys.argv[2:]
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get('Content-Length') or 0)
        f = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(n).decode()).items()}
        code, obj = 400, {'error': 'invalid_request'}
HANDLER
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Metadata-Flavor', 'Google')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass
http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()
"#;
    let child = Command::new("python3")
        .args(["-c", &FRAME.replace("HANDLER", handler), &port.to_string()])
        .args(args)
        .spawn()
        .unwrap();
    wait_for_port(port, "fake endpoint", std::time::Duration::from_secs(10));
    child
}

/// The metadata server's token endpoint, as GCE and GKE's workload identity
/// serve it; anything without `Metadata-Flavor: Google` is refused.
fn fake_metadata(port: u16, token: &str) -> std::process::Child {
    const HANDLER: &str = r#"        if self.headers.get('Metadata-Flavor') == 'Google' and \
                self.path.startswith('/computeMetadata/v1/instance/service-accounts/default/token'):
            code, obj = 200, {'access_token': args[0], 'expires_in': 3599, 'token_type': 'Bearer'}"#;
    json_fake(port, HANDLER, &[token])
}

#[test]
fn google_login_from_the_metadata_server() {
    let token = "ya29.kiln-test-access-token";
    let port = free_port();
    let mut meta = fake_metadata(port, token);
    let reg = Registry::start_with_auth(Some(("oauth2accesstoken", token)));
    let cfg = helper_config(&reg.addr, "gcr");
    let at = format!("127.0.0.1:{port}");
    let env = [("GCE_METADATA_HOST", at.clone()), ("GCE_METADATA_IP", at)];
    let dest = format!("{}/app:google", reg.addr);
    let out = push_with(&dest, cfg.path(), &env, &[]);
    let _ = meta.kill();
    let _ = meta.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pushed(&dest, "oauth2accesstoken", token));
}

/// `GOOGLE_APPLICATION_CREDENTIALS` naming a service-account key: the key
/// is the password of `_json_key`, as Google documents for registries.
#[test]
fn google_login_with_a_service_account_key() {
    // Short enough for bcrypt (htpasswd) to check every byte of it.
    let key = r#"{"type":"service_account","client_email":"b@p.iam"}"#;
    let reg = Registry::start_with_auth(Some(("_json_key", key)));
    let cfg = helper_config(&reg.addr, "gcr");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), key).unwrap();
    let env = [(
        "GOOGLE_APPLICATION_CREDENTIALS",
        file.path().display().to_string(),
    )];
    let dest = format!("{}/app:google-key", reg.addr);
    let out = push_with(&dest, cfg.path(), &env, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pushed(&dest, "_json_key", key));
}

#[test]
fn kaniko_env_credentials_and_turning_logins_off() {
    let reg = Registry::start_with_auth(Some(("ci", "from-env")));
    let empty = tempfile::tempdir().unwrap();
    let host_var = reg.addr.to_ascii_uppercase().replace(['.', ':', '-'], "_");
    let env = [
        (format!("KANIKO_{host_var}_USER"), "ci".to_string()),
        (
            format!("KANIKO_{host_var}_PASSWORD"),
            "from-env".to_string(),
        ),
    ];
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let dest = format!("{}/app:env", reg.addr);
    let out = push_with(&dest, empty.path(), &env, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pushed(&dest, "ci", "from-env"));

    // `--credential-helpers=ecr` leaves `env` out: anonymous, refused.
    let dest = format!("{}/app:env-off", reg.addr);
    let out = push_with(&dest, empty.path(), &env, &["--credential-helpers=ecr"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
}

/// Entra ID's token endpoint and ACR's `/oauth2/exchange`, as documented:
/// the token is issued only for the federated token the test wrote and the
/// Resource Manager scope; the refresh token only for that access token
/// and this registry.
fn fake_entra_and_exchange(port: u16, federated: &str, service: &str) -> std::process::Child {
    const HANDLER: &str = r#"        federated, service = args
        if self.path == '/tenant-1/oauth2/v2.0/token' and f.get('client_assertion') == federated \
                and f.get('scope') == 'https://management.azure.com/.default' and f.get('client_id') == 'client-1':
            code, obj = 200, {'access_token': 'entra-access-token', 'token_type': 'Bearer', 'expires_in': 3599}
        if self.path == '/oauth2/exchange' and f.get('access_token') == 'entra-access-token' \
                and f.get('service') == service and f.get('grant_type') == 'access_token':
            code, obj = 200, {'refresh_token': 'acr-refresh-token'}"#;
    json_fake(port, HANDLER, &[federated, service])
}

#[test]
fn acr_login_with_workload_identity() {
    let reg = Registry::start_with_auth(Some((
        "00000000-0000-0000-0000-000000000000",
        "acr-refresh-token",
    )));
    // One origin, as ACR is: the registry API and its /oauth2/exchange.
    let fake_port = free_port();
    let fake_addr = format!("127.0.0.1:{fake_port}");
    let front = RoundRobin::start_routed(&[&reg.addr], &[("/oauth2/", &fake_addr)]);
    let federated = "eyJ0eXAiOiJKV1QifQ.kiln-workload-identity";
    let mut fake = fake_entra_and_exchange(fake_port, federated, &front.addr);
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), format!("{federated}\n")).unwrap();
    let cfg = helper_config(&front.addr, "acr-env");
    let env = [
        ("AZURE_AUTHORITY_HOST", format!("http://{fake_addr}/")),
        ("AZURE_TENANT_ID", "tenant-1".to_string()),
        ("AZURE_CLIENT_ID", "client-1".to_string()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token.path().display().to_string(),
        ),
    ];
    let dest = format!("{}/app:acr", front.addr);
    let out = push_with(&dest, cfg.path(), &env, &[]);
    let ok = out.status.success();

    // A token for another identity is refused by Entra ID: named failure.
    std::fs::write(token.path(), "someone-else").unwrap();
    let out2 = push_with(&format!("{}/app:acr-2", front.addr), cfg.path(), &env, &[]);
    let _ = fake.kill();
    let _ = fake.wait();
    assert!(ok, "{}", stderr(&out));
    assert!(pushed(
        &dest,
        "00000000-0000-0000-0000-000000000000",
        "acr-refresh-token"
    ));
    let err = stderr(&out2);
    assert_eq!(out2.status.code(), Some(1), "{err}");
    assert!(
        err.contains("acr login for") && err.contains("400"),
        "{err}"
    );
}

/// A push authorizes once per repository, not once per blob: oci-client
/// asks the registry's `/v2/` on every `auth` call, a round trip each (on
/// a remote registry, tens of milliseconds per layer). Counted on Kiln's
/// cache server (basic auth), whose metrics count `/v2/` requests.
#[test]
fn a_push_asks_for_authorization_once_not_per_blob() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let t = tempfile::tempdir().unwrap();
    let (server, config) = cache_server_with_login(t.path(), "s3cret-pa55");
    let steps: String = (0..6).map(|i| format!("RUN echo {i} > /f{i}\n")).collect();
    let ctx = context_with(&format!("FROM {base}\n{steps}"));
    let work = tempfile::tempdir().unwrap();
    let out = executor()
        .env("DOCKER_CONFIG", &config)
        .arg("--context")
        .arg(ctx.path())
        .arg("--kaniko-dir")
        .arg(work.path())
        .args(["--insecure-pull", "--insecure-registry", &server.addr])
        .args(["--destination", &format!("{}/team/app:1", server.addr)])
        .args(["-v", "debug"])
        .output()
        .unwrap();
    assert_ok(&out);
    // 7 layers, a config and a manifest went up; one `/v2/` probe for the
    // push's authorization (and at most one more by the client itself).
    let probes = server.metric(
        "kiln_cache_request_duration_seconds_count",
        &["route=\"base\"", "method=\"GET\""],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let auth_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Authorizing") || l.contains("Fetching token"))
        .collect();
    assert!(
        probes <= 2.0,
        "{probes} /v2/ probes for one push\n{}",
        auth_lines.join("\n")
    );
    let pushed = server.metric(
        "kiln_cache_request_duration_seconds_count",
        &["route=\"manifest\"", "method=\"PUT\""],
    );
    assert_eq!(pushed, 1.0);
}
