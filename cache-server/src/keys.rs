//! The storage layout, spelled in one place: every object the server keeps
//! is a [`Key`], every listing a [`Prefix`]. `Display` is the only code that
//! writes a key and `FromStr` the only code that reads one back, so the
//! backends, the store and GC cannot disagree about it (bazel-remote keeps
//! its `cas/`/`ac/` layout the same way).
//!
//! - `blobs/sha256/<hex>`: blob content, global and content-addressed;
//! - `repos/<repo>/_blobs/<hex>`: a blob as asked for through a repository
//!   (object stores read the global key; a fronted registry looks in the
//!   repository first);
//! - `repos/<repo>/_manifests/<hex>`: `<media type>\n<manifest bytes>`
//!   ([`crate::manifest`]);
//! - `repos/<repo>/_tags/<tag>`: the tagged manifest's digest; the object's
//!   last-modified time is the entry's last use.
//! - `repos/<repo>/_referrers/<subject hex>/<referrer hex>`: the descriptor
//!   of a manifest whose `subject` is `<subject>` (the referrers API lists
//!   one prefix instead of reading every manifest).
//!
//! - `_uploads/<session>/<offset>`: one chunk of an upload session, from
//!   byte `<offset>` (20 digits, so names sort by offset), kept in the
//!   store so any replica can continue or finish the session;
//!
//! Repository names cannot have a component starting with `_`, so the
//! `_blobs`/`_manifests`/`_tags` markers are unambiguous.

use kiln_common::Digest;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Blob(Digest),
    RepoBlob {
        repo: String,
        digest: Digest,
    },
    Manifest {
        repo: String,
        digest: Digest,
    },
    Tag {
        repo: String,
        tag: String,
    },
    /// Who wrote tag `tag` of `repo`, and which manifest (a record is
    /// believed only for the digest it names).
    Writer {
        repo: String,
        tag: String,
    },
    /// Manifest `referrer` of `repo` names `subject` as its subject; the
    /// object holds the referrer's descriptor ([`crate::referrers`]).
    Referrer {
        repo: String,
        subject: Digest,
        referrer: Digest,
    },
    /// The object `/readyz` heads to prove the backend answers.
    Probe,
    /// A chunk of upload session `id` starting at byte `offset`.
    UploadPart {
        id: String,
        offset: u64,
    },
}

/// A listing: everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefix {
    Blobs,
    /// Every repository's manifests and tags.
    Repos,
    /// One repository's tags.
    Tags(String),
    /// The referrers of one manifest of one repository.
    Referrers {
        repo: String,
        subject: Digest,
    },
    /// Every upload session's chunks.
    Uploads,
    /// One upload session's chunks.
    Upload(String),
}

impl Key {
    pub fn tag(repo: &str, tag: &str) -> Key {
        Key::Tag {
            repo: repo.to_string(),
            tag: tag.to_string(),
        }
    }

    pub fn writer(repo: &str, tag: &str) -> Key {
        Key::Writer {
            repo: repo.to_string(),
            tag: tag.to_string(),
        }
    }

    pub fn manifest(repo: &str, digest: &Digest) -> Key {
        Key::Manifest {
            repo: repo.to_string(),
            digest: digest.clone(),
        }
    }

