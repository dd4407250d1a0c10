//! The SBOM of a built image: its layers read in order ([`scan`]), the
//! package databases in them parsed ([`packages`]), an SPDX 2.3 document
//! made of both ([`spdx`]).

pub mod packages;
pub mod scan;
pub mod spdx;

use std::io::Read;

/// The SPDX document for the image whose layers (uncompressed tar
/// streams, base first) are `layers`.
pub fn generate<R: Read>(
    subject: &spdx::Subject,
    layers: impl IntoIterator<Item = R>,
) -> std::io::Result<serde_json::Value> {
    let mut files = scan::ImageFiles::default();
    for l in layers {
        files.apply(l)?;
    }
    let packages = packages::all(&files.databases, &files.go);
    Ok(spdx::document(subject, &files, &packages))
}
