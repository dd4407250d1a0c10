//! Packages from the databases an image carries: dpkg's `status` (and
//! distroless `status.d/`) with `info/*.md5sums`, apk's `installed`,
//! Python `*.dist-info` (`METADATA`, `RECORD`), npm's `package.json`
//! under `node_modules`, and Go programs' build information (the Go
//! standard library's version, the main module and its dependencies).
//! Pure: bytes in, packages out, so each format is unit-tested against
//! real-shaped samples.

use base64::Engine as _;
use std::collections::BTreeMap;

/// Which database a package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Deb,
    Apk,
    Python,
    Npm,
    Go,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deb => "deb",
            Kind::Apk => "apk",
            Kind::Python => "python",
            Kind::Npm => "npm",
            Kind::Go => "go",
        }
    }
}

/// A checksum a database records for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// SPDX's algorithm name: `MD5`, `SHA1`, `SHA256`.
    pub algorithm: &'static str,
    pub hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub arch: Option<String>,
    /// As the database declares it (not yet an SPDX expression).
    pub license: Option<String>,
    pub supplier: Option<String>,
    /// Where the database entry is, for the SBOM's `sourceInfo`.
    pub source: String,
    /// Files the package owns, with the checksum the database records.
    pub files: Vec<(String, Option<Recorded>)>,
}

/// Every package in `databases` (path → bytes, paths without a leading
/// `/`) and in the Go programs' build information `go` (path → bytes from
/// the magic on).
pub fn all(databases: &BTreeMap<String, Vec<u8>>, go: &BTreeMap<String, Vec<u8>>) -> Vec<Package> {
    let mut out: Vec<Package> = go.iter().flat_map(|(p, b)| go_program(p, b)).collect();
    for (path, bytes) in databases {
        let text = String::from_utf8_lossy(bytes);
        if path == "var/lib/dpkg/status" || path.starts_with("var/lib/dpkg/status.d/") {
            out.extend(dpkg(path, &text, databases));
        } else if path == "lib/apk/db/installed" {
            out.extend(apk(path, &text));
        } else if path.ends_with(".dist-info/METADATA") {
            out.extend(python(path, &text, databases));
        } else if path.ends_with("/package.json") {
            out.extend(npm(path, &text));
        }
    }
    out.sort_by(|a, b| (a.kind, &a.name, &a.version).cmp(&(b.kind, &b.name, &b.version)));
    out.dedup_by(|a, b| a.kind == b.kind && a.name == b.name && a.version == b.version);
    out
}

/// RFC 822-style paragraphs (dpkg, apk use one-letter keys with `:`),
/// with continuation lines folded into the field.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// Installed packages of a dpkg status file (not those removed with only
/// their configuration left), with the MD5 sums dpkg keeps of their files.
fn dpkg(path: &str, text: &str, dbs: &BTreeMap<String, Vec<u8>>) -> Vec<Package> {
    let mut out = Vec::new();
    for p in paragraphs(text) {
        let (Some(name), Some(version)) = (field(&p, "Package"), field(&p, "Version")) else {
            continue;
        };
        // distroless `status.d/` entries have no Status field.
        let state = field(&p, "Status")
            .and_then(|s| s.split_whitespace().nth(2))
            .unwrap_or("installed");
        if matches!(state, "not-installed" | "config-files") {
            continue;
        }
        let arch = field(&p, "Architecture").map(str::to_string);
        let sums = [
            format!("var/lib/dpkg/info/{name}.md5sums"),
            format!(
                "var/lib/dpkg/info/{name}:{}.md5sums",
                arch.as_deref().unwrap_or("")
            ),
        ];
        let files = sums
            .iter()
            .find_map(|s| dbs.get(s))
            .map(|b| md5sums(&String::from_utf8_lossy(b)))
            .unwrap_or_default();
        out.push(Package {
            kind: Kind::Deb,
            name: name.to_string(),
            version: version.to_string(),
            arch,
            license: None,
            supplier: field(&p, "Maintainer").map(str::to_string),
            source: path.to_string(),
            files,
        });
    }
    out
}

/// `<md5>  <path>` lines.
fn md5sums(text: &str) -> Vec<(String, Option<Recorded>)> {
    text.lines()
        .filter_map(|l| {
            let (sum, path) = l.split_once(char::is_whitespace)?;
            let path = path.trim_start().trim_start_matches('/');
            (sum.len() == 32 && !path.is_empty()).then(|| {
                (
                    path.to_string(),
                    Some(Recorded {
                        algorithm: "MD5",
                        hex: sum.to_ascii_lowercase(),
                    }),
                )
            })
        })
        .collect()
}

