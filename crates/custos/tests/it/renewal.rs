//! Device certificate renewal on a running cluster (issue 12, item 4), through the command
//! line: `custos node renew-cert` gets a CSR for node1's existing D from its TEE, `custos pki
//! sign-csr --days 90` signs it, `custos node install-cert` installs it. Once restarted,
//! node1 presents the new certificate (another serial, the same key), the bridge shows its
//! notAfter, and key sync works both ways between node1 and its peers. Mismatched nodes,
//! certificates for another key and malformed files are refused by name, and a node whose
//! certificate is past two thirds of its lifetime says so in its log.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::*;
use custos::cluster::{Cluster, ClusterOptions};
use custos::ops::{approvals, new_meta};
use custos_net::{client_config, TlsConnector, TlsIdentity};
use custos_pki::{pem_to_der, validity_window};
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_proto::cluster::{StatusRequest, TeeCall};
use custos_wire::approval::Action;
use custos_wire::protocol::{encode_request, Request, Response};
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer, X509Certificate};

fn custos(args: &[&std::ffi::OsStr]) -> Output {
    std::process::Command::new(exe())
        .args(args)
        .output()
        .expect("custos runs")
}

fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The leaf certificate node `i` presents in its TLS handshake now (dialled with the
/// cluster's bridge identity, which a node accepts).
async fn served_certificate(cluster: &Cluster, pki: &Path, i: usize) -> Vec<u8> {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let cdir = pki.join("clusters").join(&cluster.name);
    let chain = vec![
        pem_to_der(&read(&cdir.join("bridge.crt")), "bridge").unwrap(),
        pem_to_der(&read(&cdir.join("cluster-ca.crt")), "cluster CA").unwrap(),
        pem_to_der(&read(&pki.join("device-ca.crt")), "device CA").unwrap(),
    ];
    let key = pem_to_der(&read(&cdir.join("bridge.key")), "bridge key").unwrap();
    let root = pem_to_der(&read(&pki.join("root-ca.crt")), "root").unwrap();
    let identity = TlsIdentity::from_local_key(chain, &key).unwrap();
    let node = &cluster.nodes[i];
    let tls = TlsConnector::new(
        node.addr.expect("node server running"),
        &format!("{}.{}.custos", node.name, cluster.name),
        client_config(&identity, &root).unwrap(),
    )
    .unwrap()
    .connect()
    .await
    .unwrap();
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificates");
    certs[0].as_ref().to_vec()
}

/// (serial, subject public key info) of a certificate.
fn serial_and_key(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    (cert.raw_serial().to_vec(), cert.public_key().raw.to_vec())
}

/// Creates a wallet on node `node` (pinned); its key id.
async fn create_on(pki: &Pki, link: &mut BridgeClient<Channel>, node: &str) -> Vec<u8> {
    let meta = new_meta(600);
    let approvals = approvals(
        &[pki.admin("alice")],
        CLUSTER,
        &meta,
        &Action::CreateWallet { quorum: 1 },
    )
    .unwrap();
    let reply = link
        .submit(TeeCall {
            request: encode_request(&Request::CreateWallet {
                meta,
                quorum: 1,
                approvals,
            }),
            node: node.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.node, node);
    match custos_wire::client::decode_outcome(&reply.response).unwrap() {
        Ok(Response::Wallet(k)) => k.key_id,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_renewed_certificate_keeps_the_device_key_and_sync_works_after_restart() {
    let pki = Pki::new();
    let mut cluster = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("renew"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 3,
            db_url: None,
            sync_interval_secs: 1,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap();
    let pki_dir = std::fs::canonicalize(pki.pki.path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut link = rt.block_on(cluster.link_client()).unwrap();
    let node1 = cluster.nodes[0].name.clone();
    let node2 = cluster.nodes[1].name.clone();
    rt.block_on(create_on(&pki, &mut link, &node1));
    cluster.wait_synced(1, Duration::from_secs(60)).unwrap();
    let old = rt.block_on(served_certificate(&cluster, &pki_dir, 0));

    let config = cluster.nodes[0].config_path().to_path_buf();
    let csr = cluster.dir.join("node1-renewal.csr");
    let crt = cluster.dir.join("node1-renewed.crt");
    succeeded(
        "renew-cert",
        custos(&[
            "node".as_ref(),
            "renew-cert".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--out".as_ref(),
            csr.as_os_str(),
        ]),
    );
    let sign = |days: &str, out: &Path| {
        custos(&[
            "pki".as_ref(),
            "--dir".as_ref(),
            pki_dir.as_os_str(),
            "sign-csr".as_ref(),
            "--cluster".as_ref(),
            CLUSTER.as_ref(),
            "--csr".as_ref(),
            csr.as_os_str(),
            "--days".as_ref(),
            days.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
    };
    // Lifetimes of no day or beyond 825 days are refused by name, and nothing is written.
    for days in ["0", "826"] {
        let refused = cluster.dir.join(format!("refused-{days}.crt"));
        let out = sign(days, &refused);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--days {days} was accepted");
        assert!(stderr.contains("choose 1 to 825 days"), "{stderr}");
        assert!(!refused.exists());
    }
    succeeded("sign-csr", sign("90", &crt));
    let renewed = pem_to_der(&std::fs::read_to_string(&crt).unwrap(), "renewed").unwrap();
    let (nb, na) = validity_window(&[&renewed]).unwrap();
    assert_eq!(na - nb, 90 * 86_400 + 60, "a 90-day certificate");

    let said = succeeded(
        "install-cert",
        custos(&[
            "node".as_ref(),
            "install-cert".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--cert".as_ref(),
            crt.as_os_str(),
        ]),
    );
    assert!(said.contains("restart the node server"), "{said}");
    // The running server keeps presenting the certificate it started with.
    assert_eq!(rt.block_on(served_certificate(&cluster, &pki_dir, 0)), old);

    cluster.kill_node_server(0);
    cluster.start_node_server(0).unwrap();
    let served = rt.block_on(served_certificate(&cluster, &pki_dir, 0));
    assert_eq!(served, renewed, "node1 presents the renewed certificate");
    let (old_serial, old_key) = serial_and_key(&old);
    let (new_serial, new_key) = serial_and_key(&served);
    assert_ne!(new_serial, old_serial);
    assert_eq!(new_key, old_key, "the same device key D");

    // The bridge took the renewed certificate at node1's new registration.
    let status = rt
        .block_on(link.status(StatusRequest {}))
        .unwrap()
        .into_inner();
    for n in &status.nodes {
        if n.node == node1 {
            assert_eq!(n.cert_not_after, na);
        } else {
            assert!(n.cert_not_after > nb, "{}: {}", n.node, n.cert_not_after);
        }
    }

    // Sync both ways: node1 exports a key only it holds to its peers, and fetches one that
    // only node2 made; each side checks the other's renewed (or unchanged) certificate.
    rt.block_on(create_on(&pki, &mut link, &node1));
    rt.block_on(create_on(&pki, &mut link, &node2));
    cluster.wait_synced(3, Duration::from_secs(60)).unwrap();
}

#[test]
fn renewal_refuses_another_nodes_tee_a_certificate_for_another_key_and_a_bad_file() {
    let pki = Pki::new();
    let cluster = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("renew-refusals"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 2,
            db_url: None,
            sync_interval_secs: 60,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap();
    let pki_dir = std::fs::canonicalize(pki.pki.path()).unwrap();
    let node1_config = cluster.nodes[0].config_path().to_path_buf();
    let node2_config = cluster.nodes[1].config_path().to_path_buf();

    // node2's configuration aimed at node1's TEE: the mismatch is named, no CSR is written.
    let csr = cluster.dir.join("wrong.csr");
    let out = std::process::Command::new(exe())
        .env("CUSTOS_NODE_TEE_SOCKET", &cluster.nodes[0].tee.socket)
        .args(["node", "renew-cert", "--config"])
        .arg(&node2_config)
        .arg("--out")
        .arg(&csr)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the TEE at this socket is node \"dc1-node1\"")
            && stderr.contains("names node \"dc1-node2\""),
        "{stderr}"
    );
    assert!(!csr.exists());

    // node2's renewed certificate offered to node1's TEE: refused, node1 keeps its own.
    let csr2 = cluster.dir.join("node2.csr");
    let crt2 = cluster.dir.join("node2.crt");
    succeeded(
        "renew-cert",
        custos(&[
            "node".as_ref(),
            "renew-cert".as_ref(),
            "--config".as_ref(),
            node2_config.as_os_str(),
            "--out".as_ref(),
            csr2.as_os_str(),
        ]),
    );
    succeeded(
        "sign-csr",
        custos(&[
            "pki".as_ref(),
            "--dir".as_ref(),
            pki_dir.as_os_str(),
            "sign-csr".as_ref(),
            "--cluster".as_ref(),
            CLUSTER.as_ref(),
            "--csr".as_ref(),
            csr2.as_os_str(),
            "--out".as_ref(),
            crt2.as_os_str(),
        ]),
    );
    let mut tee1 = cluster.nodes[0].tee.client().unwrap();
    let chain_before = tee1.call(&Request::DeviceChain).unwrap();
    let install = |cert: &Path| {
        custos(&[
            "node".as_ref(),
            "install-cert".as_ref(),
            "--config".as_ref(),
            node1_config.as_os_str(),
            "--cert".as_ref(),
            cert.as_os_str(),
        ])
    };
    let out = install(&crt2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("device certificate does not carry this node's device key"),
        "{stderr}"
    );
    assert_eq!(tee1.call(&Request::DeviceChain).unwrap(), chain_before);

    // A file of two certificates is neither a certificate nor a chain: named, not sent.
    let two = cluster.dir.join("two.crt");
    let pem = std::fs::read_to_string(&crt2).unwrap();
    std::fs::write(&two, format!("{pem}{pem}")).unwrap();
    let out = install(&two);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("two.crt") && stderr.contains("2 certificates"),
        "{stderr}"
    );
}

/// A child process killed when dropped, so a failed assertion leaves nothing running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_node_warns_once_two_thirds_of_its_certificate_lifetime_passed() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let pki = Pki::new();
    let mut cluster = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("renew-warn"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 1,
            db_url: None,
            sync_interval_secs: 60,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap();
    let node1 = cluster.nodes[0].name.clone();
    // A renewal certified for 90 days of which 70 have passed (the library path of the
    // commands above).
    let mut client = cluster.nodes[0].tee.client().unwrap();
    let csr = custos::renewal::renewal_csr(&mut client, CLUSTER, &node1).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let validity = custos_pki::Validity {
        not_before: now - time::Duration::days(70),
        not_after: now + time::Duration::days(20),
    };
    let cert = pki
        .pki
        .sign_device_csr_with_validity(CLUSTER, &csr, validity)
        .unwrap();
    let file = cluster.dir.join("aged.crt");
    std::fs::write(&file, cert).unwrap();
    custos::renewal::install_cert(&mut client, CLUSTER, &node1, &file).unwrap();

    cluster.kill_node_server(0);
    let mut child = Command::new(exe())
        .args(["node", "run", "--config"])
        .arg(cluster.nodes[0].config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _node = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let warned = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("past two thirds of its lifetime") => break line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no warning within 30 s; the node logged {seen:#?}"),
        }
    };
    // 20 days left, or 19 and some hours once a second has passed.
    assert!(
        warned.contains("WARN")
            && (warned.contains("days_left=20") || warned.contains("days_left=19")),
        "{warned}"
    );
}
