mod common;
use common::*;
use kiln_testkit::*;

#[test]
fn builds_and_pushes_a_simple_image() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    write(ctx.path(), "Dockerfile", &format!("FROM {base}\nRUN echo hello > /hello && rm /var/log/old.log\nCOPY a.txt /app/\nENV X=1\nCMD [\"cat\", \"/hello\"]\n"));
    write(ctx.path(), "a.txt", "A\n");
    let dest = format!("{}/out:1", reg.addr);
    let log = must_build(
        ctx.path(),
        work.path(),
        &["--destination", &dest, "--insecure", "--insecure-pull"],
    );
    eprintln!("{log}");
    let img = unpack(&format!("docker://{dest}"));
    let t = tree(&img.rootfs());
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("hello")).unwrap(),
        "hello\n"
    );
    assert!(t.contains_key("app/a.txt"));
    assert!(!t.contains_key("var/log/old.log"), "whiteout applied");
    assert_eq!(
        img.run_config()["Cmd"],
        serde_json::json!(["cat", "/hello"])
    );
}
