//! Several builds in one process, through the library: each image holds only
//! its own changes (no --cleanup needed).

mod common;
use common::{plain_http_client, registry_client};
use kiln_common::registry::RegistryOptions;
use kiln_executor::{BuildOptions, Builder};
use kiln_testkit::*;
use std::path::Path;
use std::sync::Arc;

/// Options for a build of `ctx`'s Dockerfile into an OCI layout, not pushed.
fn to_layout(ctx: &Path, work: &Path, layout: &Path) -> BuildOptions {
    BuildOptions {
        context: ctx.to_str().unwrap().into(),
        dockerfile: ctx.join("Dockerfile"),
        output: kiln_executor::options::OutputOptions {
            no_push: true,
            oci_layout_path: Some(layout.to_path_buf()),
            ..Default::default()
        },
        work_dir: work.to_path_buf(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_builds_in_one_process_do_not_leak() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let client = plain_http_client(&reg.addr);
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
        let opts = to_layout(ctx.path(), work.path(), &layout);
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

/// A stand-in for the isolation: records what RUN asked for and writes one
/// file where the command would have.
struct Recording(Arc<std::sync::Mutex<Vec<kiln_executor::isolation::RunSpec>>>);

impl kiln_executor::isolation::Isolation for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn run(
        &self,
        root: &std::path::Path,
        _scratch: &std::path::Path,
        spec: &kiln_executor::isolation::RunSpec,
    ) -> Result<kiln_executor::isolation::RunOutcome, kiln_executor::isolation::IsolationError>
    {
        use std::os::unix::process::ExitStatusExt;
        self.0.lock().unwrap().push(spec.clone());
        let rel = std::path::Path::new(spec.cwd.trim_start_matches('/')).join("made");
        std::fs::write(root.join(&rel), spec.args.join(" ")).unwrap();
        let mut diff = kiln_executor::snapshot::Diff::default();
        diff.add(rel, kiln_executor::snapshot::Change::Add);
        Ok(kiln_executor::isolation::RunOutcome {
            status: std::process::ExitStatus::from_raw(0),
            tail: Vec::new(),
            diff,
        })
    }
}

/// `Builder::with_isolation`: the whole build (config, WORKDIR, RUN, layer,
/// output) runs with an injected isolation, no process is started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_with_an_injected_isolation() {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nARG V=2\nENV A=1\nWORKDIR /app\nUSER 7:8\nRUN make $V\n",
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let opts = to_layout(ctx.path(), work.path(), &layout);
    let client = Arc::new(registry_client(RegistryOptions::default()));
    let specs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fake = Box::new(Recording(specs.clone()));
    let b = Builder::with_isolation(opts, client, fake).unwrap();
    assert_eq!(b.isolation_name(), "recording");
    let result = b.build().await.unwrap();
    let specs = specs.lock().unwrap().clone();
    assert_eq!(specs.len(), 1);
    let s = &specs[0];
    assert_eq!(s.args, ["/bin/sh", "-c", "make $V"]);
    assert_eq!(s.cwd, "/app");
    assert_eq!((s.uid, s.gid), (7, 8));
    assert!(s.env.contains(&("A".into(), "1".into())), "{:?}", s.env);
    assert!(s.env.contains(&("V".into(), "2".into())), "{:?}", s.env);
    // WORKDIR's layer and RUN's layer, the file as the fake wrote it.
    let layered: Vec<_> = result
        .steps
        .iter()
        .filter(|st| st.layer_digest.is_some())
        .map(|st| st.instruction.as_str())
        .collect();
    assert_eq!(layered, ["WORKDIR /app", "RUN make $V"]);
    let img = unpack(&format!("oci:{}:latest", layout.display()));
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("app/made")).unwrap(),
        "/bin/sh -c make $V"
    );
}
