//! Dependency rules: the TEE core links no networking or async runtime crate, and the
//! components outside the TEE speak to it through the wire contract (`custos-wire`) only.

/// `cargo tree` of one package's normal (non-dev) dependencies, one crate per line.
fn tree(package: &str) -> String {
    tree_with(package, &[])
}

/// [`tree`] with extra arguments (features).
fn tree_with(package: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .args(extra)
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
        tree.lines().next().is_some_and(|l| l.starts_with(package)),
        "unexpected cargo tree output: {tree}"
    );
    tree
}

#[test]
fn components_outside_the_tee_link_neither_the_tee_core_nor_the_protocol_engine() {
    // The cloud server combines presignature partials with custos-threshold-public alone.
    for (package, banned) in [
        ("custos-vault-node", &["custos-tee-core ", "cggmp24 "][..]),
        ("custos-bridge", &["custos-tee-core ", "cggmp24 "]),
        ("custos-relay", &["custos-tee-core ", "cggmp24 "]),
        (
            "custos-cloud",
            &["custos-tee-core ", "cggmp24 ", "custos-threshold "],
        ),
        (
            "custos-cloud-api",
            &["custos-tee-core ", "cggmp24 ", "custos-threshold "],
        ),
        ("custos-wire", &["custos-tee-core ", "cggmp24 "]),
        ("custos-threshold-public", &["cggmp24 "]),
    ] {
        let tree = tree(package);
        for b in banned {
            let hit = tree.lines().find(|l| l.starts_with(b));
            assert!(hit.is_none(), "{package} depends on {b}: {hit:?}");
        }
        if !matches!(package, "custos-relay" | "custos-threshold-public") {
            assert!(
                tree.lines().any(|l| l.starts_with("custos-wire ")),
                "{package} does not use the wire contract"
            );
        }
    }
}

#[test]
fn tee_core_has_no_network_or_async_dependency() {
    // custos-attest (vendor evidence verifiers) is meant to run inside the TEE core too, and
    // the TPM quote verifier with it (feature `tpm`: tss-esapi for TPM structures).
    let trees = [
        ("custos-tee-core", tree("custos-tee-core")),
        ("custos-attest", tree("custos-attest")),
        (
            "custos-tee-core --features tpm",
            tree_with("custos-tee-core", &["--features", "tpm"]),
        ),
    ];
    for (package, tree) in &trees {
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
            assert!(hit.is_none(), "{package} depends on {banned}: {hit:?}");
        }
    }
    // Without its feature `tpm` the TEE core links no libtss2 (it then refuses TPM tickets
    // and quotes by name); with it, TPM structures are read by tss-esapi, never by hand.
    let (_, plain) = &trees[0];
    assert!(plain.lines().any(|l| l.starts_with("custos-attest ")));
    let hit = plain.lines().find(|l| l.starts_with("tss-esapi"));
    assert!(hit.is_none(), "custos-tee-core links libtss2: {hit:?}");
    let (_, with_tpm) = &trees[2];
    assert!(with_tpm.lines().any(|l| l.starts_with("tss-esapi ")));
}
