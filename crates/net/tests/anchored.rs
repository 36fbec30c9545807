//! `server_config_anchored`: a client whose chain does not reach the pinned Root fails in
//! the handshake (the application never sees it), the observer hears why and of which
//! certificate, and clients of the PKI still reach the application, which keeps judging
//! roles and clusters.

mod common;

use std::sync::{Arc, Mutex};

use common::{ask, self_signed_device, start_server_with, Device, Pki, WhoAmI, GUARD};
use custos_net::{client_config, connect, server_config_anchored, TlsRefusal, TlsRefusalReason};
use rustls::pki_types::ServerName;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tonic::Code;

/// How a client fared against the server, as the client sees it.
#[derive(Debug, PartialEq, Eq)]
enum Session {
    /// The server refused the handshake with this alert.
    RefusedWithAlert(AlertDescription),
    /// The server let the client use the connection (it answered).
    Served,
}

/// Handshake as `device`, then write a byte and read: in TLS 1.3 the client finishes its
/// side before the server has judged the client certificate, so a refusal shows on read.
async fn session(addr: std::net::SocketAddr, device: &Device, root_der: &[u8]) -> Session {
    let config = client_config(&device.local_identity(), root_der).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("node1.dc1.custos").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    // gRPC's connection preface makes the (HTTP/2) server answer with its SETTINGS.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    match tls.read(&mut buf).await {
        Ok(n) if n > 0 => Session::Served,
        Ok(_) => panic!("server closed the connection without an alert"),
        Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => Session::RefusedWithAlert(*a),
            _ => panic!("unexpected read error {e:?}"),
        },
    }
}

fn sha256(der: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .try_into()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_that_do_not_reach_the_root_fail_in_the_handshake_and_are_observed() {
    let pki = Pki::new(&["dc1", "dc2"]);
    let foreign = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let svc = WhoAmI::new(pki.trust_root(), "dc1");
    let seen: Arc<Mutex<Vec<TlsRefusal>>> = Arc::default();
    let observer = {
        let seen = seen.clone();
        Arc::new(move |r: TlsRefusal| seen.lock().unwrap().push(r))
    };
    let config = server_config_anchored(&node.local_identity(), &pki.root_der, observer).unwrap();
    let addr = start_server_with(config, svc.clone()).await;

    let self_signed = self_signed_device("evil", "dc1");
    // A PKI with the same names: its CA certificates are found as issuers by name, and
    // their signatures do not verify against the pinned Root.
    let other_pki = foreign.device("dc1", "node2");
    let cases = [
        (
            &self_signed,
            AlertDescription::UnknownCA,
            TlsRefusalReason::UnknownIssuer,
        ),
        (
            &other_pki,
            AlertDescription::DecryptError,
            TlsRefusalReason::BadSignature,
        ),
    ];
    for (d, alert, _) in cases {
        let got = timeout(GUARD, session(addr, d, &pki.root_der))
            .await
            .unwrap();
        assert_eq!(got, Session::RefusedWithAlert(alert));
    }
    let expected: Vec<TlsRefusal> = cases
        .iter()
        .map(|(d, _, reason)| TlsRefusal {
            reason: *reason,
            leaf_sha256: Some(sha256(&d.chain[0])),
        })
        .collect();
    assert_eq!(*seen.lock().unwrap(), expected);
    // None of them reached the application.
    assert!(svc.refusals.lock().unwrap().is_empty());

    // A genuine device of another cluster reaches the application, which refuses it by name;
    // one of this cluster is served. Neither is a TLS refusal.
    let other_cluster = pki.device("dc2", "node1");
    let channel = connect(
        addr,
        "node1.dc1.custos",
        client_config(&other_cluster.local_identity(), &pki.root_der).unwrap(),
    )
    .await
    .unwrap();
    let status = timeout(GUARD, ask(channel, "x"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("expected \"dc1\""), "{status:?}");
    let member = pki.device("dc1", "node3");
    assert_eq!(
        timeout(GUARD, session(addr, &member, &pki.root_der))
            .await
            .unwrap(),
        Session::Served
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(svc.refusals.lock().unwrap().len(), 1);
}
