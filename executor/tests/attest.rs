//! `--attest=provenance,sbom` against real components: a real Debian base
//! (mmdebstrap) and Kiln's cache server as destination and layer cache
//! (a user's login, so cache entries have a writer); the attestations
//! found through the server's referrers API, the provenance validated
//! against in-toto's published definitions, the SBOM by SPDX's own tools
//! and against `dpkg-query` on the image; secrets searched for and never
//! found. docker-registry 2.x has no referrers API: there the tag-schema
//! index is kept, and skopeo reads it.

mod common;
use base64::Engine as _;
use common::*;
use kiln_testkit::*;
use std::path::Path;
use std::process::Command;

const SECRET: &str = "kiln-secret-value-3f9c1e";
const PASSWORD: &str = "pa55-w0rd-ci-77";

fn get(url: &str) -> (u16, String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-u", &format!("ci:{PASSWORD}"), "-D", "/dev/stderr"])
        .args(["-H", "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"])
        .arg(url)
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stderr).to_lowercase();
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, headers, out.stdout)
}

/// A build of `ctx` in `work` pushed to `dest` on the plain-HTTP
/// registry `registry`, with `extra` flags.
fn push_build(ctx: &Path, work: &Path, registry: &str, dest: &str, extra: &[&str]) {
    let mut args = vec![
        "--destination",
        dest,
        "--insecure-pull",
        "--insecure-registry",
        registry,
    ];
    args.extend_from_slice(extra);
    must_build(ctx, &work.join("k"), &args);
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

/// The one layer of artifact manifest `digest` in `repo_url`.
fn artifact_body(repo_url: &str, digest: &str) -> Vec<u8> {
    let (s, _, m) = get(&format!("{repo_url}/manifests/{digest}"));
    assert_eq!(s, 200);
    let m = json(&m);
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let (s, _, body) = get(&format!("{repo_url}/blobs/{layer}"));
    assert_eq!(s, 200);
    body
}

fn context(base: &str) -> tempfile::TempDir {
    let ctx = context_with(&format!(
        "FROM {base}\nARG VERSION\nARG API_TOKEN\n\
         COPY site /usr/lib/python3/dist-packages\n\
         COPY node /app/node_modules\n\
         COPY umoci /usr/local/bin/umoci\n\
         RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /tok-len && echo $VERSION > /version\n"
    ));
    let module = "print('demo')\n";
    let sum = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(hex::decode(kiln_common::Digest::sha256_of(module.as_bytes()).hex()).unwrap());
    write(ctx.path(), "site/demo_pkg.py", module);
    write(
        ctx.path(),
        "site/demo_pkg-2.1.dist-info/METADATA",
        "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 2.1\nLicense: MIT\n",
    );
    write(
        ctx.path(),
        "site/demo_pkg-2.1.dist-info/RECORD",
        &format!(
            "demo_pkg.py,sha256={sum},{}\ndemo_pkg-2.1.dist-info/RECORD,,\n",
            module.len()
        ),
    );
    write(
        ctx.path(),
        "node/left-pad/package.json",
        r#"{"name":"left-pad","version":"1.3.0","license":"WTFPL"}"#,
    );
    write(ctx.path(), "secret", SECRET);
    // A Go program (Debian's umoci): its build information names Go.
    std::fs::copy("/usr/bin/umoci", ctx.path().join("umoci")).unwrap();
    ctx
}

#[test]
fn attestations_on_the_cache_server_name_bases_writers_and_packages() {
    let reg = Registry::start();
    let base = push_debian(&reg);
    let t = tempfile::tempdir().unwrap();
    let (server, config) = cache_server_with_login(t.path(), PASSWORD);
    let ctx = context(&base);
    let dest = format!("{}/team/app:1", server.addr);
    let secret = format!("id=tok,src={}", ctx.path().join("secret").display());
    let token_arg = format!("API_TOKEN={SECRET}");
    let build = |n: usize| {
        let work = tempfile::tempdir_in("/dev/shm").unwrap();
        let report = work.path().join("report.json");
        let out = executor()
            .env("DOCKER_CONFIG", &config)
            // Both builds give the same image, so its SBOM is one artifact.
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("--context")
            .arg(ctx.path())
            .arg("--kaniko-dir")
            .arg(work.path().join("k"))
            .args(["--destination", &dest, "--insecure-registry", &server.addr])
            .args(["--insecure-pull", "--cache", "--cache-repo"])
            .arg(format!("{}/team/cache", server.addr))
            .args(["--attest=provenance,sbom", "--secret", &secret])
            .args(["--build-arg", "VERSION=1.0", "--build-arg", &token_arg])
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        assert_ok(&out);
        let r = json(&std::fs::read(&report).unwrap());
        assert_eq!(r["cache_hits"], if n == 0 { 0 } else { 4 }, "{r}");
        r
    };
    build(0);
    // A fresh work dir, every step a hit: the provenance names the entries.
    let report = build(1);
    let digest = report["manifest_digest"].as_str().unwrap();
    let repo_url = format!("{}/v2/team/app", server.url());

    // Discovery through the referrers API, and its artifactType filter.
    let (s, h, body) = get(&format!("{repo_url}/referrers/{digest}"));
    assert_eq!(s, 200, "{h}");
    assert!(
        h.contains("content-type: application/vnd.oci.image.index.v1+json"),
        "{h}"
    );
    let listing = json(&body);
    let types: Vec<&str> = listing["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    // Two builds, two provenance statements (their times differ), one SBOM
    // (the same image gives the same document, so the same artifact).
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "application/vnd.in-toto+json")
            .count(),
        2,
        "{listing}"
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "application/spdx+json")
            .count(),
        1,
        "{listing}"
    );
    let (s, h, body) = get(&format!(
        "{repo_url}/referrers/{digest}?artifactType=application/spdx%2Bjson"
    ));
    assert_eq!(s, 200);
    assert!(h.contains("oci-filters-applied: artifacttype"), "{h}");
    let sboms = json(&body);
    assert_eq!(sboms["manifests"].as_array().unwrap().len(), 1, "{sboms}");

    // The newest provenance: valid, bases by digest, hits with their writer.
    let provenances: Vec<serde_json::Value> = listing["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["artifactType"] == "application/vnd.in-toto+json")
        .map(|m| json(&artifact_body(&repo_url, m["digest"].as_str().unwrap())))
        .collect();
    let prov = provenances
        .iter()
        .find(|p| {
            p["predicate"]["runDetails"]["byproducts"]
                .as_array()
                .is_some_and(|b| b.iter().all(|x| x["annotations"]["cache"] == "hit"))
        })
        .expect("the all-hits build's provenance");
    let prov_path = t.path().join("provenance.json");
    std::fs::write(&prov_path, prov.to_string()).unwrap();
    let v = run(Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attest/validate_provenance.py"))
        .arg(&prov_path));
    assert!(v.starts_with("valid"), "{v}");
    assert_eq!(
        prov["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    let inspect = json(
        run(Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{base}")))
        .as_bytes(),
    );
    let deps = &prov["predicate"]["buildDefinition"]["resolvedDependencies"];
    assert_eq!(deps[0]["name"], base.as_str(), "{deps}");
    assert_eq!(
        format!("sha256:{}", deps[0]["digest"]["sha256"].as_str().unwrap()),
        inspect["Digest"].as_str().unwrap()
    );
    let byproducts = prov["predicate"]["runDetails"]["byproducts"]
        .as_array()
        .unwrap();
    assert_eq!(byproducts.len(), 4);
    for b in byproducts {
        assert_eq!(b["annotations"]["writer"]["subject"], "ci", "{b}");
        assert!(b["annotations"]["key"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
    }
    let steps = report["steps"].as_array().unwrap();
    let layers: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["layer_digest"].as_str())
        .collect();
    for l in &layers {
        assert!(
            byproducts
                .iter()
                .any(|b| format!("sha256:{}", b["digest"]["sha256"].as_str().unwrap()) == *l),
            "layer {l} reused but not named"
        );
    }
    let params = &prov["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(params["buildArgs"]["VERSION"], "1.0");
    assert_eq!(params["secrets"][0], "tok");

    // The SBOM: valid for SPDX's tools, every dpkg package with its version.
    let sbom_digest = sboms["manifests"][0]["digest"].as_str().unwrap();
    let sbom_bytes = artifact_body(&repo_url, sbom_digest);
    let sbom_path = t.path().join("sbom.spdx.json");
    std::fs::write(&sbom_path, &sbom_bytes).unwrap();
    let out = Command::new("pyspdxtools")
        .arg("-i")
        .arg(&sbom_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sbom = json(&sbom_bytes);
    let packages: std::collections::BTreeSet<(String, String)> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["versionInfo"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let creds = format!("ci:{PASSWORD}");
    let image = unpack_with(&format!("docker://{dest}"), &["--src-creds", &creds]);
    let listed = run(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}/var/lib/dpkg",
            image.rootfs().display()
        ))
        .args(["-W", "-f", "${Package} ${Version}\n"]));
    let dpkg: Vec<&str> = listed.lines().collect();
    assert!(dpkg.len() > 80, "{listed}");
    for line in dpkg {
        let (name, version) = line.split_once(' ').unwrap();
        assert!(
            packages.contains(&(name.to_string(), version.to_string())),
            "{name} {version} missing from the SBOM"
        );
    }
    let licensed = |name: &str| {
        sbom["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["licenseDeclared"].as_str().unwrap().to_string())
    };
    assert_eq!(licensed("demo-pkg").as_deref(), Some("MIT"));
    let version_of = |name: &str| {
        packages
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert!(
        version_of("stdlib").is_some_and(|v| v.starts_with("go1.")),
        "the Go standard library of umoci"
    );
    assert_eq!(
        version_of("github.com/opencontainers/umoci/cmd/umoci").as_deref(),
        Some("(devel)")
    );
    assert_eq!(licensed("left-pad").as_deref(), Some("WTFPL"));
    let files = sbom["files"].as_array().unwrap();
    assert!(files
        .iter()
        .any(|f| f["fileName"] == "./usr/lib/python3/dist-packages/demo_pkg.py"));
    assert!(
        files.iter().any(|f| f["fileName"] == "./usr/bin/dpkg"),
        "dpkg's own files"
    );

    // Secrets and the login never reach an attestation or the report.
    for text in [
        prov.to_string(),
        String::from_utf8_lossy(&sbom_bytes).into_owned(),
        report.to_string(),
    ] {
        assert!(!text.contains(SECRET), "the secret leaked");
        assert!(!text.contains(PASSWORD), "the password leaked");
    }
    assert!(params["buildArgs"].get("API_TOKEN").is_none(), "{params}");
}

#[test]
fn docker_registry_gets_the_tag_schema_index_and_layouts_hold_the_artifacts() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = context_with(&format!("FROM {base}\nRUN echo hi > /hi\n"));
    let dest = format!("{}/app:1", reg.addr);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let layout = work.path().join("oci");
    let digest_file = work.path().join("digest");
    push_build(
        ctx.path(),
        work.path(),
        &reg.addr,
        &dest,
        &[
            "--attest",
            "type=provenance,builder-id=https://ci.example/job/7",
            "--attest",
            "type=sbom",
            "--oci-layout-path",
            layout.to_str().unwrap(),
            "--digest-file",
            digest_file.to_str().unwrap(),
        ],
    );
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    let base_url = format!("http://{}/v2/app", reg.addr);
    // No referrers API in docker-registry 2.x.
    let (s, _, _) = get(&format!("{base_url}/referrers/{digest}"));
    assert_eq!(s, 404);
    // The tag-schema index instead, read by skopeo.
    let tag = digest.replace(':', "-");
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/app:{tag}", reg.addr)));
    let index = json(raw.as_bytes());
    let mut types: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["application/spdx+json", "application/vnd.in-toto+json"]
    );
    for m in index["manifests"].as_array().unwrap() {
        let raw = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!(
                "docker://{}/app@{}",
                reg.addr,
                m["digest"].as_str().unwrap()
            )));
        let manifest = json(raw.as_bytes());
        assert_eq!(manifest["subject"]["digest"], digest.as_str());
        if m["artifactType"] == "application/vnd.in-toto+json" {
            let body = artifact_body(&base_url, m["digest"].as_str().unwrap());
            let p = json(&body);
            assert_eq!(
                p["predicate"]["runDetails"]["builder"]["id"],
                "https://ci.example/job/7"
            );
        }
    }
    // The image itself is still an image, not an index.
    let image = json(
        run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{dest}")))
        .as_bytes(),
    );
    assert!(image.get("layers").is_some(), "{image}");
    // The layout: the image by its tag, the two artifacts beside it.
    let idx = json(&std::fs::read(layout.join("index.json")).unwrap());
    let entries = idx["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{idx}");
    for e in entries {
        let d = e["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(layout.join("blobs/sha256").join(d).is_file());
    }
    run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:1", layout.display())));
}

/// Several platforms in one invocation: each platform's manifest gets its
/// own attestations (the index itself none), pushed and in the layout.
#[test]
fn each_platform_of_an_index_gets_its_own_attestations() {
    let reg = Registry::start();
    let base = format!("{}/base:multi", reg.addr);
    push_two_platform_index(&reg.addr, &base);
    let ctx = context_with(&format!("FROM {base}\nCOPY f /f\n"));
    write(ctx.path(), "f", "same on both\n");
    let dest = format!("{}/app:multi", reg.addr);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let layout = work.path().join("oci");
    push_build(
        ctx.path(),
        work.path(),
        &reg.addr,
        &dest,
        &[
            "--custom-platform",
            "linux/amd64,linux/arm64",
            "--attest=sbom",
            "--oci-layout-path",
            layout.to_str().unwrap(),
        ],
    );
    let index = json(
        run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{dest}")))
        .as_bytes(),
    );
    let platforms = index["manifests"].as_array().unwrap();
    assert_eq!(platforms.len(), 2, "{index}");
    let mut sboms = Vec::new();
    for p in platforms {
        let d = p["digest"].as_str().unwrap();
        let fallback = json(
            run(Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{}/app:{}", reg.addr, d.replace(':', "-"))))
            .as_bytes(),
        );
        let arts = fallback["manifests"].as_array().unwrap();
        assert_eq!(arts.len(), 1, "{fallback}");
        assert_eq!(arts[0]["artifactType"], "application/spdx+json");
        let body = json(&artifact_body(
            &format!("http://{}/v2/app", reg.addr),
            arts[0]["digest"].as_str().unwrap(),
        ));
        assert_eq!(
            body["packages"][0]["versionInfo"], d,
            "the SBOM names its platform's image"
        );
        sboms.push(arts[0]["digest"].as_str().unwrap().to_string());
    }
    assert_ne!(sboms[0], sboms[1]);
    let idx = json(&std::fs::read(layout.join("index.json")).unwrap());
    let listed: Vec<&str> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["artifactType"] == "application/spdx+json")
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    for s in &sboms {
        assert!(listed.contains(&s.as_str()), "{idx}");
        assert!(layout
            .join("blobs/sha256")
            .join(s.trim_start_matches("sha256:"))
            .is_file());
    }
}
