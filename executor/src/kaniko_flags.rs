//! Every flag of kaniko v1.24 and of its maintained fork, with what Kiln does
//! with it. This table is the one place the list lives: the README's flag
//! table is rendered from it (a test keeps the two equal), a test checks that
//! the command line defines each flag, and an integration test walks it,
//! passing every flag to a real build.

/// What Kiln does with a kaniko flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Honoured, with kaniko's meaning (differences in the note).
    Implemented,
    /// Accepted with a one-line notice: it has no meaning for Kiln, and why.
    Notice,
    /// Refused with this reason: honouring it silently would be wrong.
    Refused,
}

pub struct KanikoFlag {
    /// The long name, without `--`.
    pub name: &'static str,
    pub support: Support,
    /// For `Notice`/`Refused`: the reason printed; otherwise what differs, if anything.
    pub note: &'static str,
    /// A sample use, as a pipeline would write it (`{dir}` is a scratch directory).
    pub sample: &'static [&'static str],
    /// The sample builds with nothing else around (no GCS, no git server).
    pub builds_offline: bool,
}

const fn f(
    name: &'static str,
    support: Support,
    note: &'static str,
    sample: &'static [&'static str],
) -> KanikoFlag {
    KanikoFlag {
        name,
        support,
        note,
        sample,
        builds_offline: true,
    }
}

const fn online(
    name: &'static str,
    support: Support,
    note: &'static str,
    sample: &'static [&'static str],
) -> KanikoFlag {
    KanikoFlag {
        builds_offline: false,
        ..f(name, support, note, sample)
    }
}

use Support::{Implemented as I, Notice as N};

