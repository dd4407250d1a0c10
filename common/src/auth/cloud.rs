//! The logins kaniko's image had built in, so a CI pod with a cloud identity
//! needs no config.json: kaniko's fork names them `env`, `google`, `ecr`,
//! `acr` and `gitlab` (`--credential-helpers`), and config.json's
//! `credHelpers` may name the programs they replace (`ecr-login`, `gcr`,
//! `acr-env`, `gitlabci`).
//!
//! - **ECR**: AWS credentials from object_store's chain (environment,
//!   web identity/IRSA, ECS, instance metadata), then `GetAuthorizationToken`
//!   signed with object_store's SigV4 signer. `AWS_ENDPOINT_URL_ECR` /
//!   `AWS_ENDPOINT_URL` override the endpoint, as in the AWS SDKs.
//! - **Google** (gcr.io, `*-docker.pkg.dev`): a service-account key in
//!   `GOOGLE_APPLICATION_CREDENTIALS` as the password of `_json_key`;
//!   otherwise an access token from object_store's chain (gcloud's
//!   application-default file, the metadata server — `GCE_METADATA_HOST`,
//!   which GKE's workload identity serves) as the password of
//!   `oauth2accesstoken`.
//! - **ACR** (`*.azurecr.io`): object_store's Azure tokens are scoped to
//!   storage and cannot be re-scoped, so the two documented requests are
//!   made here: an Entra ID token for Azure Resource Manager (workload
//!   identity's `AZURE_FEDERATED_TOKEN_FILE`, or `AZURE_CLIENT_SECRET`), then
//!   the registry's `/oauth2/exchange` for a refresh token.
//! - **GitLab CI**: `CI_REGISTRY_USER`/`CI_REGISTRY_PASSWORD` for
//!   `$CI_REGISTRY`, the dependency proxy's variables for its server.
//! - **env**: `KANIKO_<HOST>_USER`/`_PASSWORD`, the host upper-cased with
//!   `.`, `-` and `:` as `_`, its leading labels dropped one by one.

use super::Credential;
use super::RegistryHttp;
use base64::Engine as _;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer};
use object_store::gcp::GoogleCloudStorageBuilder;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("getting cloud credentials")]
    Credentials(#[source] object_store::Error),
    #[error("calling {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("reading the answer of {url}")]
    Answer {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no Azure identity in the environment (AZURE_TENANT_ID and AZURE_CLIENT_ID with AZURE_FEDERATED_TOKEN_FILE or AZURE_CLIENT_SECRET)")]
    NoAzureIdentity,
}

/// A built-in login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Env,
    Google,
    Ecr,
    Acr,
    Gitlab,
}

impl Provider {
    /// kaniko's fork enables all of them unless told otherwise.
    pub const DEFAULT: [Provider; 5] = [
        Provider::Env,
        Provider::Google,
        Provider::Ecr,
        Provider::Acr,
        Provider::Gitlab,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Env => "env",
            Provider::Google => "google",
            Provider::Ecr => "ecr",
            Provider::Acr => "acr",
            Provider::Gitlab => "gitlab",
        }
    }

    /// A `--credential-helpers` name.
    pub fn from_name(name: &str) -> Option<Provider> {
        Self::DEFAULT.into_iter().find(|p| p.name() == name)
    }

    /// The login standing in for `docker-credential-<helper>`.
    pub fn from_helper(helper: &str) -> Option<Provider> {
        match helper {
            "ecr-login" => Some(Provider::Ecr),
            "gcr" | "gcloud" => Some(Provider::Google),
            "acr-env" | "acr" => Some(Provider::Acr),
            "gitlabci" => Some(Provider::Gitlab),
            "env" => Some(Provider::Env),
            _ => None,
        }
    }

    /// Whether this login is tried for `registry` when config.json says
    /// nothing about it: cloud logins for their cloud's hosts only, the
    /// variable-based ones for any host (they answer only when set).
    pub fn serves(self, registry: &str) -> bool {
        let host = registry.split(':').next().unwrap_or(registry);
        match self {
            Provider::Env | Provider::Gitlab => true,
            Provider::Ecr => ecr_region(host).is_some(),
            Provider::Google => {
                host == "gcr.io" || host.ends_with(".gcr.io") || host.ends_with("-docker.pkg.dev")
            }
            Provider::Acr => [".azurecr.io", ".azurecr.cn", ".azurecr.us"]
                .iter()
                .any(|s| host.ends_with(s)),
        }
    }
}

