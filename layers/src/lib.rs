//! Image layers onto disk, for every Kiln binary that needs them: the
//! executor (base images, `COPY --from`, ADD's archives) and the warmer
//! (layers kept extracted for stacked roots). Kept out of the executor's
//! library so the warmer links this and not the build engine.
//!
//! Read top-down: `decompress` and `rootfs` need nothing here; `ids` says
//! which owners this process can give; `extract` applies a layer inside a
//! root with both; `lowers` keeps verified extracted layers in a cache
//! directory with `extract`.

pub mod decompress;
pub mod extract;
pub mod ids;
pub mod lowers;
pub mod rootfs;

pub use decompress::decompress;
