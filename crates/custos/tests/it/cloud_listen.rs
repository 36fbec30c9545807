//! `custos cloud run` serves plain HTTP on a loopback address only: configured to listen on
//! every address without TLS, the process refuses to start and names why, before it binds
//! anything; on loopback the same configuration serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use custos::tee_process::{spawn_ready, SpawnError};

fn config(dir: &Path, root: &Path, listen: &str) -> PathBuf {
    let (_token, hash) = custos_cloud::generate_api_token();
    let text = format!(
        "listen = \"{listen}\"\ntrust_root = \"{}\"\n\
         [[api_tokens]]\nname = \"ops\"\nsha256 = \"{hash}\"\nscopes = [\"read\"]\n",
        root.display()
    );
    let path = dir.join(format!(
        "cloud-{}.toml",
        listen.replace([':', '.', '[', ']'], "_")
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn cloud_run(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custos"));
    cmd.args(["cloud", "run", "--config"]).arg(config);
    cmd
}

#[test]
fn plain_http_on_every_address_is_refused_at_start() {
    let pki = custos_test_kit::Pki::with_clusters(&["dc1"]);
    let (dir, root) = (pki.path(), pki.root_path());
    for listen in ["0.0.0.0:0", "[::]:0"] {
        match spawn_ready(
            cloud_run(&config(dir, &root, listen)),
            "custos cloud listening",
        ) {
            Err(SpawnError::Exited { stderr, .. }) => assert!(
                stderr.contains("plain HTTP is served on a loopback address only"),
                "{listen}: {stderr}"
            ),
            Ok((mut child, line)) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{listen}: served in plain HTTP: {line}");
            }
            Err(e) => panic!("{listen}: {e}"),
        }
    }
    // The same configuration on loopback serves (and is stopped here).
    let (mut child, line) = spawn_ready(
        cloud_run(&config(dir, &root, "127.0.0.1:0")),
        "custos cloud listening",
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("http://127.0.0.1:"), "{line}");
}