/// The region of an ECR registry host:
/// `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`.
fn ecr_region(host: &str) -> Option<&str> {
    let p: Vec<&str> = host.split('.').collect();
    let tail_ok = matches!(
        &p[4.min(p.len())..],
        ["amazonaws", "com"] | ["amazonaws", "com", "cn"]
    );
    let account_ok = p
        .first()
        .is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()));
    (p.len() >= 6 && account_ok && p[1] == "dkr" && matches!(p[2], "ecr" | "ecr-fips") && tail_ok)
        .then(|| p[3])
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs one login. `Ok(None)`: it has nothing for this registry (its
/// variables are not set).
pub(super) async fn login(
    p: Provider,
    registry: &str,
    http: &RegistryHttp<'_>,
) -> Result<Option<Credential>, LoginError> {
    match p {
        Provider::Env => Ok(env_login(registry, env)),
        Provider::Gitlab => Ok(gitlab_login(registry, env)),
        Provider::Ecr => ecr_login(registry).await.map(Some),
        Provider::Google => google_login().await.map(Some),
        Provider::Acr => acr_login(registry, http).await.map(Some),
    }
}

/// kaniko's fork: `KANIKO_<FQDN>_USER`/`_PASSWORD`, trying the host and then
/// each shorter suffix of its labels.
fn env_login(registry: &str, var: impl Fn(&str) -> Option<String>) -> Option<Credential> {
    let upper = registry.to_ascii_uppercase().replace(['-', ':'], "_");
    let labels: Vec<&str> = upper.split('.').collect();
    (0..labels.len()).find_map(|i| {
        let name = labels[i..].join("_");
        let username = var(&format!("KANIKO_{name}_USER"))?;
        let password = var(&format!("KANIKO_{name}_PASSWORD"))?;
        Some(Credential::Basic { username, password })
    })
}

/// GitLab CI's predefined variables for its registry and dependency proxy.
fn gitlab_login(registry: &str, var: impl Fn(&str) -> Option<String>) -> Option<Credential> {
    let pairs = [
        ("CI_REGISTRY", "CI_REGISTRY_USER", "CI_REGISTRY_PASSWORD"),
        (
            "CI_DEPENDENCY_PROXY_SERVER",
            "CI_DEPENDENCY_PROXY_USER",
            "CI_DEPENDENCY_PROXY_PASSWORD",
        ),
    ];
    pairs.iter().find_map(|(server, user, password)| {
        (var(server)? == registry).then_some(())?;
        Some(Credential::Basic {
            username: var(user)?,
            password: var(password)?,
        })
    })
}

/// The credential chains end at the cloud's metadata server, which does not
/// exist outside that cloud: object_store's default retries (minutes) would
/// stall every build that merely pushes to a cloud-looking host, so the
/// chain gets seconds. (Set as keys, so the environment's other client
/// settings, such as `AWS_ALLOW_HTTP`, still apply.)
fn chain_timeouts() -> [(object_store::ClientConfigKey, &'static str); 2] {
    use object_store::ClientConfigKey as C;
    [(C::ConnectTimeout, "2s"), (C::Timeout, "10s")]
}

fn chain_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A client for one call to `url` (named in its error).
fn client(url: &str) -> Result<reqwest::Client, LoginError> {
    crate::tls::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|source| LoginError::Http {
            url: url.to_string(),
            source,
        })
}

async fn send(req: reqwest::RequestBuilder, url: &str) -> Result<bytes::Bytes, LoginError> {
    let http = |source| LoginError::Http {
        url: url.to_string(),
        source,
    };
    let resp = req.send().await.map_err(http)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(http)?;
    if !status.is_success() {
        return Err(LoginError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        });
    }
    Ok(body)
}

/// An `application/x-www-form-urlencoded` POST (reqwest's `form` would
/// need another feature and crate for this one use).
fn form_post<V: AsRef<str>>(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, V)],
) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_ref())))
        .finish();
    client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

