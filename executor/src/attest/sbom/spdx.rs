//! The SPDX 2.3 JSON document: the image as the described package, the
//! packages it contains, their files (each with the SHA-1 of the content
//! actually in the image, and the database's own checksum), and licenses
//! as SPDX expressions, or `LicenseRef-` entries carrying the declared
//! text where it is not one.

use super::packages::{Kind, Package};
use super::scan::ImageFiles;
use sha1::{Digest as _, Sha1};
use std::collections::BTreeMap;

/// What the document is about.
pub struct Subject<'a> {
    /// The image's name (a destination without tag), or `image`.
    pub name: &'a str,
    /// The image manifest's digest.
    pub digest: &'a kiln_common::Digest,
    /// `YYYY-MM-DDThh:mm:ssZ`: `SOURCE_DATE_EPOCH` when given, so the
    /// document is reproducible too.
    pub created: &'a str,
}

/// SPDX license identifiers recognised as they are (the common ones in
/// distribution and language package metadata).
const KNOWN: &[&str] = &[
    "0BSD",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-2.0",
    "Artistic-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "CC-BY-4.0",
    "EPL-2.0",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "ISC",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "MIT",
    "MPL-2.0",
    "PSF-2.0",
    "Python-2.0",
    "Unlicense",
    "WTFPL",
    "X11",
    "Zlib",
    "curl",
    "BlueOak-1.0.0",
    "OpenSSL",
];

/// Exceptions allowed after `WITH`.
const EXCEPTIONS: &[&str] = &[
    "LLVM-exception",
    "Classpath-exception-2.0",
    "GCC-exception-3.1",
];

/// Names package metadata uses for licenses that have an SPDX identifier.
fn alias(raw: &str) -> Option<&'static str> {
    Some(match raw.trim() {
        "MIT License" | "MIT license" | "Expat" => "MIT",
        "Apache 2.0"
        | "Apache-2"
        | "Apache License 2.0"
        | "Apache Software License"
        | "Apache License, Version 2.0" => "Apache-2.0",
        "ISC License (ISCL)" | "ISC License" => "ISC",
        "Mozilla Public License 2.0 (MPL 2.0)" => "MPL-2.0",
        "Python Software Foundation License" => "PSF-2.0",
        "The Unlicense (Unlicense)" => "Unlicense",
        "GPL-2" | "GPLv2" => "GPL-2.0-only",
        "GPL-2+" | "GPLv2+" => "GPL-2.0-or-later",
        "GPL-3" | "GPLv3" => "GPL-3.0-only",
        "GPL-3+" | "GPLv3+" => "GPL-3.0-or-later",
        _ => return None,
    })
}

