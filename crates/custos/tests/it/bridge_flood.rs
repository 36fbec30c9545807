//! A bridge under a flood of refused callers (issue 12, item 6): clients whose chain does
//! not reach the pinned Root are refused in the TLS handshake and never reach the
//! application; refusals, at the TLS layer and by the application, add a bounded number of
//! aggregated history rows whatever their number; an authorised caller is served meanwhile;
//! the history still verifies.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::outsider_identity;
use crate::common::*;
use custos::cluster::{Cluster, ClusterOptions};
use custos_metadata::{MetadataDb, RefusalSummary, REFUSAL_SUMMARY_KIND};
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_proto::cluster::{KeyListRequest, StatusRequest};
use rustls::pki_types::ServerName;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Refused TLS connection attempts, half self-signed, half from another PKI.
const ATTEMPTS: usize = 10_000;
/// Attempts in flight at once.
const IN_FLIGHT: usize = 16;
/// Refused gRPC calls by a genuine device certificate of another cluster.
const APP_REFUSALS: usize = 1_000;
/// Guard against hangs only (never an assertion about speed).
const GUARD: Duration = Duration::from_secs(30);
/// The bridge's `refusal_summary_secs` as `Cluster::start` configures it.
const SUMMARY_INTERVAL_MS: i64 = 60_000;

/// How one connection attempt ended, as the attacker sees it.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// The bridge refused the handshake with this alert.
    RefusedInHandshake(AlertDescription),
    /// The bridge completed the handshake and its HTTP/2 server answered: the attacker
    /// reached the application.
    ReachedApplication,
}

/// One attempt: handshake, send gRPC's connection preface, read. In TLS 1.3 the client
/// finishes its side before the server has judged the client certificate, so a refusal
/// shows on the first read.
async fn attempt(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> Attempt {
    let tcp = TcpStream::connect(addr).await.expect("bridge accepts TCP");
    let name = ServerName::try_from("bridge.dc1.custos").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("the client side of the handshake completes");
    if let Err(e) = tls
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
    {
        return refused(e);
    }
    let mut buf = [0u8; 1];
    match tokio::time::timeout(GUARD, tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Attempt::ReachedApplication,
        Ok(Ok(_)) => panic!("bridge closed the connection without an alert"),
        Ok(Err(e)) => refused(e),
        Err(_) => panic!("bridge neither answered nor refused within {GUARD:?}"),
    }
}

fn refused(e: std::io::Error) -> Attempt {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(a)) => Attempt::RefusedInHandshake(*a),
        _ => panic!("unexpected I/O error {e:?}"),
    }
}

/// A device certificate issued by a complete Custos PKI that is not ours.
fn foreign_pki_identity(dir: &std::path::Path) -> custos_net::TlsIdentity {
    let other = custos_pki::PkiDir::new(dir);
    other.init().unwrap();
    other.create_cluster_ca(CLUSTER).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dc1-node9");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let der = |pem: String| custos_pki::pem_to_der(&pem, "cert").unwrap();
    let chain = vec![
        der(other.sign_device_csr(CLUSTER, &csr).unwrap()),
        der(other.cluster_ca_pem(CLUSTER).unwrap()),
        der(other.device_ca_pem().unwrap()),
    ];
    custos_net::TlsIdentity::from_local_key(chain, &key.serialize_der()).unwrap()
}

