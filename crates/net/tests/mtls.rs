//! Mutual TLS between Custos parties on 127.0.0.1, at the tokio-rustls level and through a
//! real tonic server and channel.

mod common;

use std::sync::{Arc, Mutex};

use common::{ask, now_unix, self_signed_device, start_server, Device, Pki, WhoAmI, GUARD};
use custos_net::{
    client_config, connect, connect_lazy, is_tls13_certificate_verify_message, serve_tls,
    server_config, NetError, RemoteSignFn, TlsIdentity, TLS13_CLIENT_CONTEXT, TLS13_SERVER_CONTEXT,
};
use futures::StreamExt;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tonic::Code;

type SignLog = Arc<Mutex<Vec<Vec<u8>>>>;

/// Stands in for the TEE core: holds the device key, records what it is asked to sign, and
/// refuses anything that is not a TLS 1.3 CertificateVerify input (as the real TEE does).
fn tee_signer(pkcs8: &[u8], log: SignLog) -> RemoteSignFn {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng).unwrap();
    Arc::new(move |msg: &[u8]| {
        log.lock().unwrap().push(msg.to_vec());
        if !is_tls13_certificate_verify_message(msg) {
            return Err("TEE refuses: not a TLS 1.3 CertificateVerify message".into());
        }
        key.sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| e.to_string())
    })
}

fn context_of(msg: &[u8]) -> &[u8] {
    &msg[64..64 + TLS13_SERVER_CONTEXT.len()]
}

