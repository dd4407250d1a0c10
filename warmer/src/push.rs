//! `--cache-server`: the warmed images copied into a registry, for pods that
//! do not mount the shared directory.

use super::*;

/// Copies every warmed image from the directory into a registry (the Kiln
/// cache server, or any registry used as a mirror) as `<target>/<repository>`,
/// so pods that do not mount the volume benefit too. Blobs the target already
/// has are skipped. Returns the references written.
pub async fn push_to(
    registry: &Registry,
    cache_dir: &Path,
    target: &str,
    reports: &[ImageReport],
) -> Result<Vec<String>, WarmError> {
    let dir = CacheDir::open(cache_dir)?;
    let (host, prefix) = match target.trim_end_matches('/').split_once('/') {
        Some((h, p)) => (h.to_string(), format!("{p}/")),
        None => (target.trim_end_matches('/').to_string(), String::new()),
    };
    let mut pushed = Vec::new();
    for r in reports.iter().filter(|r| r.status != "failed") {
        let Ok(platform) = Platform::parse(&r.platform) else {
            continue;
        };
        let Some(entry) = dir.find(&r.image, &platform)? else {
            continue;
        };
        let rerr = |source| WarmError::Registry {
            image: r.image.clone(),
            source: Box::new(source),
        };
        let src = parse_reference(&r.image).map_err(rerr)?;
        let repo = format!("{prefix}{}", src.repository());
        let dest = match src.tag() {
            Some(t) => oci_client::Reference::with_tag(host.clone(), repo, t.to_string()),
            None => oci_client::Reference::with_digest(
                host.clone(),
                repo,
                entry.manifest.digest.to_string(),
            ),
        };
        let mb = dir.read_blob(&entry.manifest.digest)?;
        let m: kiln_common::image::Manifest =
            serde_json::from_slice(&mb).map_err(|e| WarmError::From {
                path: dir.blob_path(&entry.manifest.digest),
                line: 0,
                message: kiln_common::report::Report(&e).to_string(),
            })?;
        for b in std::iter::once(&m.config).chain(m.layers.iter()) {
            if !registry.blob_exists(&dest, &b.digest).await.map_err(rerr)? {
                registry
                    .push_blob_file(&dest, &dir.blob_path(&b.digest), &b.digest, b.size)
                    .await
                    .map_err(rerr)?;
            }
        }
        registry
            .push_manifest(&dest, mb, &entry.manifest.media_type)
            .await
            .map_err(rerr)?;
        pushed.push(dest.whole());
    }
    Ok(pushed)
}