/// apk's `installed`: `P:` name, `V:` version, `L:` license, `F:` a
/// directory, `R:` a file in it, `Z:` that file's `Q1`+base64 SHA-1.
fn apk(path: &str, text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut pkg = Package {
            kind: Kind::Apk,
            name: String::new(),
            version: String::new(),
            arch: None,
            license: None,
            supplier: None,
            source: path.to_string(),
            files: Vec::new(),
        };
        let mut dir = String::new();
        for line in block.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            match k {
                "P" => pkg.name = v.to_string(),
                "V" => pkg.version = v.to_string(),
                "A" => pkg.arch = Some(v.to_string()),
                "L" if !v.is_empty() => pkg.license = Some(v.to_string()),
                "m" => pkg.supplier = Some(v.to_string()),
                "F" => dir = v.to_string(),
                "R" => pkg.files.push((join(&dir, v), None)),
                "Z" => {
                    let sha1 = v
                        .strip_prefix("Q1")
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .filter(|b| b.len() == 20);
                    if let (Some(last), Some(b)) = (pkg.files.last_mut(), sha1) {
                        last.1 = Some(Recorded {
                            algorithm: "SHA1",
                            hex: hex::encode(b),
                        });
                    }
                }
                _ => {}
            }
        }
        if !pkg.name.is_empty() && !pkg.version.is_empty() {
            out.push(pkg);
        }
    }
    out
}

/// A distribution's `METADATA` (core metadata: Name, Version,
/// License-Expression or License or a license classifier) and its
/// `RECORD` (`path,sha256=<urlsafe base64>,size`, relative to the
/// directory holding the `.dist-info`).
fn python(path: &str, text: &str, dbs: &BTreeMap<String, Vec<u8>>) -> Vec<Package> {
    let header = text.split("\n\n").next().unwrap_or("");
    let p = paragraphs(header);
    let Some(p) = p.first() else {
        return Vec::new();
    };
    let (Some(name), Some(version)) = (field(p, "Name"), field(p, "Version")) else {
        return Vec::new();
    };
    let classifier = p
        .iter()
        .filter(|(k, _)| k == "Classifier")
        .filter_map(|(_, v)| v.strip_prefix("License :: "))
        .map(|v| v.rsplit(" :: ").next().unwrap_or(v).to_string())
        .next();
    let license = field(p, "License-Expression")
        .map(str::to_string)
        .or_else(|| {
            field(p, "License")
                .filter(|l| !l.is_empty() && !l.contains('\n') && l.len() < 100)
                .map(str::to_string)
        })
        .or(classifier);
    let dist_info = path.trim_end_matches("/METADATA");
    let base = dist_info.rsplit_once('/').map_or("", |(b, _)| b);
    let files = dbs
        .get(&format!("{dist_info}/RECORD"))
        .map(|r| record(base, &String::from_utf8_lossy(r)))
        .unwrap_or_default();
    vec![Package {
        kind: Kind::Python,
        name: name.to_string(),
        version: version.to_string(),
        arch: None,
        license,
        supplier: field(p, "Author").map(str::to_string),
        source: dist_info.to_string(),
        files,
    }]
}

fn record(base: &str, text: &str) -> Vec<(String, Option<Recorded>)> {
    text.lines()
        .filter_map(|l| {
            // Paths with commas are quoted; they have no checksum worth
            // the CSV parser, and are listed without one.
            let mut cols = l.rsplitn(3, ',');
            let _size = cols.next()?;
            let hash = cols.next()?;
            let file = cols.next()?.trim_matches('"');
            let sum = hash
                .strip_prefix("sha256=")
                .and_then(|b| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(b)
                        .ok()
                })
                .filter(|b| b.len() == 32)
                .map(|b| Recorded {
                    algorithm: "SHA256",
                    hex: hex::encode(b),
                });
            Some((join(base, file), sum))
        })
        .collect()
}

/// `node_modules/<name>/package.json` or `node_modules/@scope/<name>/…`.
fn npm(path: &str, text: &str) -> Vec<Package> {
    let Some(dir) = path.strip_suffix("/package.json") else {
        return Vec::new();
    };
    let Some((_, tail)) = dir.rsplit_once("node_modules/") else {
        return Vec::new();
    };
    let depth = tail.split('/').count();
    let direct = depth == 1 && !tail.starts_with('@') || depth == 2 && tail.starts_with('@');
    if !direct {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    let (Some(name), Some(version)) = (
        v.get("name").and_then(|x| x.as_str()),
        v.get("version").and_then(|x| x.as_str()),
    ) else {
        return Vec::new();
    };
    let license = match v.get("license") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(o) => o.get("type").and_then(|t| t.as_str()).map(str::to_string),
        None => None,
    };
    vec![Package {
        kind: Kind::Npm,
        name: name.to_string(),
        version: version.to_string(),
        arch: None,
        license,
        supplier: None,
        source: dir.to_string(),
        files: Vec::new(),
    }]
}

