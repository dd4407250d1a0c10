//! `--attest`: the build's provenance and the image's SBOM made once the
//! image is written and pushed, and attached to it at every destination
//! and in the OCI layout ([`crate::attest`] holds the formats).

use super::{BuildError, Builder, Parsed};
use crate::attest::attach::{self, Artifact};
use crate::attest::{provenance, sbom, AttestError, IN_TOTO, SPDX_JSON};
use crate::model::BuiltImage;
use crate::outcome::StepReport;
use crate::output::WrittenImage;
use kiln_common::image::Descriptor;
use kiln_common::registry::parse_reference;
use kiln_common::Digest;
use std::collections::BTreeMap;

impl Builder {
    /// Makes the attestations `--attest` asks for and attaches them.
    pub(super) async fn attest(
        &self,
        p: &Parsed,
        image: &BuiltImage,
        w: &WrittenImage,
        steps: &[StepReport],
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BuildError> {
        let o = &self.opts.attest;
        if !o.any() {
            return Ok(());
        }
        let out = &self.opts.output;
        let pushed = !out.no_push && !out.destinations.is_empty();
        if out.tar_path.is_some() {
            tracing::warn!("--attest: a --tar-path archive holds no attestations (they go to the destinations and --oci-layout-path)");
        }
        if !pushed && out.oci_layout_path.is_none() {
            tracing::warn!("--attest: nowhere to attach the attestations: give a --destination or --oci-layout-path");
            return Ok(());
        }
        let subject = Descriptor::new(
            &w.media_type,
            w.manifest_digest.clone(),
            w.manifest.len() as u64,
        );
        let name = self
            .opts
            .output
            .destinations
            .first()
            .map(|d| crate::output::repository_of(d).to_string())
            .unwrap_or_else(|| "image".into());
        let created = self.timestamp();
        let mut artifacts = Vec::new();
        if o.provenance {
            let statement = self.provenance(p, &name, w, steps, started).await?;
            artifacts.push(Artifact::new(
                IN_TOTO,
                statement,
                BTreeMap::from([(
                    "in-toto.io/predicate-type".to_string(),
                    provenance::PREDICATE_TYPE.to_string(),
                )]),
                &subject,
                &created,
            ));
        }
        if o.sbom {
            let doc = self
                .sbom(image, &name, &w.manifest_digest, &created)
                .await?;
            artifacts.push(Artifact::new(
                SPDX_JSON,
                doc,
                BTreeMap::new(),
                &subject,
                &created,
            ));
        }
        if pushed {
            for dest in &out.destinations {
                let r = parse_reference(dest).map_err(|source| AttestError::Push {
                    what: "attestations",
                    destination: dest.clone(),
                    source: Box::new(source),
                })?;
                attach::push(self.fetcher.registry(), &r, &subject, &artifacts).await?;
                for a in &artifacts {
                    tracing::info!("attached {} {} to {dest}", a.artifact_type, a.digest());
                }
            }
        }
        if let Some(dir) = &out.oci_layout_path {
            attach::write_layout(dir, &artifacts)?;
        }
        Ok(())
    }

    async fn provenance(
        &self,
        p: &Parsed,
        name: &str,
        w: &WrittenImage,
        steps: &[StepReport],
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<u8>, BuildError> {
        let work = |op, path: &str| {
            let path = std::path::PathBuf::from(path);
            move |source| BuildError::Work { op, path, source }
        };
        let dockerfile = std::fs::read(&p.file).map_err(work("reading the Dockerfile", &p.file))?;
        let ctx_dir = p.ctx.dir.clone();
        let ignore = p.ctx.ignore.clone();
        let context =
            tokio::task::spawn_blocking(move || crate::attest::context::digest(&ctx_dir, &ignore))
                .await
                .ok()
                .and_then(Result::ok);
        let images: Vec<(String, Digest)> = {
            let bases = self
                .bases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            bases
                .iter()
                .filter_map(|(key, cell)| {
                    let (img, _) = key.rsplit_once(' ')?;
                    Some((img.to_string(), cell.get()?.1.clone()))
                })
                .collect()
        };
        let env = |k: &str| std::env::var(k).ok();
        let invocation = match (env("GITHUB_RUN_ID"), env("CI_JOB_ID"), env("BUILD_TAG")) {
            (Some(r), _, _) => format!("{r}-{}", env("GITHUB_RUN_ATTEMPT").unwrap_or_default()),
            (_, Some(j), _) => j,
            (_, _, Some(t)) => t,
            _ => kiln_common::units::random_id(),
        };
        let inputs = provenance::Inputs {
            name,
            manifest: &w.manifest_digest,
            dockerfile_path: &p.file,
            dockerfile: &Digest::sha256_of(&dockerfile),
            context: context.as_ref(),
            build_args: &self.opts.build_args,
            secrets: self.opts.secrets.keys().cloned().collect(),
            ssh: self.opts.ssh.keys().cloned().collect(),
            target: self.opts.target.as_deref(),
            platform: &self.platform,
            source_date_epoch: self.opts.layer.epoch,
            images,
            steps,
            cache_repo: self.opts.cache.as_ref().map(|c| c.repo.as_str()),
            isolation: self.isolation.name(),
            builder_id: provenance::builder_id(self.opts.attest.builder_id.as_deref(), env),
            invocation_id: invocation,
            started,
            finished: chrono::Utc::now(),
        };
        Ok(provenance::statement(&inputs).to_string().into_bytes())
    }

    /// The SPDX document of `image`, from its layers (fetched when a
    /// fully cached build did not need them).
    async fn sbom(
        &self,
        image: &BuiltImage,
        name: &str,
        manifest: &Digest,
        created: &str,
    ) -> Result<Vec<u8>, BuildError> {
        let mut paths = Vec::with_capacity(image.layers.len());
        for l in &image.layers {
            let path =
                self.fetcher
                    .ensure_local(l, None)
                    .await
                    .map_err(|source| AttestError::Fetch {
                        digest: l.descriptor.digest.clone(),
                        source: Box::new(source),
                    })?;
            paths.push(path);
        }
        let (name, manifest, created) = (name.to_string(), manifest.clone(), created.to_string());
        let doc = tokio::task::spawn_blocking(move || {
            let readers = paths
                .iter()
                .map(|p| std::fs::File::open(p).and_then(kiln_layers::decompress::decompress))
                .collect::<std::io::Result<Vec<_>>>()?;
            let subject = sbom::spdx::Subject {
                name: &name,
                digest: &manifest,
                created: &created,
            };
            sbom::generate(&subject, readers)
        })
        .await
        .map_err(|e| AttestError::Layers(std::io::Error::other(e)))?
        .map_err(AttestError::Layers)?;
        Ok(doc.to_string().into_bytes())
    }
}
