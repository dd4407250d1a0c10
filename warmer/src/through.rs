//! `--warm-mirror`: warms a pull-through mirror (a Kiln cache server in
//! mirror mode) by pulling each image through it, so the fleet's first
//! builds of the day find their bases there; nothing is kept locally and
//! nothing is pushed (the mirror fetches from its upstream once, verified,
//! and keeps what it fetched).
//!
//! An image `<registry>/<repo>:<tag>` is asked for as
//! `<mirror>/<registry>/<repo>:<tag>`, the mirror's repository-name
//! routing. Each layer is streamed through and hashed, so a warm that
//! reports success has seen every byte match its digest.

use crate::{ImageReport, WarmError};
use futures_util::StreamExt;
use kiln_common::digest::HashingWriter;
use kiln_common::image::Platform;
use kiln_common::registry::{parse_reference, Registry, RegistryError};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Pulls every (image, platform) through `mirror`, `jobs` at once; failures
/// are reported per image.
pub async fn warm_through(
    registry: Arc<Registry>,
    mirror: &str,
    images: &[String],
    platforms: &[Platform],
    jobs: usize,
) -> Vec<ImageReport> {
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = Vec::new();
    for image in images {
        for platform in platforms {
            let (registry, permits) = (registry.clone(), permits.clone());
            let (image, platform) = (image.clone(), platform.clone());
            let mirror = mirror.trim_end_matches('/').to_string();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let t0 = Instant::now();
                let mut report = ImageReport::failed(image.clone(), platform.to_string());
                match pull_through(&registry, &mirror, &image, &platform, &mut report).await {
                    Ok(()) => report.status = "warmed".into(),
                    Err(e) => report.error = Some(kiln_common::report::Report(&e).to_string()),
                }
                report.seconds = t0.elapsed().as_secs_f64();
                report
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

/// The image's name through the mirror: `<mirror>/<registry>/<repo>…`.
fn through_name(mirror: &str, image: &str) -> Result<String, RegistryError> {
    let r = parse_reference(image)?;
    let at = match (r.digest(), r.tag()) {
        (Some(d), _) => format!("@{d}"),
        (None, Some(t)) => format!(":{t}"),
        (None, None) => ":latest".to_string(),
    };
    Ok(format!("{mirror}/{}/{}{at}", r.registry(), r.repository()))
}

async fn pull_through(
    registry: &Registry,
    mirror: &str,
    image: &str,
    platform: &Platform,
    report: &mut ImageReport,
) -> Result<(), WarmError> {
    let rerr = |source| WarmError::Registry {
        image: image.to_string(),
        source: Box::new(source),
    };
    let name = through_name(mirror, image).map_err(rerr)?;
    let resolved = registry.resolve(&name, platform).await.map_err(rerr)?;
    report.manifest = Some(resolved.manifest_digest.clone());
    for l in &resolved.manifest.layers {
        let Some(mut s) = registry
            .blob_stream(&resolved.reference, &l.digest, 0, None)
            .await
            .map_err(rerr)?
        else {
            return Err(WarmError::LayerMissing {
                image: name,
                digest: l.digest.clone(),
            });
        };
        let mut h = HashingWriter::new(std::io::sink());
        while let Some(chunk) = s.stream.next().await {
            // A sink never fails to take bytes.
            let _ = h.write_all(&chunk.map_err(rerr)?);
        }
        let (_, actual, n) = h.finish();
        if actual != l.digest {
            return Err(WarmError::LayerDigest {
                image: name,
                expected: l.digest.clone(),
                actual,
            });
        }
        report.bytes_fetched += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_through_the_mirror_by_their_registry() {
        assert_eq!(
            through_name("cache:5000", "alpine:3.19").unwrap(),
            "cache:5000/docker.io/library/alpine:3.19"
        );
        assert_eq!(
            through_name("cache:5000", "ghcr.io/o/app").unwrap(),
            "cache:5000/ghcr.io/o/app:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            through_name("cache:5000", &format!("quay.io/x/y@{d}")).unwrap(),
            format!("cache:5000/quay.io/x/y@{d}")
        );
    }
}
