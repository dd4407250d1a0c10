//! clap value parsers: every flag's text is checked once, where clap reads
//! it, so [`super::Cli`] holds typed values and the build command only
//! assembles options. Each error says what was expected (clap names the
//! flag and the value).

use kiln_common::image::Platform;
use kiln_common::registry::ClientCert;
use kiln_executor::compression::Compression;
use kiln_executor::isolation::IsolationKind;
use kiln_executor::options::{CacheMounts, ImageFormat, SecretSource};
use std::path::PathBuf;
use std::time::Duration;

/// Go's duration syntax (`30s`, `1h30m`), as kaniko's flags.
pub fn duration(s: &str) -> Result<Duration, String> {
    kiln_common::duration::parse(s).map_err(|e| e.to_string())
}

/// A size such as `4GiB`, `500MB` or `0`.
pub fn size(s: &str) -> Result<u64, String> {
    kiln_common::units::parse_size(s).ok_or_else(|| "expected a size such as 4GiB".into())
}

/// `KEY=VALUE`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "expected KEY=VALUE".into())
}

/// `KEY=VALUE`, or `KEY` alone (the value then comes from the
/// environment, as kaniko's `--build-arg`).
pub fn build_arg(s: &str) -> Result<(String, Option<String>), String> {
    Ok(match s.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (s.to_string(), None),
    })
}

/// `--registry-map original=replacement[;replacement]`.
pub fn registry_map(s: &str) -> Result<(String, Vec<String>), String> {
    let (k, v) = key_value(s)?;
    Ok((k, v.split(';').map(str::to_string).collect()))
}

pub fn platform(s: &str) -> Result<Platform, String> {
    Platform::parse(s).map_err(|e| e.to_string())
}

pub fn image_format(s: &str) -> Result<ImageFormat, String> {
    match s {
        "oci" => Ok(ImageFormat::Oci),
        "docker" => Ok(ImageFormat::Docker),
        _ => Err("expected oci or docker".into()),
    }
}

pub fn compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

/// `--snapshot-mode`: kaniko's `full`, `redo` and `time`. Only `full`
/// changes anything: the rungs without an overlay walk the whole root after
/// every step instead of following the kernel's change events.
pub fn snapshot_full(s: &str) -> Result<bool, String> {
    match s {
        "full" => Ok(true),
        "redo" | "time" => Ok(false),
        _ => Err(format!("{s:?}: expected full, redo or time")),
    }
}

pub fn isolation(s: &str) -> Result<IsolationKind, String> {
    s.parse()
}

pub fn cache_mounts(s: &str) -> Result<CacheMounts, String> {
    match s {
        "shared" => Ok(CacheMounts::Shared),
        "local" => Ok(CacheMounts::Local),
        "off" => Ok(CacheMounts::Off),
        _ => Err("expected shared, local or off".into()),
    }
}

/// `--secret id=…[,src=<file>|,env=<VAR>]`, BuildKit's syntax; with
/// neither, the environment variable named like the id.
pub fn secret(s: &str) -> Result<(String, SecretSource), String> {
    let mut id = None;
    let mut source = None;
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or("expected id=…,src=… or id=…,env=…")?;
        match k {
            "id" => id = Some(v.to_string()),
            "src" | "source" => source = Some(SecretSource::File(v.into())),
            "env" => source = Some(SecretSource::Env(v.to_string())),
            "type" if v == "file" || v == "env" => {}
            _ => return Err(format!("unknown option {k:?}")),
        }
    }
    let id = id.ok_or("no id")?;
    let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
    Ok((id, source))
}

/// `--ssh <id>[=<socket>]`, BuildKit's syntax; without a socket, the
/// agent at `$SSH_AUTH_SOCK`. Only agent sockets: BuildKit also takes key
/// files and runs an agent of its own, which Kiln does not.
pub fn ssh_agent(s: &str) -> Result<(String, PathBuf), String> {
    use std::os::unix::fs::FileTypeExt;
    let (id, path) = match s.split_once('=') {
        Some((id, p)) => (id, PathBuf::from(p)),
        None => (
            s,
            std::env::var_os("SSH_AUTH_SOCK")
                .map(PathBuf::from)
                .ok_or("no socket given and SSH_AUTH_SOCK is not set")?,
        ),
    };
    let meta = std::fs::metadata(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} is not an agent socket (key files are not supported: load them with ssh-add \
             and pass the agent's socket)",
            path.display()
        ));
    }
    Ok((id.to_string(), path))
}

fn existing_file(p: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(p);
    match path.is_file() {
        true => Ok(path),
        false => Err(format!("{} is not a file", path.display())),
    }
}

/// `--registry-certificate host=/path/ca.pem`.
pub fn host_ca(s: &str) -> Result<(String, PathBuf), String> {
    let (host, path) = key_value(s)?;
    Ok((host, existing_file(&path)?))
}

/// `--registry-client-cert host=cert.pem,key.pem`.
pub fn client_cert(s: &str) -> Result<(String, ClientCert), String> {
    let (host, files) = key_value(s)?;
    let (cert, key) = files
        .split_once(',')
        .ok_or("expected host=cert.pem,key.pem")?;
    let cert = ClientCert {
        cert: existing_file(cert)?,
        key: existing_file(key)?,
    };
    Ok((host, cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_where_they_are_read() {
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("soon").is_err());
        assert_eq!(size("4GiB"), Ok(4 << 30));
        assert!(size("lots").is_err());
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(key_value("novalue").is_err());
        assert_eq!(build_arg("K"), Ok(("K".into(), None)));
        assert_eq!(build_arg("K=v"), Ok(("K".into(), Some("v".into()))));
        assert_eq!(
            registry_map("docker.io=a.example;b.example"),
            Ok((
                "docker.io".into(),
                vec!["a.example".into(), "b.example".into()]
            ))
        );
        assert_eq!(image_format("docker"), Ok(ImageFormat::Docker));
        assert!(image_format("oci2").is_err());
        assert_eq!(cache_mounts("off"), Ok(CacheMounts::Off));
        assert!(cache_mounts("none").is_err());
        assert_eq!(compression("zstd"), Ok(Compression::Zstd));
        assert!(platform("linux/arm64/v8").is_ok());
        let (id, src) = secret("id=tok,src=/run/tok").unwrap();
        assert_eq!(id, "tok");
        assert!(matches!(src, SecretSource::File(p) if p == std::path::Path::new("/run/tok")));
        assert!(matches!(secret("id=npm").unwrap().1, SecretSource::Env(v) if v == "npm"));
        assert!(secret("src=/x").is_err());
        assert!(secret("id=a,color=red").is_err());
        assert!(host_ca("reg=/nonexistent/ca.pem").is_err());
        assert!(client_cert("reg=/etc/hostname").is_err());
    }
}