/// A Go program's packages from its build information (`b` starts at the
/// magic): the standard library at the Go version, the main module (the
/// program file is its file) and every dependency, replacements applied.
/// Only the format of Go 1.18 and later (strings inline, flag bit 2) is
/// read; older programs hold pointers into their data and are skipped.
fn go_program(path: &str, b: &[u8]) -> Vec<Package> {
    const HEADER: usize = 32;
    if b.len() < HEADER || b[15] & 2 == 0 {
        return Vec::new();
    }
    let mut rest = &b[HEADER..];
    let mut next = || -> Option<&[u8]> {
        let (n, used) = uvarint(rest)?;
        let s = rest.get(used..used.checked_add(n)?)?;
        rest = &rest[used + n..];
        Some(s)
    };
    let Some(version) = next().map(|v| String::from_utf8_lossy(v).into_owned()) else {
        return Vec::new();
    };
    // The module list sits between two 16-byte sentinels.
    let info = next().unwrap_or_default();
    let info = if info.len() >= 33 {
        &info[16..info.len() - 16]
    } else {
        info
    };
    let package = |name: &str, version: &str| Package {
        kind: Kind::Go,
        name: name.to_string(),
        version: version.to_string(),
        arch: None,
        license: None,
        supplier: None,
        source: path.to_string(),
        files: Vec::new(),
    };
    let mut out = vec![package("stdlib", &version)];
    let mut main_path = None;
    for line in String::from_utf8_lossy(info).lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        match cols.as_slice() {
            ["path", p, ..] => main_path = Some(p.to_string()),
            ["mod", m, v, ..] => {
                main_path = None;
                let mut p = package(m, v);
                p.files.push((path.to_string(), None));
                out.push(p);
            }
            ["dep", m, v, ..] => out.push(package(m, v)),
            // A replacement of the dependency just listed.
            ["=>", m, v, ..] => {
                if let Some(last) = out.last_mut().filter(|p| p.name != "stdlib") {
                    *last = package(m, v);
                }
            }
            _ => {}
        }
    }
    // Built outside module mode (as distributions build Go programs): the
    // main package's path is all there is, at no version.
    if let Some(p) = main_path {
        let mut main = package(&p, "(devel)");
        main.files.push((path.to_string(), None));
        out.push(main);
    }
    out
}

/// Go's unsigned varint (`encoding/binary.Uvarint`): the value and the
/// bytes it took.
fn uvarint(b: &[u8]) -> Option<(usize, usize)> {
    let mut x: u64 = 0;
    for (i, &c) in b.iter().enumerate().take(10) {
        x |= u64::from(c & 0x7f) << (7 * i);
        if c < 0x80 {
            return Some((usize::try_from(x).ok()?, i + 1));
        }
    }
    None
}

