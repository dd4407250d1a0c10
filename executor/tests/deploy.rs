//! `deploy/` as a platform team uses it: every kustomize overlay renders
//! (`kubectl kustomize`) and validates against the Kubernetes schemas
//! (`kubernetes-validate --strict`), the Prometheus rules pass `promtool`
//! and its unit tests, and every Grafana panel's query answers from a real
//! Prometheus that scrapes a real cache server while builds run through it
//! — with the hit ratio the builds' `--report` files give; and the
//! manifests' (and GitLab's job's) containers run in Docker Engine.

mod common;
#[path = "deploy/pods.rs"]
mod pods;
use common::*;
use kiln_testkit::*;
use pods::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const OVERLAYS: &[&str] = &[
    "base",
    "overlays/s3",
    "overlays/file",
    "overlays/registry",
    "overlays/warmer",
    "overlays/mirror",
    "ci",
];

/// `kubectl kustomize DIR`, as YAML text and as JSON documents.
fn render(dir: &str) -> (String, Vec<Value>) {
    let yaml = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy/kubernetes").join(dir)));
    let mut py = Command::new("python3");
    py.args([
        "-c",
        "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
    ]);
    let docs = pipe(&mut py, &yaml);
    (yaml, serde_json::from_str(&docs).expect("rendered JSON"))
}