fn answer<T: serde::de::DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, LoginError> {
    serde_json::from_slice(body).map_err(|e| LoginError::Answer {
        url: url.to_string(),
        source: Box::new(e),
    })
}

async fn ecr_login(registry: &str) -> Result<Credential, LoginError> {
    let host = registry.split(':').next().unwrap_or(registry);
    let region = ecr_region(host)
        .map(str::to_string)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    // object_store's S3 client is built only for its credential chain; no
    // bucket is ever contacted.
    use object_store::aws::AmazonS3ConfigKey as K;
    let mut b = AmazonS3Builder::from_env().with_retry(chain_retry());
    for (key, value) in chain_timeouts() {
        b = b.with_config(K::Client(key), value);
    }
    let s3 = b
        .with_region(&region)
        .with_bucket_name("kiln-ecr-login")
        .build()
        .map_err(LoginError::Credentials)?;
    let cred = s3
        .credentials()
        .get_credential()
        .await
        .map_err(LoginError::Credentials)?;
    let suffix = if host.ends_with(".cn") { ".cn" } else { "" };
    let url = env("AWS_ENDPOINT_URL_ECR")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://api.ecr.{region}.amazonaws.com{suffix}"));
    let mut req = http::Request::builder()
        .method("POST")
        .uri(&url)
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "x-amz-target",
            "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
        )
        .body(object_store::client::HttpRequestBody::from(b"{}".to_vec()))
        .map_err(|e| LoginError::Answer {
            url: url.clone(),
            source: Box::new(e),
        })?;
    AwsAuthorizer::new(&cred, "ecr", &region)
        .try_authorize(&mut req, None)
        .map_err(LoginError::Credentials)?;
    let mut call = client(&url)?.post(&url).body("{}");
    for (k, v) in req.headers() {
        call = call.header(k.as_str(), v.as_bytes());
    }
    let body = send(call, &url).await?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        authorization_token: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Reply {
        authorization_data: Vec<Data>,
    }
    let reply: Reply = answer(&url, &body)?;
    let bad = |what: &str| LoginError::Answer {
        url: url.clone(),
        source: what.into(),
    };
    let token = reply
        .authorization_data
        .first()
        .ok_or_else(|| bad("no authorizationData"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.authorization_token.trim())
        .map_err(|_| bad("authorizationToken is not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| bad("authorizationToken is not text"))?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| bad("authorizationToken is not user:password"))?;
    Ok(Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

async fn google_login() -> Result<Credential, LoginError> {
    // A service-account key: Google's documented registry login is the key
    // itself as the password of `_json_key` (object_store would make a
    // self-signed JWT of it, which registries do not take).
    if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS") {
        let text =
            std::fs::read_to_string(&path).map_err(|source| LoginError::Read { path, source })?;
        #[derive(serde::Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: String,
        }
        if serde_json::from_str::<Kind>(&text).is_ok_and(|k| k.kind == "service_account") {
            return Ok(Credential::Basic {
                username: "_json_key".into(),
                password: text,
            });
        }
    }
    use object_store::gcp::GoogleConfigKey as K;
    let mut b = GoogleCloudStorageBuilder::from_env().with_retry(chain_retry());
    for (key, value) in chain_timeouts() {
        b = b.with_config(K::Client(key), value);
    }
    let gcs = b
        .with_bucket_name("kiln-google-login")
        .build()
        .map_err(LoginError::Credentials)?;
    let token = gcs
        .credentials()
        .get_credential()
        .await
        .map_err(LoginError::Credentials)?;
    Ok(Credential::Basic {
        username: "oauth2accesstoken".into(),
        password: token.bearer.clone(),
    })
}

/// ACR's documented flow: an Entra ID token for Resource Manager, exchanged
/// at the registry for a refresh token that docker login accepts with the
/// all-zero user.
async fn acr_login(registry: &str, http: &RegistryHttp<'_>) -> Result<Credential, LoginError> {
    let (Some(tenant), Some(client_id)) = (env("AZURE_TENANT_ID"), env("AZURE_CLIENT_ID")) else {
        return Err(LoginError::NoAzureIdentity);
    };
    let authority =
        env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| "https://login.microsoftonline.com".into());
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    );
    let mut form = vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", client_id),
        ("scope", "https://management.azure.com/.default".into()),
    ];
    if let Some(path) = env("AZURE_FEDERATED_TOKEN_FILE") {
        let assertion =
            std::fs::read_to_string(&path).map_err(|source| LoginError::Read { path, source })?;
        form.push((
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        ));
        form.push(("client_assertion", assertion.trim().to_string()));
    } else if let Some(secret) = env("AZURE_CLIENT_SECRET") {
        form.push(("client_secret", secret));
    } else {
        return Err(LoginError::NoAzureIdentity);
    }
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
    }
    let body = send(form_post(&client(&url)?, &url, &form), &url).await?;
    let aad: Token = answer(&url, &body)?;

    let exchange = format!("{}/oauth2/exchange", http.base);
    let form = [
        ("grant_type", "access_token"),
        ("service", registry),
        ("tenant", tenant.as_str()),
        ("access_token", aad.access_token.as_str()),
    ];
    #[derive(serde::Deserialize)]
    struct Refresh {
        refresh_token: String,
    }
    let client = (http.client)().map_err(|source| LoginError::Answer {
        url: exchange.clone(),
        source,
    })?;
    let body = send(form_post(&client, &exchange, &form), &exchange).await?;
    let refresh: Refresh = answer(&exchange, &body)?;
    Ok(Credential::Basic {
        username: "00000000-0000-0000-0000-000000000000".into(),
        password: refresh.refresh_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn which_hosts_each_login_serves() {
        assert_eq!(
            ecr_region("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(
            ecr_region("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"),
            Some("us-east-1")
        );
        assert_eq!(
            ecr_region("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some("cn-north-1")
        );
        assert_eq!(ecr_region("12345.dkr.ecr.eu-west-1.amazonaws.com"), None);
        assert_eq!(
            ecr_region("123456789012.dkr.ecr.eu-west-1.example.com"),
            None
        );
        assert!(Provider::Ecr.serves("123456789012.dkr.ecr.eu-west-1.amazonaws.com"));
        assert!(Provider::Google.serves("gcr.io"));
        assert!(Provider::Google.serves("eu.gcr.io"));
        assert!(Provider::Google.serves("europe-docker.pkg.dev"));
        assert!(!Provider::Google.serves("docker.io"));
        assert!(Provider::Acr.serves("kiln.azurecr.io"));
        assert!(!Provider::Acr.serves("azurecr.io.example.com"));
        assert!(Provider::Env.serves("anything:5000"));
    }

    #[test]
    fn env_login_tries_shorter_suffixes() {
        let vars: HashMap<&str, &str> = [
            ("KANIKO_EXAMPLE_COM_USER", "u"),
            ("KANIKO_EXAMPLE_COM_PASSWORD", "p"),
            ("KANIKO_LOCALHOST_5000_USER", "lu"),
            ("KANIKO_LOCALHOST_5000_PASSWORD", "lp"),
        ]
        .into();
        let var = |n: &str| vars.get(n).map(|v| v.to_string());
        let basic = |u: &str, p: &str| {
            Some(Credential::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(env_login("reg-1.example.com", var), basic("u", "p"));
        assert_eq!(env_login("localhost:5000", var), basic("lu", "lp"));
        assert_eq!(env_login("quay.io", var), None);
    }

    #[test]
    fn gitlab_login_only_for_its_registry() {
        let vars: HashMap<&str, &str> = [
            ("CI_REGISTRY", "registry.gitlab.example:5050"),
            ("CI_REGISTRY_USER", "gitlab-ci-token"),
            ("CI_REGISTRY_PASSWORD", "job-token"),
        ]
        .into();
        let var = |n: &str| vars.get(n).map(|v| v.to_string());
        assert_eq!(
            gitlab_login("registry.gitlab.example:5050", var),
            Some(Credential::Basic {
                username: "gitlab-ci-token".into(),
                password: "job-token".into()
            })
        );
        assert_eq!(gitlab_login("docker.io", var), None);
    }
}
