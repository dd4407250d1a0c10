//! moto's S3 server on loopback (plain or TLS).

use super::*;

/// A real S3 API server (`moto_server` from PyPI's moto[server]) on loopback.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        Self::start_on(free_port())
    }

    /// On a given port: to bring the "same" S3 back after an outage.
    pub fn start_on(port: u16) -> S3Server {
        Self::start_with(port, None)
    }

    /// Serving HTTPS with this certificate and key (PEM): for clients that
    /// refuse plain HTTP, as object_store's STS client does.
    pub fn start_tls(cert: &Path, key: &Path) -> S3Server {
        Self::start_with(free_port(), Some((cert, key)))
    }

    fn start_with(port: u16, tls: Option<(&Path, &Path)>) -> S3Server {
        /// moto's own server app, over TLS. moto picks the service of an
        /// unsigned request from a form body, and object_store sends its
        /// STS call (AssumeRoleWithWebIdentity, unsigned by design) as a
        /// query string, which AWS accepts too; the only addition moves
        /// that query into the body so moto routes it. moto answers it.
        const TLS_SCRIPT: &str = r#"import io, sys
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
app = DomainDispatcherApplication(create_backend_app)
def routed(environ, start_response):
    if 'Action=AssumeRoleWithWebIdentity' in environ.get('QUERY_STRING', ''):
        body = environ['QUERY_STRING'].encode()
        environ.update({'QUERY_STRING': '', 'CONTENT_TYPE': 'application/x-www-form-urlencoded',
                        'CONTENT_LENGTH': str(len(body)), 'wsgi.input': io.BytesIO(body)})
    return app(environ, start_response)
run_simple('127.0.0.1', port, routed, threaded=True, ssl_context=(cert, key))
"#;
        let mut cmd = Command::new("python3");
        match tls {
            Some((cert, key)) => {
                cmd.args(["-c", TLS_SCRIPT, &port.to_string()])
                    .arg(cert)
                    .arg(key);
            }
            // `python3 -m moto.server` is moto_server without relying on PATH shims.
            None => {
                cmd.args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ]);
            }
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (pip install 'moto[server]')");
        wait_for_port(port, "moto_server", Duration::from_secs(30));
        S3Server {
            child,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    /// Creates a bucket and stores an object with boto3 (installed with moto),
    /// a client no one here wrote.
    pub fn put(&self, bucket: &str, key: &str, file: &Path) {
        const SCRIPT: &str = "import sys, boto3\n\
endpoint, bucket, key, path = sys.argv[1:5]\n\
s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
try:\n    s3.create_bucket(Bucket=bucket)\n\
except s3.exceptions.BucketAlreadyOwnedByYou:\n    pass\n\
s3.upload_file(path, bucket, key)\n";
        run(Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.endpoint)
            .arg(bucket)
            .arg(key)
            .arg(file));
    }

    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Creates a bucket with boto3.
    pub fn create_bucket(&self, bucket: &str) {
        const SCRIPT: &str = "import sys, boto3\n\
endpoint, bucket = sys.argv[1:3]\n\
s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
s3.create_bucket(Bucket=bucket)\n";
        run(Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.endpoint)
            .arg(bucket));
    }

    /// Reads every object under `prefix` in `bucket` back with boto3 and
    /// checks that each `…/sha256/<hex>` blob hashes to its name; returns
    /// (blobs checked, keys of the ones that do not match).
    pub fn verify_blobs(&self, bucket: &str, prefix: &str) -> (usize, Vec<String>) {
        const SCRIPT: &str = r#"import sys, boto3, hashlib
endpoint, bucket, prefix = sys.argv[1:4]
s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')
n, bad = 0, []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):
    for o in page.get('Contents', []):
        k = o['Key']
        if '/blobs/sha256/' not in k:
            continue
        n += 1
        h = hashlib.sha256(s3.get_object(Bucket=bucket, Key=k)['Body'].read()).hexdigest()
        if h != k.rsplit('/', 1)[1]:
            bad.append(k)
print(n)
print('\n'.join(bad))
"#;
        let out = run(Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.endpoint)
            .arg(bucket)
            .arg(prefix));
        let mut lines = out.lines();
        let n = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        (
            n,
            lines.filter(|l| !l.is_empty()).map(String::from).collect(),
        )
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: connections are accepted, nothing is answered (a brownout).
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Environment for a client of this server (object_store reads it).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