/// `dir` and a path relative to it (possibly with `..`), normalized.
fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|c| !c.is_empty()).collect()
    };
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbs(items: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        items
            .iter()
            .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn dpkg_status_with_md5sums_and_removed_packages() {
        let d = dbs(&[
            (
                "var/lib/dpkg/status",
                "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\nMaintainer: Matthias Klose <doko@debian.org>\nDescription: GNU Bourne Again SHell\n Bash is an sh-compatible command language interpreter.\n\nPackage: old\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: amd64\nMulti-Arch: same\nVersion: 2.36-9+deb12u4\n",
            ),
            (
                "var/lib/dpkg/info/bash.md5sums",
                "d41d8cd98f00b204e9800998ecf8427e  bin/bash\n",
            ),
            (
                "var/lib/dpkg/info/libc6:amd64.md5sums",
                "0cc175b9c0f1b6a831c399e269772661  usr/lib/x86_64-linux-gnu/libc.so.6\n",
            ),
        ]);
        let p = all(&d, &BTreeMap::new());
        let names: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            names,
            [("bash", "5.2.15-2+b2"), ("libc6", "2.36-9+deb12u4")]
        );
        assert_eq!(p[0].files[0].0, "bin/bash");
        assert_eq!(p[0].files[0].1.as_ref().unwrap().algorithm, "MD5");
        assert_eq!(p[1].files[0].0, "usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(
            p[0].supplier.as_deref(),
            Some("Matthias Klose <doko@debian.org>")
        );
    }

    /// Build information as the Go linker writes it (Go 1.18+).
    fn go_info(version: &str, modinfo: &str) -> Vec<u8> {
        let mut b = b"\xff Go buildinf:".to_vec();
        b.push(8);
        b.push(2);
        b.resize(32, 0);
        let sentinel = [0u8; 16];
        let mut info = sentinel.to_vec();
        info.extend_from_slice(modinfo.as_bytes());
        info.extend_from_slice(&sentinel);
        for s in [version.as_bytes(), &info[..]] {
            let mut n = s.len();
            while n >= 0x80 {
                b.push((n as u8) | 0x80);
                n >>= 7;
            }
            b.push(n as u8);
            b.extend_from_slice(s);
        }
        b
    }

    #[test]
    fn go_programs_list_the_stdlib_main_module_and_dependencies() {
        let modinfo = "path\texample.com/app/cmd/app\nmod\texample.com/app\tv1.2.3\th1:abc=\ndep\tgolang.org/x/sys\tv0.1.0\th1:x=\ndep\texample.com/old\tv1.0.0\n=>\texample.com/fork\tv1.0.1\th1:y=\nbuild\tGOOS=linux\n";
        let go = BTreeMap::from([("usr/bin/app".to_string(), go_info("go1.22.4", modinfo))]);
        let p = all(&BTreeMap::new(), &go);
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("example.com/app", "v1.2.3"),
                ("example.com/fork", "v1.0.1"),
                ("golang.org/x/sys", "v0.1.0"),
                ("stdlib", "go1.22.4"),
            ]
        );
        let main = p.iter().find(|p| p.name == "example.com/app").unwrap();
        assert_eq!(main.files[0].0, "usr/bin/app");
        // A truncated or pre-1.18 header gives nothing, never a panic.
        let mut old = go_info("go1.16", "");
        old[15] = 0;
        assert!(go_program("x", &old).is_empty());
        assert!(go_program("x", &go_info("go1.22", modinfo)[..40]).len() <= 1);
    }

    #[test]
    fn apk_installed_with_sha1() {
        let d = dbs(&[(
            "lib/apk/db/installed",
            "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\nF:lib\nR:ld-musl-x86_64.so.1\nZ:Q1C3VahN6vYTmU8dA2fJ5w0zBXQbE=\n\nP:busybox\nV:1.36.1-r5\nL:GPL-2.0-only\n",
        )]);
        let p = all(&d, &BTreeMap::new());
        assert_eq!(p.len(), 2);
        let musl = p.iter().find(|p| p.name == "musl").unwrap();
        assert_eq!(musl.license.as_deref(), Some("MIT"));
        assert_eq!(musl.files[0].0, "lib/ld-musl-x86_64.so.1");
        assert_eq!(musl.files[0].1.as_ref().unwrap().hex.len(), 40);
    }

    #[test]
    fn python_dist_info_and_npm_packages() {
        let d = dbs(&[
            (
                "venv/lib/python3.11/site-packages/six-1.16.0.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nLicense: MIT\nClassifier: License :: OSI Approved :: MIT License\n\nSix is a Python 2 and 3 compatibility library.\nLicense: not a header\n",
            ),
            (
                "venv/lib/python3.11/site-packages/six-1.16.0.dist-info/RECORD",
                "six.py,sha256=TOOfQi7nFGjMjMB9RtxEoQd5Q_ew-pL15gaSL1Qkllo,34549\n../../../bin/tool,sha256=TOOfQi7nFGjMjMB9RtxEoQd5Q_ew-pL15gaSL1Qkllo,1\nsix-1.16.0.dist-info/RECORD,,\n",
            ),
            (
                "app/node_modules/left-pad/package.json",
                r#"{"name":"left-pad","version":"1.3.0","license":"WTFPL"}"#,
            ),
            (
                "app/node_modules/@types/node/package.json",
                r#"{"name":"@types/node","version":"20.1.0","license":{"type":"MIT"}}"#,
            ),
            (
                "app/node_modules/left-pad/test/package.json",
                r#"{"name":"fixture","version":"0.0.0"}"#,
            ),
        ]);
        let p = all(&d, &BTreeMap::new());
        let six = p.iter().find(|p| p.name == "six").unwrap();
        assert_eq!(six.license.as_deref(), Some("MIT"));
        assert_eq!(six.files[0].0, "venv/lib/python3.11/site-packages/six.py");
        assert_eq!(six.files[1].0, "venv/bin/tool");
        assert_eq!(six.files[0].1.as_ref().unwrap().algorithm, "SHA256");
        assert!(six.files[2].1.is_none());
        let npm: Vec<_> = p
            .iter()
            .filter(|p| p.kind == Kind::Npm)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(npm, ["@types/node", "left-pad"]);
        assert_eq!(
            p.iter()
                .find(|p| p.name == "@types/node")
                .unwrap()
                .license
                .as_deref(),
            Some("MIT")
        );
    }
}