fn pipe(cmd: &mut Command, input: &str) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// Every container of a workload's pod template (or a Pod's spec).
fn pod_spec(d: &Value) -> &Value {
    match d["kind"].as_str() {
        Some("Pod") => &d["spec"],
        Some("CronJob") => &d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &d["spec"]["template"]["spec"],
    }
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    for dir in OVERLAYS {
        let (yaml, docs) = render(dir);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &yaml).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(f.path())
            .output()
            .expect("kubernetes-validate (PyPI)");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dir}: {said}");
        // The only kind without a schema there is the Operator's
        // ServiceMonitor, checked by hand below.
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            assert!(line.contains("kind ServiceMonitor"), "{dir}: {line}");
        }
        for d in &docs {
            assert!(d["metadata"]["name"].is_string(), "{dir}: unnamed {d}");
            if d["kind"] != "Namespace" {
                assert!(d["metadata"]["namespace"].is_string(), "{dir}: {d}");
            }
            let spec = pod_spec(d);
            for c in spec["containers"].as_array().into_iter().flatten() {
                let name = &c["name"];
                assert!(
                    c["resources"]["requests"].is_object(),
                    "{dir}: {name} has no resource requests"
                );
                // No build pod, no server asks for added capabilities.
                assert!(
                    c["securityContext"]["capabilities"]["add"].is_null(),
                    "{dir}: {name} adds capabilities"
                );
                assert_ne!(c["securityContext"]["privileged"], true, "{dir}: {name}");
                // Every image name is resolved by the kustomization.
                let image = c["image"].as_str().unwrap_or_default();
                assert!(
                    image.contains('/') && image.contains(':'),
                    "{dir}: {name}: {image}"
                );
            }
        }
    }

    // The server: non-root, read-only root, probes, spread, a PDB, a
    // NetworkPolicy and a ServiceMonitor that select it.
    for dir in ["overlays/s3", "overlays/file", "overlays/registry"] {
        let (_, docs) = render(dir);
        let dep = find(&docs, "Deployment", "kiln-cache");
        let spec = pod_spec(dep);
        let c = &spec["containers"][0];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{dir}");
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{dir}"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{dir}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{dir}");
        assert!(spec["topologySpreadConstraints"].is_array(), "{dir}");
        let labels = &spec_labels(dep);
        let svc = find(&docs, "Service", "kiln-cache");
        assert!(selects(&svc["spec"]["selector"], labels), "{dir}: Service");
        let pdb = find(&docs, "PodDisruptionBudget", "kiln-cache");
        assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
        let np = find(&docs, "NetworkPolicy", "kiln-cache");
        assert!(selects(&np["spec"]["podSelector"]["matchLabels"], labels));
        let sm = find(&docs, "ServiceMonitor", "kiln-cache");
        assert!(selects(
            &sm["spec"]["selector"]["matchLabels"],
            &svc["metadata"]["labels"]
        ));
        let port = sm["spec"]["endpoints"][0]["port"].clone();
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port),
            "{dir}: the ServiceMonitor scrapes a port the Service names"
        );
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].as_str().unwrap_or_default().to_string())
        };
        let storage = env("KILN_STORAGE").unwrap();
        match dir {
            "overlays/s3" => {
                assert!(storage.starts_with("s3://"), "{storage}");
                assert_eq!(env("KILN_GC_INTERVAL").as_deref(), Some("0"));
                let gc = find(&docs, "CronJob", "kiln-cache-gc");
                let gc_env = &pod_spec(gc)["containers"][0]["env"];
                assert!(
                    gc_env.to_string().contains(&storage),
                    "GC collects the same store"
                );
                let sa = find(&docs, "ServiceAccount", "kiln-cache");
                assert!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string());
            }
            "overlays/file" => {
                assert_eq!(dep["spec"]["replicas"], 1);
                assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
                assert!(pdb["spec"]["minAvailable"].is_null());
                assert!(spec["volumes"].to_string().contains("kiln-cache-store"));
            }
            _ => assert!(storage.starts_with("registry://"), "{storage}"),
        }
    }
    // The mirror: the file overlay plus upstreams, a fixed ClusterIP the
    // nodes' hosts.toml name, and the nodes allowed in.
    let (_, docs) = render("overlays/mirror");
    let dep = find(&docs, "Deployment", "kiln-cache");
    let env = pod_spec(dep)["containers"][0]["env"].to_string();
    assert!(env.contains("file:///data/store"), "{env}");
    let mirrors = pod_spec(dep)["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KILN_MIRROR")
        .and_then(|e| e["value"].as_str())
        .unwrap()
        .to_string();
    for m in mirrors.split(',') {
        let (host, url) = m.split_once('=').unwrap();
        assert!(!host.contains('/') && url.starts_with("https://"), "{m}");
    }
    let ip = find(&docs, "Service", "kiln-cache")["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let containerd = repo().join("deploy/kubernetes/overlays/mirror/containerd");
    for host in ["docker.io", "ghcr.io"] {
        assert!(mirrors.contains(&format!("{host}=")), "{mirrors}");
        let toml = std::fs::read_to_string(containerd.join(host).join("hosts.toml")).unwrap();
        assert!(
            toml.contains(&format!("[host.\"http://{ip}:5000\"]")),
            "{host}: {toml}"
        );
    }
    let np = find(&docs, "NetworkPolicy", "kiln-cache");
    assert!(np.to_string().contains("ipBlock"), "{np}");

    // The warmer's volume is shared by build pods: ReadWriteMany.
    let (_, docs) = render("overlays/warmer");
    let pvc = find(&docs, "PersistentVolumeClaim", "kiln-base-images");
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteMany");
    // CI pods run kaniko's layout from Kiln's image, in a namespace the
    // cache server's NetworkPolicy admits.
    let (_, docs) = render("ci");
    let ns = find(&docs, "Namespace", "ci");
    assert_eq!(ns["metadata"]["labels"]["kiln.dev/ci"], "true");
    let agent = find(&docs, "Pod", "kiln-agent");
    assert_eq!(
        pod_spec(agent)["containers"][0]["command"][0],
        "/busybox/cat"
    );
}

fn spec_labels(d: &Value) -> Value {
    d["spec"]["template"]["metadata"]["labels"].clone()
}

/// Whether every `k: v` of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn prometheus_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let check = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("kiln-rules.yaml")));
    assert!(check.contains("SUCCESS"), "{check}");
    let tests = run(Command::new("promtool").current_dir(&dir).args([
        "test",
        "rules",
        "kiln-rules.test.yaml",
    ]));
    assert!(tests.contains("SUCCESS"), "{tests}");
    // Every alert has at least one test that expects it to fire.
    let rules = std::fs::read_to_string(dir.join("kiln-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("kiln-rules.test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = tests
            .split("- alertname: ")
            .skip(1)
            .any(|t| t.starts_with(alert) && t.contains("exp_alerts:"));
        assert!(fires, "no test makes {alert} fire");
    }
}

