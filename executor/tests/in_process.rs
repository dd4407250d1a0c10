//! Several builds in one process, through the library: each image holds only
//! its own changes (no --cleanup needed).

use kiln_common::auth::DockerConfig;
use kiln_common::registry::{Registry as Client, RegistryOptions};
use kiln_executor::{BuildOptions, Builder};
use kiln_testkit::*;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_builds_in_one_process_do_not_leak() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let client = Arc::new(Client::new(
        RegistryOptions {
            insecure_hosts: vec![reg.addr.clone()],
            ..Default::default()
        },
        DockerConfig::default(),
    ));
    let work = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut layouts = Vec::new();
    for (i, step) in [
        "RUN echo first > /first && rm /etc/os-release",
        "RUN ls / > /listing && ls /etc > /etc-listing",
    ]
    .iter()
    .enumerate()
    {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM {base}\n{step}\n"),
        )
        .unwrap();
        let layout = out.path().join(format!("l{i}"));
        let opts = BuildOptions {
            context: ctx.path().to_str().unwrap().into(),
            dockerfile: ctx.path().join("Dockerfile"),
            no_push: true,
            oci_layout_path: Some(layout.clone()),
            work_dir: work.path().to_path_buf(),
            build_unused_stages: false,
            ..Default::default()
        };
        let b = Builder::new(opts, client.clone()).unwrap();
        b.build().await.unwrap();
        layouts.push(layout);
    }
    let second = unpack(&format!("oci:{}:latest", layouts[1].display()));
    let listing = std::fs::read_to_string(second.rootfs().join("listing")).unwrap();
    assert!(
        !listing.lines().any(|l| l == "first"),
        "first build leaked: {listing}"
    );
    assert!(!second.rootfs().join("first").exists());
    assert!(std::fs::read_to_string(second.rootfs().join("etc-listing"))
        .unwrap()
        .contains("os-release"));
    // Each build removed its private directory.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}
