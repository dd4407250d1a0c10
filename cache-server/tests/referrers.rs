//! The OCI 1.1 referrers API over each storage backend: artifacts pushed
//! with a `subject` are answered with `OCI-Subject` and listed by
//! `GET /v2/<name>/referrers/<digest>` (filtered by `artifactType`), an
//! unknown subject has an empty listing, a deleted artifact leaves it, and
//! GC keeps referrers while their subject lives and removes them with it.
//! A fronted registry keeps no referrer records: 404, so clients use the
//! tag schema.

mod common;
use common::*;

const SPDX: &str = "application/spdx+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// An artifact manifest of `artifact_type` whose one layer is `body`,
/// about `subject`.
fn artifact(artifact_type: &str, body: &[u8], subject: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": sha(body), "size": body.len()}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 100},
        "annotations": {"org.example.kind": artifact_type},
    }))
    .unwrap()
}

fn listing_of(body: &[u8]) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["mediaType"], "application/vnd.oci.image.index.v1+json");
    v["manifests"].as_array().unwrap().clone()
}

fn referrers_over(b: Backend) {
    let s = b.start(&[]);
    let url = s.url();
    let rt = rt();
    let repo = "team/app";
    let sbom_body = br#"{"spdxVersion":"SPDX-2.3"}"#;
    let prov_body = br#"{"_type":"https://in-toto.io/Statement/v1"}"#;
    let (image, sbom, prov) = rt.block_on(async {
        let (image, _) = push_entry(&url, repo, "v1", 1, 4096).await;
        for blob in [&b"{}"[..], sbom_body, prov_body] {
            assert_eq!(put_blob(&url, repo, blob).await, 201);
        }
        let mut pushed = Vec::new();
        for (t, body) in [(SPDX, &sbom_body[..]), (IN_TOTO, &prov_body[..])] {
            let m = artifact(t, body, &image);
            let r = put_manifest(&url, repo, &sha(&m), &m).await;
            assert_eq!(r.status().as_u16(), 201);
            let subject = r
                .headers()
                .get("oci-subject")
                .map(|v| v.to_str().unwrap().to_string());
            if b.full() {
                assert_eq!(subject.as_deref(), Some(image.as_str()), "OCI-Subject");
            } else {
                assert_eq!(subject, None, "no OCI-Subject where nothing is listed");
            }
            pushed.push(sha(&m));
        }
        (image, pushed[0].clone(), pushed[1].clone())
    });
    let referrers = |subject: &str, query: &str| {
        rt.block_on(get(&format!("{url}/v2/{repo}/referrers/{subject}{query}")))
    };
    if !b.full() {
        assert_eq!(referrers(&image, "").0, 404);
        return;
    }

    let (st, h, body) = referrers(&image, "");
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "application/vnd.oci.image.index.v1+json");
    let all = listing_of(&body);
    assert_eq!(all.len(), 2, "{all:?}");
    let sbom_entry = all.iter().find(|d| d["digest"] == sbom.as_str()).unwrap();
    assert_eq!(sbom_entry["artifactType"], SPDX);
    assert_eq!(sbom_entry["annotations"]["org.example.kind"], SPDX);
    assert!(sbom_entry["size"].as_u64().unwrap() > 0);

    let (st, h, body) = referrers(&image, "?artifactType=application/vnd.in-toto%2Bjson");
    assert_eq!(st, 200);
    assert_eq!(h["oci-filters-applied"], "artifactType");
    let only = listing_of(&body);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["digest"], prov.as_str());

    // Unknown subjects have no referrers (never a 404); bad digests are 400.
    let (st, _, body) = referrers(&sha(b"nothing"), "");
    assert_eq!(st, 200);
    assert!(listing_of(&body).is_empty());
    assert_eq!(referrers("sha256:zz", "").0, 400);

    // An artifact may arrive before its subject (OCI 1.1).
    let later = sha(b"a manifest pushed later");
    let orphan = artifact(SPDX, sbom_body, &later);
    rt.block_on(async {
        let r = put_manifest(&url, repo, &sha(&orphan), &orphan).await;
        assert_eq!(r.status().as_u16(), 201);
    });
    assert_eq!(listing_of(&referrers(&later, "").2).len(), 1);

    // A deleted artifact leaves the listing.
    let delete = |reference: &str| {
        rt.block_on(async {
            client()
                .delete(format!("{url}/v2/{repo}/manifests/{reference}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let code = delete(&prov);
    assert_eq!(code, 202);
    let left = listing_of(&referrers(&image, "").2);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["digest"], sbom.as_str());

    // GC: the tagged image keeps its SBOM (manifest and blob); the
    // artifact whose subject never came goes.
    let r = gc_once(&b, &s, &["--gc-grace", "0s"]);
    assert_eq!(r["manifests_deleted"], 1, "the orphan only: {r}");
    assert_eq!(
        r["blobs_deleted"], 1,
        "the deleted provenance's body only: {r}"
    );
    assert_eq!(listing_of(&referrers(&image, "").2).len(), 1);

    // Untagged, the image goes, and its referrers with it.
    let code = delete("v1");
    assert_eq!(code, 202);
    let r = gc_once(&b, &s, &["--gc-grace", "0s"]);
    assert_eq!(r["manifests_deleted"], 2, "the image and its SBOM: {r}");
    assert_eq!(
        r["blobs_deleted"], 4,
        "the image's config and layer, the SBOM's body and empty config: {r}"
    );
    let (st, _, body) = referrers(&image, "");
    assert_eq!(st, 200);
    assert!(listing_of(&body).is_empty());
}

#[test]
fn referrers_on_local_disk() {
    referrers_over(Backend::file());
}

#[test]
fn referrers_on_s3() {
    referrers_over(Backend::s3());
}

#[test]
fn referrers_with_a_fronted_registry_fall_back_to_the_tag_schema() {
    referrers_over(Backend::registry());
}