/// The dashboard's variables as Grafana would fill them for a short range.
fn fill(expr: &str) -> String {
    expr.replace("$__rate_interval", "2m")
        .replace("$__range", "10m")
        .replace("$repo", ".*")
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn every_dashboard_panel_answers_from_a_real_prometheus() {
    let dash: Value =
        serde_json::from_slice(&std::fs::read(repo().join("deploy/grafana/kiln.json")).unwrap())
            .unwrap();
    // Grafana's dashboard model: what an import needs.
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert_eq!(p["datasource"]["type"], "prometheus", "{}", p["title"]);
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{}: gridPos", p["title"]);
        }
        assert!(!p["targets"].as_array().unwrap().is_empty());
    }

    let reg = Registry::start();
    let base = push_busybox(&reg, "deploy/base:1");
    // The s3 overlay's shape: S3 behind the server, a disk tier in front.
    let s3 = S3Server::start();
    s3.create_bucket("kiln");
    let bins = Path::new(env!("CARGO_BIN_EXE_executor")).parent().unwrap();
    let server = CacheServer::start(
        &bins.join("cache-server"),
        Some("s3://kiln/cache"),
        &["--max-size", "10GiB", "--disk-cache-size", "1GiB"],
        &s3.env(),
    );
    let gw = Pushgateway::start();
    let prom = Prometheus::start(
        &[("kiln-cache", &server.addr), ("pushgateway", gw.addr())],
        &[&repo().join("deploy/prometheus/kiln-rules.yaml")],
    );

    // Three builds through the cache server: cold, fully cached, one file
    // changed (so a step is the first miss twice).
    let ctx = context_with(&format!(
        "FROM {base}\nRUN echo one > /one\nCOPY app.txt /app.txt\nRUN cat /app.txt > /copy\n"
    ));
    let work = tempfile::tempdir().unwrap();
    let cache_repo = format!("{}/team/app/cache", server.addr);
    let mut hits = 0.0;
    let mut steps = 0.0;
    // Scraped before, between and after the builds, as in a real fleet:
    // rates see every change.
    prom.wait_for("up{job=\"kiln-cache\"}", 1.0);
    for (i, content) in ["v1", "v1", "v2"].iter().enumerate() {
        write(ctx.path(), "app.txt", content);
        let report = work.path().join(format!("report{i}.json"));
        let summary = work.path().join(format!("summary{i}.md"));
        must_build(
            ctx.path(),
            &work.path().join(format!("w{i}")),
            &[
                "--no-push",
                "--destination",
                "team/app:1",
                "--cache=true",
                "--cache-repo",
                &cache_repo,
                "--insecure-registry",
                &server.addr,
                "--insecure-pull",
                "--report",
                report.to_str().unwrap(),
                "--summary-file",
                summary.to_str().unwrap(),
            ],
        );
        prom.wait_for("sum(kiln_cache_builds_total)", i as f64 + 1.0);
        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let (h, m) = (
            r["cache_hits"].as_f64().unwrap(),
            r["cache_misses"].as_f64().unwrap(),
        );
        hits += h;
        steps += h + m;
        let md = std::fs::read_to_string(&summary).unwrap();
        assert!(
            md.contains(&format!("{h}/{} steps from cache", h + m)),
            "{md}"
        );
        if i == 2 {
            assert!(
                md.contains("first miss: line 3 `COPY app.txt /app.txt`"),
                "{md}"
            );
        }
    }
    assert!(hits > 0.0 && hits < steps, "{hits}/{steps}");

    // GC as the CronJob runs it, and a warmer run, both pushing figures.
    let bins = Path::new(env!("CARGO_BIN_EXE_executor")).parent().unwrap();
    run(Command::new(bins.join("cache-server"))
        .args(["gc", "--storage"])
        .arg(format!(
            "file://{}",
            server.dir.path().join("store").display()
        ))
        .arg("--data-dir")
        .arg(work.path().join("gc"))
        .args(["--pushgateway", &gw.url])
        .envs(s3.env().iter().map(|(k, v)| (*k, v.as_str()))));
    run(Command::new(bins.join("warmer"))
        .arg("--cache-dir")
        .arg(work.path().join("warm"))
        .args([
            "--image",
            &base,
            "--insecure-pull",
            "--pushgateway",
            &gw.url,
        ]));

    prom.wait_for("sum(kiln_cache_builds_total)", 3.0);
    prom.wait_for("count(kiln_warmer_last_run_timestamp_seconds)", 1.0);
    prom.wait_for(
        "count(kiln_cache_gc_last_success_timestamp_seconds > 0)",
        1.0,
    );
    // Rates need two scrapes after the last change.
    std::thread::sleep(std::time::Duration::from_secs(3));

    let mut ratio_checked = false;
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = fill(t["expr"].as_str().unwrap());
            let result = prom.query(&expr);
            assert!(
                !result.is_empty(),
                "panel {:?}: no data for {expr}",
                p["title"]
            );
            if p["title"]
                .as_str()
                .unwrap()
                .starts_with("Build steps from cache")
            {
                let shown = value(&result[0]);
                assert!(
                    (shown - hits / steps).abs() < 1e-9,
                    "dashboard {shown}, reports {hits}/{steps}"
                );
                ratio_checked = true;
            }
            if p["title"]
                .as_str()
                .unwrap()
                .starts_with("Top cache-busting")
            {
                assert!(
                    result
                        .iter()
                        .any(|s| s["metric"]["step"] == "line 3 COPY app.txt /app.txt"),
                    "{result:?}"
                );
            }
        }
    }
    assert!(ratio_checked, "the dashboard shows no overall hit ratio");
    // The recording rules evaluate on the same series.
    prom.wait_for(
        "count(kiln:cache_hit_ratio:rate1h{repo=\"team/app/cache\"})",
        1.0,
    );
}