/// A declared license as an SPDX expression, or as a `LicenseRef-` with
/// the text to declare in `hasExtractedLicensingInfos`.
fn license(raw: &str, refs: &mut BTreeMap<String, String>) -> String {
    if let Some(id) = alias(raw) {
        return id.to_string();
    }
    let spaced = raw.replace('(', " ( ").replace(')', " ) ");
    let mut expect_exception = false;
    let valid = !raw.trim().is_empty()
        && spaced.split_whitespace().all(|t| {
            let ok = match t {
                "AND" | "OR" | "(" | ")" => true,
                "WITH" => {
                    expect_exception = true;
                    return true;
                }
                t if expect_exception => EXCEPTIONS.contains(&t),
                t => KNOWN.contains(&t.trim_end_matches('+')),
            };
            expect_exception = false;
            ok
        });
    if valid {
        return raw.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    let id = format!("LicenseRef-{}", id.trim_matches('-'));
    refs.insert(id.clone(), raw.to_string());
    id
}

/// A package URL (purl) for `p`; `distro` is os-release's `ID`.
fn purl(p: &Package, distro: &str) -> String {
    let enc = |s: &str| {
        s.replace('%', "%25")
            .replace(':', "%3A")
            .replace('@', "%40")
            .replace('+', "%2B")
    };
    let arch = p
        .arch
        .as_deref()
        .map(|a| format!("?arch={}", enc(a)))
        .unwrap_or_default();
    match p.kind {
        Kind::Deb => format!(
            "pkg:deb/{distro}/{}@{}{arch}",
            enc(&p.name),
            enc(&p.version)
        ),
        Kind::Apk => format!(
            "pkg:apk/{distro}/{}@{}{arch}",
            enc(&p.name),
            enc(&p.version)
        ),
        Kind::Python => format!(
            "pkg:pypi/{}@{}",
            enc(&p.name.to_ascii_lowercase().replace('_', "-")),
            enc(&p.version)
        ),
        Kind::Go if p.name == "stdlib" => {
            format!(
                "pkg:golang/stdlib@{}",
                enc(p.version.trim_start_matches("go"))
            )
        }
        Kind::Go => format!("pkg:golang/{}@{}", p.name, enc(&p.version)),
        Kind::Npm => match p.name.strip_prefix('@').and_then(|n| n.split_once('/')) {
            Some((scope, name)) => {
                format!(
                    "pkg:npm/%40{}/{}@{}",
                    enc(scope),
                    enc(name),
                    enc(&p.version)
                )
            }
            None => format!("pkg:npm/{}@{}", enc(&p.name), enc(&p.version)),
        },
    }
}

/// os-release's `ID` (`debian`, `alpine`, …), `linux` when unknown.
fn distro(files: &ImageFiles) -> String {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .filter_map(|p| files.databases.get(*p))
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("ID=")
                        .map(|v| v.trim_matches('"').to_string())
                })
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap_or_else(|| "linux".into())
}

