//! Running a pod spec's containers in Docker Engine as the kubelet would:
//! the volumes a pod names, `docker run` from a container spec, readiness.

use super::find;
use kiln_testkit::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Where a pod's volumes come from when the test runs its containers: a
/// host directory per volume name (emptyDir, PVC, secret), or — for a
/// ConfigMap volume — the rendered ConfigMap's data written to one.
pub(super) struct Volumes {
    pub(super) dir: tempfile::TempDir,
}

impl Volumes {
    pub(super) fn new() -> Volumes {
        Volumes {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The host directory of volume `name`, made writable for any uid
    /// (fsGroup's job in a cluster).
    pub(super) fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if !p.exists() {
            std::fs::create_dir_all(&p).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        p
    }

    /// Fills each ConfigMap volume of `spec` from the rendered `docs`.
    pub(super) fn config_maps(&self, spec: &Value, docs: &[Value]) {
        for v in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                let data = &find(docs, "ConfigMap", cm)["data"];
                for (k, val) in data.as_object().unwrap() {
                    std::fs::write(
                        self.path(v["name"].as_str().unwrap()).join(k),
                        val.as_str().unwrap(),
                    )
                    .unwrap();
                }
            }
        }
    }
}

/// `docker run` for one container of a pod spec, as the kubelet would run
/// it: command → entrypoint, args, env, workingDir, the pod's and the
/// container's securityContext (user, read-only root, dropped
/// capabilities, no new privileges), volume mounts; the host's network
/// with the Services' names resolving to loopback. `args` replaces the
/// container's args when given (the one substitution a test states).
pub(super) fn docker_run(
    engine: &DockerEngine,
    spec: &Value,
    container: &str,
    vols: &Volumes,
    extra_env: &[(&str, String)],
    args: Option<Vec<String>>,
    detach: bool,
) -> std::process::Output {
    let c = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container}"));
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut d = engine.cmd();
    d.args(["run", "--network", "host"]);
    d.arg(if detach { "-di" } else { "--rm" });
    for host in [
        "kiln-cache.kiln.svc",
        "prometheus-pushgateway.monitoring.svc",
    ] {
        d.arg("--add-host").arg(format!("{host}:127.0.0.1"));
    }
    let psc = &spec["securityContext"];
    let csc = &c["securityContext"];
    let pick = |k: &str| csc[k].as_u64().or_else(|| psc[k].as_u64());
    if let Some(uid) = pick("runAsUser") {
        let gid = pick("runAsGroup").unwrap_or(uid);
        d.arg("--user").arg(format!("{uid}:{gid}"));
    }
    if csc["readOnlyRootFilesystem"] == true {
        d.arg("--read-only");
    }
    for cap in strs(&csc["capabilities"]["drop"]) {
        d.arg("--cap-drop").arg(cap);
    }
    if csc["allowPrivilegeEscalation"] == false {
        d.args(["--security-opt", "no-new-privileges"]);
    }
    if let Some(w) = c["workingDir"].as_str() {
        d.arg("-w").arg(w);
    }
    for e in c["env"].as_array().into_iter().flatten() {
        d.arg("-e").arg(format!(
            "{}={}",
            e["name"].as_str().unwrap(),
            e["value"].as_str().unwrap_or_default()
        ));
    }
    for (k, v) in extra_env {
        d.arg("-e").arg(format!("{k}={v}"));
    }
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let host = vols.path(m["name"].as_str().unwrap());
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        d.arg("-v").arg(format!(
            "{}:{}{ro}",
            host.display(),
            m["mountPath"].as_str().unwrap()
        ));
    }
    let command = strs(&c["command"]);
    if let Some(entry) = command.first() {
        d.arg("--entrypoint").arg(entry);
    }
    d.arg(c["image"].as_str().unwrap());
    d.args(command.iter().skip(1));
    d.args(args.unwrap_or_else(|| strs(&c["args"])));
    d.output().unwrap()
}

/// A file of an image in a registry, as skopeo and umoci see it.
pub(super) fn file_in(image: &str, path: &str) -> String {
    let img = unpack(&format!("docker://{image}"));
    std::fs::read_to_string(img.rootfs().join(path)).unwrap()
}

pub(super) fn ok(what: &str, o: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what}:\n{text}");
    text
}

pub(super) fn http_status(url: &str) -> String {
    let o = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub(super) fn wait_http_ok(url: &str, what: &str, engine: &DockerEngine, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http_status(url) != "200" {
        if std::time::Instant::now() > deadline {
            let logs = engine.cmd().args(["logs", id]).output().unwrap();
            panic!(
                "{what}: {url} not 200\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Starts a cache server pod's container detached and waits until it is
/// ready on the manifests' port; its container id.
pub(super) fn start_server(
    engine: &DockerEngine,
    spec: &Value,
    vols: &Volumes,
    env: &[(&str, String)],
    what: &str,
) -> String {
    let out = docker_run(engine, spec, "cache-server", vols, env, None, true);
    let id = ok(what, &out).trim().to_string();
    wait_http_ok("http://127.0.0.1:5000/readyz", what, engine, &id);
    id
}