/// The rendered manifests, run: each container with its exact image,
/// command, args, env, user, read-only root and mounts, in a real Docker
/// Engine, from images Kiln built of this build's binaries, against moto S3
/// and docker-registry-compatible servers on loopback. What the test must
/// stand in for, and nothing else: IRSA (static keys and moto's endpoint
/// are added to the environment), the pushgateway and Services (their
/// names resolve to loopback), the warmer's image list (ConfigMap data
/// naming a loopback image; `--insecure-pull` added for it), the build
/// Job's checkout (the test fills /workspace) and its `--destination`
/// (registry.example.com → the cache server, a registry too).
#[test]
fn the_manifests_run_in_docker_engine() {
    // Kiln's images under the names the overlays give them.
    let tars = kiln_image_tars(&[
        ("executor", "kiln:executor"),
        ("debug", "kiln:debug"),
        ("cache-server", "kiln:cache-server"),
    ]);
    let engine = DockerEngine::start();
    let (_, s3_docs) = render("overlays/s3");
    let (_, warmer_docs) = render("overlays/warmer");
    let (_, ci_docs) = render("ci");
    let image_of = |docs: &[Value], kind: &str, name: &str| -> String {
        let d = find(docs, kind, name);
        pod_spec(d)["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (target, image) in [
        (
            "cache-server",
            image_of(&s3_docs, "Deployment", "kiln-cache"),
        ),
        ("executor", image_of(&warmer_docs, "CronJob", "kiln-warmer")),
        ("debug", image_of(&ci_docs, "Job", "kiln-build")),
    ] {
        run(engine
            .cmd()
            .arg("load")
            .arg("-i")
            .arg(tars.path().join(format!("{target}.tar"))));
        run(engine
            .cmd()
            .args(["tag", &format!("kiln:{target}"), &image]));
    }

    // The stores and the pushgateway where the manifests expect them.
    let s3 = S3Server::start();
    s3.create_bucket("ci-build-cache");
    let gw = Pushgateway::start_on(9091);
    let s3_env: Vec<(&str, String)> = s3
        .env()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("REGION"))
        .collect();

    // The cache server of the s3 overlay: up, ready, serving /v2/.
    let server_vols = Volumes::new();
    let dep = find(&s3_docs, "Deployment", "kiln-cache");
    let server_id = start_server(&engine, pod_spec(dep), &server_vols, &s3_env, "s3 overlay");
    assert_eq!(http_status("http://127.0.0.1:5000/v2/"), "200");
    let user = run(engine.cmd().args([
        "inspect",
        "--format",
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
        &server_id,
    ]));
    assert_eq!(user.trim(), "65534:65534 true");

    // A base image in the cache server (a registry too), for the warmer
    // and the builds.
    let base = push_busybox_to("127.0.0.1:5000", "base/busybox:1");
    let base_in_cluster = base.replace("127.0.0.1:5000", "kiln-cache.kiln.svc:5000");

    // The warmer CronJob fills its volume; its figures reach the gateway.
    let warm_vols = Volumes::new();
    let cron = find(&warmer_docs, "CronJob", "kiln-warmer");
    let spec = pod_spec(cron);
    warm_vols.config_maps(spec, &warmer_docs);
    std::fs::write(
        warm_vols.path("images").join("images.txt"),
        format!("{base_in_cluster}\n"),
    )
    .unwrap();
    let mut args: Vec<String> = spec["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    args.push("--insecure-pull".into());
    ok(
        "warmer job",
        &docker_run(&engine, spec, "warmer", &warm_vols, &[], Some(args), false),
    );
    let last: Value = serde_json::from_slice(
        &std::fs::read(warm_vols.path("cache").join(".last-warm.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(last["images"][0]["status"], "fetched", "{last}");
    let pushed = run(Command::new("curl")
        .arg("-sf")
        .arg(format!("{}/metrics", gw.url)));
    assert!(
        pushed.contains("kiln_warmer_last_run_timestamp_seconds"),
        "{pushed}"
    );

    // The build Job: exactly its args but the destination, through the
    // cache server; twice, the second from the cache.
    let job = find(&ci_docs, "Job", "kiln-build");
    let spec = pod_spec(job);
    let job_vols = Volumes::new();
    let ws = job_vols.path("workspace");
    write(
        &ws,
        "Dockerfile",
        &format!("FROM {base_in_cluster}\nRUN echo built > /built\nCOPY app.txt /app.txt\n"),
    );
    write(&ws, "app.txt", "app\n");
    let args: Vec<String> = spec["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .map(|a| {
            if a.starts_with("--destination=") {
                "--destination=kiln-cache.kiln.svc:5000/example/app:latest".to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    for round in 0..2 {
        let out = ok(
            "build job",
            &docker_run(
                &engine,
                spec,
                "kiln",
                &job_vols,
                &[],
                Some(args.clone()),
                false,
            ),
        );
        let r: Value =
            serde_json::from_slice(&std::fs::read(ws.join("kiln-report.json")).unwrap()).unwrap();
        if round == 1 {
            assert_eq!(r["cache_misses"], 0, "{out}");
            assert!(r["cache_hits"].as_u64().unwrap() >= 2, "{r}");
            assert!(out.contains("steps from cache"), "{out}");
        }
    }
    assert_eq!(
        file_in("127.0.0.1:5000/example/app:latest", "built"),
        "built\n"
    );

    // The Jenkins agent pod: idles, then a pipeline step runs $KILN_BUILD
    // with the warmer's volume as --cache-dir: the base comes from there.
    let pod = find(&ci_docs, "Pod", "kiln-agent");
    let spec = pod_spec(pod);
    let agent_vols = Volumes::new();
    std::os::unix::fs::symlink(
        warm_vols.path("cache"),
        agent_vols.dir.path().join("base-images"),
    )
    .unwrap();
    let ws = agent_vols.path("workspace");
    write(
        &ws,
        "src/Dockerfile",
        &format!("FROM {base_in_cluster}\nRUN echo agent > /agent\n"),
    );
    let id = ok(
        "agent pod",
        &docker_run(&engine, spec, "kiln", &agent_vols, &[], None, true),
    )
    .trim()
    .to_string();
    let step = "$KILN_BUILD --context=/home/jenkins/agent/src --destination=kiln-cache.kiln.svc:5000/example/agent:1";
    let o = engine
        .cmd()
        .args(["exec", &id, "/busybox/sh", "-c", step])
        .output()
        .unwrap();
    let out = ok("pipeline step", &o);
    let r: Value =
        serde_json::from_slice(&std::fs::read(ws.join("kiln-report.json")).unwrap()).unwrap();
    assert_eq!(
        r["bytes_pulled"], 0,
        "the base came from the warmed volume: {out}"
    );
    let junit = std::fs::read_to_string(ws.join("kiln-summary.xml")).unwrap();
    assert!(
        junit.contains("<testcase ") && junit.contains("RUN echo agent"),
        "{junit}"
    );

    // GitLab's job (deploy/ci/gitlab-ci.yml) as its runner runs it: the
    // job's image with its entrypoint cleared, the script in `sh`, the
    // job's and GitLab's predefined variables.
    let gitlab_yaml = std::fs::read_to_string(repo().join("deploy/ci/gitlab-ci.yml")).unwrap();
    let mut py = Command::new("python3");
    py.args([
        "-c",
        "import sys, yaml, json; print(json.dumps(yaml.safe_load(sys.stdin)))",
    ]);
    let gitlab: Value = serde_json::from_str(&pipe(&mut py, &gitlab_yaml)).unwrap();
    let gjob = &gitlab["build"];
    let project = tempfile::tempdir().unwrap();
    write(
        project.path(),
        "Dockerfile",
        &format!("FROM {base_in_cluster}\nRUN echo gitlab > /gitlab\n"),
    );
    let script: Vec<&str> = gjob["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let mut d = engine.cmd();
    d.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--add-host",
        "kiln-cache.kiln.svc:127.0.0.1",
        "--entrypoint",
        "",
    ]);
    for (k, v) in gjob["variables"].as_object().unwrap() {
        d.arg("-e").arg(format!("{k}={}", v.as_str().unwrap()));
    }
    for kv in [
        "CI_PROJECT_DIR=/builds/group/app",
        "CI_PROJECT_PATH=group/app",
        "CI_REGISTRY=kiln-cache.kiln.svc:5000",
        "CI_REGISTRY_IMAGE=kiln-cache.kiln.svc:5000/group/app",
        "CI_REGISTRY_USER=gitlab-ci-token",
        "CI_REGISTRY_PASSWORD=job-token",
        "CI_COMMIT_SHORT_SHA=abc1234",
    ] {
        d.arg("-e").arg(kv);
    }
    d.arg("-v")
        .arg(format!("{}:/builds/group/app", project.path().display()));
    d.arg(gjob["image"]["name"].as_str().unwrap());
    d.args(["sh", "-c", &format!("set -e\n{}", script.join("\n"))]);
    let out = ok("gitlab job", &d.output().unwrap());
    let junit_name = gjob["artifacts"]["reports"]["junit"].as_str().unwrap();
    let junit = std::fs::read_to_string(project.path().join(junit_name)).unwrap();
    assert!(junit.contains("RUN echo gitlab"), "{junit}\n{out}");
    assert_eq!(
        file_in("127.0.0.1:5000/group/app:abc1234", "gitlab"),
        "gitlab\n"
    );

    // The GC CronJob runs to completion against the same bucket and pushes
    // its figures.
    let gc = find(&s3_docs, "CronJob", "kiln-cache-gc");
    ok(
        "gc job",
        &docker_run(
            &engine,
            pod_spec(gc),
            "gc",
            &Volumes::new(),
            &s3_env,
            None,
            false,
        ),
    );
    let pushed = run(Command::new("curl")
        .arg("-sf")
        .arg(format!("{}/metrics", gw.url)));
    assert!(
        pushed.contains("kiln_cache_gc_last_success_timestamp_seconds{"),
        "{pushed}"
    );

    // The file overlay's server starts and is ready on its volume.
    run(engine.cmd().args(["rm", "-f", &id, &server_id]));
    let (_, file_docs) = render("overlays/file");
    let dep = find(&file_docs, "Deployment", "kiln-cache");
    let file_vols = Volumes::new();
    let id = start_server(&engine, pod_spec(dep), &file_vols, &[], "file overlay");
    run(engine.cmd().args(["rm", "-f", &id]));
}
