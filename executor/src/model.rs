//! The executor's image model, shared by the build, the layer cache and the
//! outputs. Data only: how a layer's bytes are brought local is
//! [`crate::fetch`]'s job, what is done with them the others'.

use kiln_common::image::{Descriptor, ImageConfig};
use kiln_common::Digest;
use oci_client::Reference;
use std::path::PathBuf;

/// Where a layer's bytes can be found.
#[derive(Debug, Clone)]
pub enum LayerSource {
    /// In the build's blob store.
    Local,
    /// In a registry repository (a base image's or the cache's), fetched on demand.
    Remote(Reference),
    /// In a shared `sha256/<hex>` directory (the warmed directory, an `oci:`
    /// cache): untrusted until its digest matches.
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ImageLayer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub source: LayerSource,
    /// The layer's outline (`crate::outline`), from the same source: what
    /// a skeleton root unpacks instead of the layer, where there is one.
    pub outline: Option<Descriptor>,
}

impl ImageLayer {
    /// The layer a skeleton root unpacks for this one: its outline where
    /// it has one (digest-checked as any blob), else itself.
    pub fn for_skeleton(&self) -> ImageLayer {
        match &self.outline {
            Some(o) => ImageLayer {
                descriptor: o.clone(),
                diff_id: self.diff_id.clone(),
                source: self.source.clone(),
                outline: None,
            },
            None => self.clone(),
        }
    }
}

/// A finished image: config, layers, and where the blobs are.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: ImageConfig,
    pub layers: Vec<ImageLayer>,
}