#[test]
fn a_flood_of_refused_callers_adds_bounded_history_and_members_are_served() {
    let pki = Pki::new();
    let mut cluster = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("flood"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 0,
            db_url: None,
            sync_interval_secs: 60,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap();
    let foreign_dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rt.block_on(async {
        let db = MetadataDb::connect(&cluster.db_url).await.unwrap();
        db.head().await.unwrap().seq
    });
    let (outcomes, served_mid_flood) = rt.block_on(async {
        let root = custos_pki::pem_to_der(&pki.pki.root_pem().unwrap(), "root").unwrap();
        let configs = [
            custos_net::client_config(&outsider_identity(&pki, None), &root).unwrap(),
            custos_net::client_config(&foreign_pki_identity(foreign_dir.path()), &root).unwrap(),
        ];
        let addr = cluster.bridge_addr;
        let done = Arc::new(AtomicUsize::new(0));
        let flooding = Arc::new(AtomicBool::new(true));

        // The authorised caller: the link side asks for the cluster status throughout.
        let mut link = cluster.link_client().await.unwrap();
        let member = {
            let (done, flooding) = (done.clone(), flooding.clone());
            tokio::spawn(async move {
                let mut served_mid_flood = 0usize;
                // Bounded: the flood ends long before 100,000 status calls.
                for _ in 0..100_000 {
                    if !flooding.load(Ordering::Acquire) {
                        break;
                    }
                    let status = tokio::time::timeout(GUARD, link.status(StatusRequest {}))
                        .await
                        .expect("status call hung")
                        .expect("an authorised caller is served during the flood");
                    assert_eq!(status.into_inner().cluster, CLUSTER);
                    let d = done.load(Ordering::Acquire);
                    if d > 0 && d < ATTEMPTS {
                        served_mid_flood += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                served_mid_flood
            })
        };

        // The flood: IN_FLIGHT workers, each a fixed share of the attempts.
        let mut workers = Vec::new();
        for w in 0..IN_FLIGHT {
            let configs = configs.clone();
            let done = done.clone();
            workers.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in (w..ATTEMPTS).step_by(IN_FLIGHT) {
                    let config = configs[i % 2].clone();
                    let a = tokio::time::timeout(GUARD, attempt(addr, config))
                        .await
                        .expect("attempt hung");
                    outcomes.push((i % 2, a));
                    done.fetch_add(1, Ordering::AcqRel);
                }
                outcomes
            }));
        }
        let mut outcomes = Vec::with_capacity(ATTEMPTS);
        for w in workers {
            outcomes.extend(w.await.unwrap());
        }

        // Repeated application-level refusals: a genuine device of another cluster.
        let ch = custos_net::connect(
            addr,
            "bridge.dc1.custos",
            custos_net::client_config(&outsider_identity(&pki, Some("dc2")), &root).unwrap(),
        )
        .await
        .unwrap();
        let mut other_cluster = BridgeClient::new(ch);
        for _ in 0..APP_REFUSALS {
            let e = other_cluster
                .key_list(KeyListRequest {
                    missing_only: false,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        }
        flooding.store(false, Ordering::Release);
        (outcomes, member.await.unwrap())
    });

    // SIGTERM: the bridge writes what it still counts, then exits.
    cluster.stop_bridge().unwrap();
    rt.block_on(async {
        let db = MetadataDb::connect(&cluster.db_url).await.unwrap();
        let added = db.history(before, 100_000).await.unwrap();
        let reached = outcomes
            .iter()
            .filter(|(_, a)| *a == Attempt::ReachedApplication)
            .count();
        eprintln!(
            "flood: {} attempts, {reached} reached the application; {APP_REFUSALS} refused \
             calls; {} history rows added; {served_mid_flood} authorised calls served meanwhile",
            outcomes.len(),
            added.len()
        );
        assert_eq!(outcomes.len(), ATTEMPTS);
        assert_eq!(
            reached, 0,
            "{reached} of {ATTEMPTS} strangers reached the application"
        );
        for (kind, a) in &outcomes {
            // Self-signed: no issuer. Another PKI with our names: its issuers are found by
            // name and their signatures fail against the pinned Root.
            let alert = [AlertDescription::UnknownCA, AlertDescription::DecryptError][*kind];
            assert_eq!(*a, Attempt::RefusedInHandshake(alert));
        }
        assert!(
            served_mid_flood > 0,
            "no authorised call was served during the flood"
        );
        let summaries: Vec<RefusalSummary> = added
            .iter()
            .map(|e| {
                assert_eq!(e.kind, REFUSAL_SUMMARY_KIND, "one row per attempt: {e:?}");
                RefusalSummary::from_entry(e).unwrap().unwrap()
            })
            .collect();
        let total = |source: &str, reason: &str| -> u64 {
            summaries
                .iter()
                .filter(|s| s.source == source && s.reason == reason)
                .map(|s| s.count)
                .sum()
        };
        assert_eq!(total("bridge:tls", "unknown_issuer"), (ATTEMPTS / 2) as u64);
        assert_eq!(total("bridge:tls", "bad_signature"), (ATTEMPTS / 2) as u64);
        assert_eq!(total("bridge:app", "wrong_cluster"), APP_REFUSALS as u64);
        // Three kinds of refusal; each kind gets its first row at once, then at most one per
        // interval, and one when the bridge stops.
        for kind in ["unknown_issuer", "bad_signature", "wrong_cluster"] {
            let of_kind: Vec<_> = summaries.iter().filter(|s| s.reason == kind).collect();
            let span = of_kind.last().unwrap().last_seen_ms - of_kind[0].first_seen_ms;
            let bound = 2 + usize::try_from(span / SUMMARY_INTERVAL_MS).unwrap();
            assert!(of_kind.len() <= bound, "{kind}: {of_kind:?}");
        }
        assert!(
            added.len() <= 12,
            "{} history rows for {} refusals",
            added.len(),
            ATTEMPTS + APP_REFUSALS
        );
        let wrong = summaries
            .iter()
            .find(|s| s.reason == "wrong_cluster")
            .unwrap();
        assert!(wrong.example.contains("key-list"), "{wrong:?}");
        assert!(wrong.example.contains("dc2"), "{wrong:?}");
        assert!(db.verify().await.unwrap().is_ok());
    });
}