pub const KANIKO_FLAGS: &[KanikoFlag] = &[
    f("dockerfile", I, "", &["--dockerfile", "Dockerfile"]),
    f("context", I, "a directory, `dir://`, `tar://` (file or stdin), `git://`, `s3://`, `gs://`, `az://`", &[]),
    f("context-sub-path", I, "", &["--context-sub-path=."]),
    online("bucket", I, "`--bucket b` reads `gs://b/context.tar.gz`; a URL with a scheme is used as given", &["--bucket", "kiln-no-such-bucket"]),
    f("destination", I, "", &["--destination", "example.com/app:v1", "--no-push"]),
    f("snapshot-mode", I, "layers are the same in every mode (each step's actual changes, content-hashed); `full` makes the rungs without an overlay walk the whole root after every RUN instead of following inotify's change events (the default for `redo`/`time` and without the flag)", &["--snapshot-mode=full"]),
    f(
        "custom-platform",
        I,
        "a comma-separated list (or BuildKit's `--platform`) builds one OCI index; each platform pushed by digest, the index to the tags",
        &["--custom-platform=linux/amd64"],
    ),
    f("build-arg", I, "`KEY` alone takes the value from the environment, as kaniko", &["--build-arg", "A=1"]),
    f("insecure", I, "", &["--insecure"]),
    f("skip-tls-verify", I, "", &["--skip-tls-verify"]),
    f("insecure-pull", I, "", &["--insecure-pull"]),
    f("skip-tls-verify-pull", I, "", &["--skip-tls-verify-pull"]),
    f("push-retry", I, "covers the existence check, mount, upload and manifest, with backoff", &["--push-retry=2"]),
    f("push-ignore-immutable-tag-errors", I, "a push refused because the tag is immutable is a warning", &["--push-ignore-immutable-tag-errors"]),
    f("image-fs-extract-retry", I, "I/O failures while applying a layer; a hostile entry is never retried; a layer's stream (extracted while it downloads) is retried at least this often too", &["--image-fs-extract-retry=1"]),
    f("image-download-retry", I, "manifests, configs and layers (resumed by Range); without the flag, layer streams are retried 5 times (as containerd and Docker do), manifests not", &["--image-download-retry=2"]),
    f("kaniko-dir", I, "each build gets a private directory under it (`KILN_DIR` too)", &["--kaniko-dir={dir}/k"]),
    f("tar-path", I, "", &["--tar-path={dir}/image.tar"]),
    f("single-snapshot", I, "", &["--single-snapshot"]),
    f("reproducible", I, "", &["--reproducible"]),
    f("target", I, "", &["--target=0"]),
    f("no-push", I, "", &["--no-push"]),
    f("no-push-cache", I, "", &["--no-push-cache"]),
    f("cache-repo", I, "a registry repository or `oci:/path`", &["--cache-repo=oci:{dir}/cache"]),
    f("cache-dir", I, "the warmer's shared directory; read before pulling", &["--cache-dir={dir}/warm"]),
    f("digest-file", I, "", &["--digest-file={dir}/digest"]),
    f("image-name-with-digest-file", I, "", &["--image-name-with-digest-file={dir}/name"]),
    f("image-name-tag-with-digest-file", I, "", &["--image-name-tag-with-digest-file={dir}/tag"]),
    f("oci-layout-path", I, "", &["--oci-layout-path={dir}/layout"]),
    f("cache", I, "without a cache repository (`--no-push`, no `--cache-repo`) the build goes on uncached, saying so", &["--cache=true"]),
    f("compressed-caching", N, "Kiln never holds a layer in memory: layers are compressed while streamed to disk, whatever this says", &["--compressed-caching=false"]),
    f("cleanup", N, "each build works in its own directory, removed when it ends; the container's files are never changed", &["--cleanup"]),
    f("cache-ttl", I, "", &["--cache-ttl=24h"]),
    f("insecure-registry", I, "", &["--insecure-registry", "localhost:5000"]),
    f("skip-tls-verify-registry", I, "that host's certificate is not verified; others still are", &["--skip-tls-verify-registry", "localhost:5000"]),
    f("registry-certificate", I, "`host=ca.pem`: that CA is trusted for that host (beside the system's roots); `/etc/docker/certs.d/<host>/*.crt` too", &["--registry-certificate", "localhost:5000={dir}/ca.pem"]),
    f("registry-client-cert", I, "`host=cert.pem,key.pem`: presented to that host (mutual TLS); `/etc/docker/certs.d/<host>/client.cert` and `client.key` too", &["--registry-client-cert", "localhost:5000={dir}/cert.pem,{dir}/key.pem"]),
    f("registry-mirror", I, "", &["--registry-mirror", "mirror.example.com"]),
    f("registry-map", I, "", &["--registry-map", "index.docker.io=mirror.example.com"]),
    f("skip-default-registry-fallback", I, "", &["--skip-default-registry-fallback"]),
    f("ignore-var-run", N, "`/var/run` of the build container is never part of an image: private roots do not contain it, and the in-place rung never captures mounted paths", &["--ignore-var-run=false"]),
    f("whitelist-var-run", N, "kaniko's old name of `--ignore-var-run`; the same holds", &["--whitelist-var-run=true"]),
    f("label", I, "", &["--label", "team=build"]),
    f("skip-unused-stages", I, "Kiln's default is `true` (BuildKit's behaviour); `--skip-unused-stages=false` builds every stage up to the target, as kaniko's default", &["--skip-unused-stages=false"]),
    f("use-new-run", N, "Kiln always detects a RUN's changes without a full-filesystem snapshot where the rung allows it", &["--use-new-run"]),
    f("git", I, "`branch=…,single-branch=…,recurse-submodules=…` for `git://` contexts", &["--git", "branch=main,single-branch=true"]),
    f("cache-copy-layers", I, "Kiln's default is `true`: COPY keys cover the copied files' content", &["--cache-copy-layers=false"]),
    f("cache-run-layers", I, "", &["--cache-run-layers=true"]),
    f("ignore-path", I, "what RUN never touches in the in-place rung", &["--ignore-path=/var/mail"]),
    f("force-build-metadata", N, "metadata-only steps always get their history entry; as in Docker and BuildKit they add no empty layer", &["--force-build-metadata"]),
    f("skip-push-permission-check", N, "Kiln makes no push-permission probe before building; a refused push is reported when it happens", &["--skip-push-permission-check"]),
    f("force", I, "build in the container's own root even where no container is detected", &["--force=false"]),
    f("compression", I, "`gzip`, `zstd` or `none`", &["--compression=zstd"]),
    f("compression-level", I, "default gzip 1 (kaniko's effective default), zstd 3", &["--compression-level=3"]),
    f("snapshotMode", I, "kaniko's old name of `--snapshot-mode`; the same holds", &["--snapshotMode=redo"]),
    f("customPlatform", I, "kaniko's old name of `--custom-platform`", &["--customPlatform=linux/amd64"]),
    f("tarPath", I, "kaniko's old name of `--tar-path`", &["--tarPath={dir}/old.tar"]),
    f("verbosity", I, "`RUST_LOG` overrides it", &["--verbosity=debug"]),
    f("log-format", I, "`text`, `color` or `json`", &["--log-format=json"]),
    f("log-timestamp", I, "", &["--log-timestamp"]),
    f("annotation", I, "`key=value` on the image manifest", &["--annotation", "org.opencontainers.image.source=https://example.com"]),
    f("credential-helpers", I, "built-in logins tried after config.json: `env` (`KANIKO_<HOST>_USER`/`_PASSWORD`), `google`, `ecr`, `acr`, `gitlab` (default: all; empty: none); config.json's `credHelpers` naming `ecr-login`, `gcr`, `acr-env` or `gitlabci` use them when that program is not on `PATH`", &["--credential-helpers=ecr"]),
    f("secret", I, "`id=…,src=<file>` or `id=…,env=<VAR>` (BuildKit's syntax) for `RUN --mount=type=secret`; the value never reaches a layer, the config, the cache key, a report or a log", &["--secret", "id=token,src={dir}/token"]),
    f("dryrun", I, "parses the Dockerfile and plans every stage (ARGs, config, steps), then stops: nothing pulled, built or pushed", &["--dryrun"]),
    f("materialize", N, "Kiln's result does not depend on whether cached layers are unpacked; the root is unpacked exactly when a step needs it", &["--materialize"]),
    f("pre-cleanup", N, "each build starts in a fresh private directory; the in-place rung recovers a crashed build's files before starting", &["--pre-cleanup"]),
    f("preserve-context", N, "the build context is never modified or deleted between stages", &["--preserve-context"]),
];

/// The README's table of flags, rendered from [`KANIKO_FLAGS`].
pub fn markdown_table() -> String {
    let mut t = String::from("| kaniko flag | Kiln | note |\n|---|---|---|\n");
    for k in KANIKO_FLAGS {
        let status = match k.support {
            Support::Implemented => "implemented",
            Support::Notice => "accepted, no effect (notice)",
            Support::Refused => "refused",
        };
        t.push_str(&format!("| `--{}` | {status} | {} |\n", k.name, k.note));
    }
    t
}

/// The notice or refusal for a flag given on the command line.
pub fn lookup(name: &str) -> Option<&'static KanikoFlag> {
    KANIKO_FLAGS.iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_table_is_this_table() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md's flag table differs from executor/src/kaniko_flags.rs; paste:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn every_flag_is_listed_once_with_its_reason() {
        let mut seen = std::collections::BTreeSet::new();
        for k in KANIKO_FLAGS {
            assert!(seen.insert(k.name), "--{} listed twice", k.name);
            if k.support != Support::Implemented {
                assert!(!k.note.is_empty(), "--{} needs its reason", k.name);
            }
        }
    }
}