    pub fn repo_blob(repo: &str, digest: &Digest) -> Key {
        Key::RepoBlob {
            repo: repo.to_string(),
            digest: digest.clone(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Blob(d) => write!(f, "blobs/sha256/{}", d.hex()),
            Key::RepoBlob { repo, digest } => write!(f, "repos/{repo}/_blobs/{}", digest.hex()),
            Key::Manifest { repo, digest } => {
                write!(f, "repos/{repo}/_manifests/{}", digest.hex())
            }
            Key::Tag { repo, tag } => write!(f, "repos/{repo}/_tags/{tag}"),
            Key::Writer { repo, tag } => write!(f, "repos/{repo}/_writers/{tag}"),
            Key::Referrer {
                repo,
                subject,
                referrer,
            } => write!(
                f,
                "repos/{repo}/_referrers/{}/{}",
                subject.hex(),
                referrer.hex()
            ),
            Key::Probe => f.write_str("kiln-probe"),
            Key::UploadPart { id, offset } => write!(f, "_uploads/{id}/{offset:020}"),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::Blobs => f.write_str("blobs/sha256/"),
            Prefix::Repos => f.write_str("repos/"),
            Prefix::Tags(repo) => write!(f, "repos/{repo}/_tags/"),
            Prefix::Referrers { repo, subject } => {
                write!(f, "repos/{repo}/_referrers/{}/", subject.hex())
            }
            Prefix::Uploads => f.write_str("_uploads/"),
            Prefix::Upload(id) => write!(f, "_uploads/{id}/"),
        }
    }
}

/// A string that is not a key of the layout (a stray object in the bucket).
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a key of the storage layout")]
pub struct NotAKey(String);

fn digest(hex: &str, key: &str) -> Result<Digest, NotAKey> {
    format!("sha256:{hex}")
        .parse()
        .map_err(|_| NotAKey(key.to_string()))
}

impl FromStr for Key {
    type Err = NotAKey;
    fn from_str(key: &str) -> Result<Key, NotAKey> {
        if key == "kiln-probe" {
            return Ok(Key::Probe);
        }
        if let Some(hex) = key.strip_prefix("blobs/sha256/") {
            return digest(hex, key).map(Key::Blob);
        }
        let bad = || NotAKey(key.to_string());
        if let Some(rest) = key.strip_prefix("_uploads/") {
            let (id, offset) = rest.split_once('/').ok_or_else(bad)?;
            let valid_id =
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            return match (valid_id, offset.len() == 20, offset.parse::<u64>()) {
                (true, true, Ok(offset)) => Ok(Key::UploadPart {
                    id: id.to_string(),
                    offset,
                }),
                _ => Err(bad()),
            };
        }
        let rest = key.strip_prefix("repos/").ok_or_else(bad)?;
        let (repo, kind, name) = ["_blobs", "_manifests", "_tags", "_writers", "_referrers"]
            .iter()
            .find_map(|m| {
                let (repo, name) = rest.split_once(&format!("/{m}/"))?;
                Some((repo, *m, name))
            })
            .ok_or_else(bad)?;
        if repo.is_empty() || name.is_empty() {
            return Err(bad());
        }
        let repo = repo.to_string();
        Ok(match kind {
            "_blobs" => Key::RepoBlob {
                repo,
                digest: digest(name, key)?,
            },
            "_manifests" => Key::Manifest {
                repo,
                digest: digest(name, key)?,
            },
            "_writers" => Key::Writer {
                repo,
                tag: name.to_string(),
            },
            "_referrers" => {
                let (subject, referrer) = name.split_once('/').ok_or_else(bad)?;
                Key::Referrer {
                    repo,
                    subject: digest(subject, key)?,
                    referrer: digest(referrer, key)?,
                }
            }
            _ => Key::Tag {
                repo,
                tag: name.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let d = Digest::sha256_of(b"x");
        for k in [
            Key::Blob(d.clone()),
            Key::repo_blob("a/b", &d),
            Key::manifest("a/b", &d),
            Key::tag("a/b", "v1.0"),
            Key::writer("a/b", "v1.0"),
            Key::Referrer {
                repo: "a/b".into(),
                subject: d.clone(),
                referrer: Digest::sha256_of(b"y"),
            },
            Key::Probe,
            Key::UploadPart {
                id: "0a1b-c2".into(),
                offset: 5 << 20,
            },
        ] {
            assert_eq!(k.to_string().parse::<Key>().unwrap(), k, "{k}");
        }
        assert!(Key::UploadPart {
            id: "s".into(),
            offset: 9
        }
        .to_string()
        .starts_with(&Prefix::Upload("s".into()).to_string()));
        assert_eq!(
            Key::tag("team/app", "latest").to_string(),
            "repos/team/app/_tags/latest"
        );
        assert!(Prefix::Tags("r".into())
            .to_string()
            .starts_with(&Prefix::Repos.to_string()));
        for bad in [
            "repos/x",
            "blobs/sha256/zz",
            "repos//_tags/t",
            "other/thing",
            "_uploads/x/12",
            "_uploads//00000000000000000001",
            "_uploads/a/b/00000000000000000001",
            "repos/a/_referrers/abc",
        ] {
            assert!(bad.parse::<Key>().is_err(), "{bad}");
        }
    }
}
