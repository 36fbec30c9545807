//! The TEE core crate must not depend on networking or async runtime crates.

#[test]
fn tee_core_has_no_network_or_async_dependency() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "custos-tee-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(
        tree.contains("custos-tee-core"),
        "unexpected cargo tree output: {tree}"
    );
    for banned in [
        "tokio",
        "hyper",
        "tonic",
        "axum",
        "mio",
        "async-std",
        "reqwest",
        "h2 ",
    ] {
        let hit = tree.lines().find(|l| l.starts_with(banned));
        assert!(
            hit.is_none(),
            "custos-tee-core depends on {banned}: {hit:?}"
        );
    }
}