/// A rustls client that presents no certificate at all (not something this crate builds).
fn anonymous_client(root_der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root_der.to_vec().into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// Runs a handshake as `client` against `addr` and reports whether the server let it use the
/// connection. In TLS 1.3 the client finishes its side before the server has checked the
/// client certificate, so a refusal may only show on the first read.
async fn raw_session(
    addr: std::net::SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // The server under test never writes first; a clean session therefore blocks here
    // until the caller's guard, so ask the server to talk by sending a byte then read.
    tls.write_all(b"x").await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1];
    match tls.read(&mut buf).await {
        Ok(0) => Err("closed by server".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_round_trip_with_local_keys_and_app_level_verification() {
    let pki = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let bridge = pki.device("dc1", "client1");
    let svc = WhoAmI::new(pki.trust_root(), "dc1");
    let addr = start_server(&node.local_identity(), &pki.root_der, svc.clone()).await;

    let config = client_config(&bridge.local_identity(), &pki.root_der).unwrap();
    let channel = timeout(GUARD, connect(addr, "node1.dc1.custos", config))
        .await
        .unwrap()
        .unwrap();
    // Several calls share the one authenticated connection.
    for i in 0..3 {
        let reply = timeout(GUARD, ask(channel.clone(), &format!("call {i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, format!("client1.dc1 via 127.0.0.1 asked call {i}"));
    }
    assert!(svc.refusals.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_stream_exposes_the_proven_client_chain() {
    let pki = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let peer = pki.device("dc1", "node2");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = serve_tls(
        listener,
        server_config(&node.local_identity(), &pki.root_der).unwrap(),
    )
    .await;

    let config = client_config(&peer.local_identity(), &pki.root_der).unwrap();
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("node1.dc1.custos").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        // The server's chain as the client saw it.
        conn.peer_certificates().unwrap().len()
    });

    let conn = timeout(GUARD, incoming.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let info = conn.peer().clone();
    assert_eq!(info.remote_addr.ip().to_string(), "127.0.0.1");
    assert_eq!(info.certs, peer.chain);
    assert_eq!(
        tonic::transport::server::Connected::connect_info(&conn),
        info
    );
    let chain = info.device_chain().unwrap();
    let id = pki
        .trust_root()
        .verify_device(&chain, Some("dc1"), now_unix())
        .unwrap();
    assert_eq!((id.node.as_str(), id.cluster.as_str()), ("node2", "dc1"));
    assert_eq!(timeout(GUARD, client).await.unwrap().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_signers_receive_only_certificate_verify_messages() {
    let pki = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let peer = pki.device("dc1", "node2");
    let server_log = SignLog::default();
    let client_log = SignLog::default();
    let server_id = TlsIdentity::from_remote_signer(
        node.chain.clone(),
        tee_signer(&node.pkcs8, server_log.clone()),
    )
    .unwrap();
    let client_id = TlsIdentity::from_remote_signer(
        peer.chain.clone(),
        tee_signer(&peer.pkcs8, client_log.clone()),
    )
    .unwrap();
    let svc = WhoAmI::new(pki.trust_root(), "dc1");
    let addr = start_server(&server_id, &pki.root_der, svc).await;

    // Two separate connections: no session resumption, so each proves its key afresh.
    for _ in 0..2 {
        let config = client_config(&client_id, &pki.root_der).unwrap();
        let channel = timeout(GUARD, connect(addr, "node1.dc1.custos", config))
            .await
            .unwrap()
            .unwrap();
        let reply = timeout(GUARD, ask(channel, "sync")).await.unwrap().unwrap();
        assert_eq!(reply, "node2.dc1 via 127.0.0.1 asked sync");
    }

    let server_log = server_log.lock().unwrap();
    let client_log = client_log.lock().unwrap();
    assert_eq!(server_log.len(), 2, "one server signature per handshake");
    assert_eq!(client_log.len(), 2, "one client signature per handshake");
    for m in server_log.iter() {
        assert!(is_tls13_certificate_verify_message(m));
        assert_eq!(context_of(m), TLS13_SERVER_CONTEXT);
    }
    for m in client_log.iter() {
        assert!(is_tls13_certificate_verify_message(m));
        assert_eq!(context_of(m), TLS13_CLIENT_CONTEXT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_remote_signers_fail_the_handshake_but_not_the_server() {
    let pki = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let bridge = pki.device("dc1", "client1");
    let other = pki.device("dc1", "node3");
    let addr = start_server(
        &node.local_identity(),
        &pki.root_der,
        WhoAmI::new(pki.trust_root(), "dc1"),
    )
    .await;

    // A TEE that refuses, and a TEE holding a different key than the certificate's.
    let refusing: RemoteSignFn = Arc::new(|_| Err("TEE not provisioned".into()));
    let wrong_key = tee_signer(&other.pkcs8, SignLog::default());
    for signer in [refusing, wrong_key] {
        let id = TlsIdentity::from_remote_signer(bridge.chain.clone(), signer).unwrap();
        let config = client_config(&id, &pki.root_der).unwrap();
        let result = timeout(GUARD, async {
            let channel = connect(addr, "node1.dc1.custos", config).await?;
            ask(channel, "x")
                .await
                .map_err(|s| NetError::InvalidIdentity(s.to_string()))
        })
        .await
        .unwrap();
        assert!(
            result.is_err(),
            "a client without a valid signature got through"
        );
    }

    // The server is still accepting.
    let config = client_config(&bridge.local_identity(), &pki.root_der).unwrap();
    let channel = timeout(GUARD, connect(addr, "node1.dc1.custos", config))
        .await
        .unwrap()
        .unwrap();
    assert!(timeout(GUARD, ask(channel, "x")).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_self_signed_and_other_cluster_clients_are_refused_by_the_application() {
    let pki = Pki::new(&["dc1", "dc2"]);
    let foreign = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let svc = WhoAmI::new(pki.trust_root(), "dc1");
    let addr = start_server(&node.local_identity(), &pki.root_der, svc.clone()).await;

    let cases: [(Device, &str); 3] = [
        // One self-signed certificate that imitates a device (same SAN and EKUs).
        (self_signed_device("evil", "dc1"), "exactly 3"),
        // A complete, well-formed chain from another PKI with the same names.
        (foreign.device("dc1", "node2"), "chain rejected"),
        // A genuine device of another cluster.
        (pki.device("dc2", "node1"), "expected \"dc1\""),
    ];
    for (device, reason) in cases {
        // The client trusts the real Root, so it accepts the server; the server's TLS layer
        // accepts the client (it proved its key), and the application refuses it.
        let config = client_config(&device.local_identity(), &pki.root_der).unwrap();
        let channel = timeout(GUARD, connect(addr, "node1.dc1.custos", config))
            .await
            .unwrap()
            .expect("TLS must complete: chain judgement is the application's");
        let status = timeout(GUARD, ask(channel, "x"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(reason),
            "{:?} does not explain {reason:?}",
            status.message()
        );
    }
    assert_eq!(svc.refusals.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_of_another_pki_or_expecting_another_name_cannot_verify_the_server() {
    let pki = Pki::new(&["dc1"]);
    let foreign = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let addr = start_server(
        &node.local_identity(),
        &pki.root_der,
        WhoAmI::new(pki.trust_root(), "dc1"),
    )
    .await;

    let stranger = foreign.device("dc1", "client1");
    let config = client_config(&stranger.local_identity(), &foreign.root_der).unwrap();
    let err = timeout(GUARD, connect(addr, "node1.dc1.custos", config))
        .await
        .unwrap()
        .unwrap_err();
    let NetError::Connect { reason, .. } = &err else {
        panic!("unexpected error {err:?}")
    };
    // Both PKIs name their root "Custos Root CA", so webpki finds the foreign root by name
    // and rejects the Device CA's signature under it.
    assert!(reason.contains("invalid peer certificate"), "{reason}");

    let bridge = pki.device("dc1", "client1");
    let config = client_config(&bridge.local_identity(), &pki.root_der).unwrap();
    let err = timeout(GUARD, connect(addr, "node2.dc1.custos", config.clone()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // Same connection without the name mistake works.
    assert!(timeout(GUARD, connect(addr, "node1.dc1.custos", config))
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused_and_the_stream_goes_on() {
    let pki = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let peer = pki.device("dc1", "node2");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = serve_tls(
        listener,
        server_config(&node.local_identity(), &pki.root_der).unwrap(),
    )
    .await;

    // Two refused clients first: no certificate, then garbage instead of a ClientHello.
    let err = timeout(
        GUARD,
        raw_session(addr, "node1.dc1.custos", anonymous_client(&pki.root_der)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");
    let mut junk = TcpStream::connect(addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = timeout(GUARD, junk.read_to_end(&mut sink)).await.unwrap();

    // Then a legitimate one: it is the first (and only) connection the stream yields.
    let config = client_config(&peer.local_identity(), &pki.root_der).unwrap();
    let client = tokio::spawn(raw_session(addr, "node1.dc1.custos", config));
    let mut conn = timeout(GUARD, incoming.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer().certs, peer.chain);
    // Answer the client's byte so its session ends cleanly.
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).await.unwrap();
    conn.write_all(&b).await.unwrap();
    conn.flush().await.unwrap();
    assert_eq!(timeout(GUARD, client).await.unwrap().unwrap(), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_block_other_clients() {
    let pki = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let bridge = pki.device("dc1", "client1");
    let addr = start_server(
        &node.local_identity(),
        &pki.root_der,
        WhoAmI::new(pki.trust_root(), "dc1"),
    )
    .await;
    // Connected but silent: its handshake waits (up to the server's handshake timeout).
    let _stalled: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(TcpStream::connect(addr).await.unwrap());
        }
        v
    };
    let config = client_config(&bridge.local_identity(), &pki.root_der).unwrap();
    let channel = timeout(GUARD, connect(addr, "node1.dc1.custos", config))
        .await
        .unwrap()
        .unwrap();
    assert!(timeout(GUARD, ask(channel, "x")).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_channel_to_a_down_node_fails_and_the_caller_fails_over() {
    let pki = Pki::new(&["dc1"]);
    let node = pki.device("dc1", "node1");
    let bridge = pki.device("dc1", "client1");
    let addr = start_server(
        &node.local_identity(),
        &pki.root_der,
        WhoAmI::new(pki.trust_root(), "dc1"),
    )
    .await;
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed again: nothing listens there now
    let config = client_config(&bridge.local_identity(), &pki.root_der).unwrap();
    let nodes = [(down, "node9.dc1.custos"), (addr, "node1.dc1.custos")];
    // A client for every node can be created, the dead one included.
    let channels: Vec<_> = nodes
        .iter()
        .map(|(a, n)| connect_lazy(*a, n, config.clone()).unwrap())
        .collect();
    let mut answered = None;
    let mut failures = Vec::new();
    for (i, ch) in channels.into_iter().enumerate() {
        match timeout(GUARD, ask(ch, "x")).await.unwrap() {
            Ok(reply) => {
                answered = Some((i, reply));
                break;
            }
            Err(status) => failures.push((status.code(), status.message().to_string())),
        }
    }
    // The refusal names the node and the cause, for the caller's log.
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, Code::Unavailable);
    assert!(
        failures[0].1.contains(&format!("cannot connect to {down}")),
        "{}",
        failures[0].1
    );
    assert_eq!(
        answered,
        Some((1, "client1.dc1 via 127.0.0.1 asked x".to_string()))
    );
}

#[tokio::test]
async fn configuration_errors_are_reported() {
    let pki = Pki::new(&["dc1"]);
    let a = pki.device("dc1", "node1");
    let b = pki.device("dc1", "node2");
    assert!(matches!(
        TlsIdentity::from_local_key(a.chain.clone(), &b.pkcs8),
        Err(NetError::KeyMismatch)
    ));
    assert!(matches!(
        TlsIdentity::from_local_key(a.chain.clone(), b"not a key"),
        Err(NetError::InvalidKey(_))
    ));
    let id = a.local_identity();
    assert_eq!(id.chain().len(), 3);
    // Only a Custos Root CA may be pinned: the Device CA is not one.
    let device_ca = a.chain[2].clone();
    assert!(matches!(
        server_config(&id, &device_ca),
        Err(NetError::InvalidRootCa(_))
    ));
    assert!(matches!(
        client_config(&id, &device_ca),
        Err(NetError::InvalidRootCa(_))
    ));
    let config = client_config(&id, &pki.root_der).unwrap();
    let addr = "127.0.0.1:9".parse().unwrap();
    assert!(matches!(
        connect_lazy(addr, "not a name!", config),
        Err(NetError::InvalidServerName(_))
    ));
}