/// The SPDX document for an image whose files are `files`.
pub fn document(subject: &Subject, files: &ImageFiles, packages: &[Package]) -> serde_json::Value {
    let distro = distro(files);
    let mut refs = BTreeMap::new();
    let mut spdx_packages = vec![serde_json::json!({
        "SPDXID": "SPDXRef-Image",
        "name": subject.name,
        "versionInfo": subject.digest.to_string(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": subject.digest.hex()}],
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": format!("pkg:oci/{}@sha256%3A{}",
                subject.name.rsplit('/').next().unwrap_or(subject.name), subject.digest.hex()),
        }],
    })];
    let mut spdx_files = Vec::new();
    let mut relationships = vec![serde_json::json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    for (i, p) in packages.iter().enumerate() {
        let id = format!("SPDXRef-Package-{}-{i}", p.kind.name());
        let mut file_sha1s = Vec::new();
        for (path, recorded) in &p.files {
            // Listed only when in the image: its SHA-1 is of what is there.
            let Some(sha1) = files.sha1.get(path) else {
                continue;
            };
            let fid = format!("SPDXRef-File-{}", spdx_files.len());
            let mut sums = vec![serde_json::json!({"algorithm": "SHA1", "checksumValue": sha1})];
            if let Some(r) = recorded.as_ref().filter(|r| r.algorithm != "SHA1") {
                sums.push(serde_json::json!({"algorithm": r.algorithm, "checksumValue": r.hex}));
            }
            spdx_files.push(serde_json::json!({
                "SPDXID": fid,
                "fileName": format!("./{path}"),
                "checksums": sums,
            }));
            relationships.push(serde_json::json!({
                "spdxElementId": id,
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": fid,
            }));
            file_sha1s.push(sha1.clone());
        }
        let declared = p
            .license
            .as_deref()
            .map_or_else(|| "NOASSERTION".to_string(), |l| license(l, &mut refs));
        let mut pkg = serde_json::json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared,
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("{} database: /{}", p.kind.name(), p.source),
            "filesAnalyzed": !file_sha1s.is_empty(),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(p, &distro),
            }],
        });
        if !file_sha1s.is_empty() {
            pkg["packageVerificationCode"] =
                serde_json::json!({"packageVerificationCodeValue": verification_code(file_sha1s)});
        }
        if let Some(s) = p.supplier.as_deref().filter(|s| !s.contains('\n')) {
            pkg["supplier"] = format!("Person: {s}").into();
        }
        spdx_packages.push(pkg);
        relationships.push(serde_json::json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let mut doc = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", subject.name, subject.digest),
        // Derived from the image: the same image gives the same document.
        "documentNamespace": format!("https://spdx.org/spdxdocs/kiln-{}", subject.digest.hex()),
        "creationInfo": {
            "created": subject.created,
            "creators": [format!("Tool: kiln-executor-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": spdx_packages,
        "files": spdx_files,
        "relationships": relationships,
    });
    if !refs.is_empty() {
        doc["hasExtractedLicensingInfos"] = refs
            .into_iter()
            .map(|(id, text)| serde_json::json!({"licenseId": id, "extractedText": text, "name": text}))
            .collect::<Vec<_>>()
            .into();
    }
    doc
}

/// SPDX's package verification code: the SHA-1 of the files' SHA-1s,
/// sorted and concatenated.
fn verification_code(mut sha1s: Vec<String>) -> String {
    sha1s.sort();
    let mut h = Sha1::new();
    for s in &sha1s {
        h.update(s.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licenses_become_expressions_or_license_refs() {
        let mut refs = BTreeMap::new();
        assert_eq!(license("MIT", &mut refs), "MIT");
        assert_eq!(license("MIT License", &mut refs), "MIT");
        assert_eq!(
            license("(MIT OR Apache-2.0)", &mut refs),
            "(MIT OR Apache-2.0)"
        );
        assert_eq!(
            license("Apache-2.0 WITH LLVM-exception", &mut refs),
            "Apache-2.0 WITH LLVM-exception"
        );
        assert!(refs.is_empty());
        let r = license("BSD License", &mut refs);
        assert_eq!(r, "LicenseRef-BSD-License");
        assert_eq!(refs[&r], "BSD License");
        assert!(license("MIT WITH Nonsense", &mut refs).starts_with("LicenseRef-"));
    }

    #[test]
    fn purls_per_ecosystem() {
        let p = |kind, name: &str, version: &str, arch: Option<&str>| Package {
            kind,
            name: name.into(),
            version: version.into(),
            arch: arch.map(str::to_string),
            license: None,
            supplier: None,
            source: String::new(),
            files: Vec::new(),
        };
        assert_eq!(
            purl(
                &p(Kind::Deb, "libc6", "1:2.36-9+deb12u4", Some("amd64")),
                "debian"
            ),
            "pkg:deb/debian/libc6@1%3A2.36-9%2Bdeb12u4?arch=amd64"
        );
        assert_eq!(
            purl(&p(Kind::Python, "Typing_Extensions", "4.0", None), "x"),
            "pkg:pypi/typing-extensions@4.0"
        );
        assert_eq!(
            purl(&p(Kind::Npm, "@types/node", "20.1.0", None), "x"),
            "pkg:npm/%40types/node@20.1.0"
        );
    }

    #[test]
    fn the_document_lists_files_with_both_checksums() {
        let mut files = ImageFiles::default();
        files.sha1.insert("bin/bash".into(), "a".repeat(40));
        let pkgs = vec![Package {
            kind: Kind::Deb,
            name: "bash".into(),
            version: "5.2".into(),
            arch: Some("amd64".into()),
            license: None,
            supplier: None,
            source: "var/lib/dpkg/status".into(),
            files: vec![
                (
                    "bin/bash".into(),
                    Some(super::super::packages::Recorded {
                        algorithm: "MD5",
                        hex: "b".repeat(32),
                    }),
                ),
                ("gone".into(), None),
            ],
        }];
        let d = kiln_common::Digest::sha256_of(b"m");
        let doc = document(
            &Subject {
                name: "reg/app",
                digest: &d,
                created: "2026-01-01T00:00:00Z",
            },
            &files,
            &pkgs,
        );
        assert_eq!(doc["files"].as_array().unwrap().len(), 1);
        assert_eq!(doc["files"][0]["checksums"][1]["algorithm"], "MD5");
        assert_eq!(doc["packages"][1]["filesAnalyzed"], true);
        assert_eq!(doc["packages"][1]["licenseDeclared"], "NOASSERTION");
        assert_eq!(doc["relationships"].as_array().unwrap().len(), 3);
        assert!(doc.get("hasExtractedLicensingInfos").is_none());
    }
}
