//! Shared fixtures: a Custos PKI in a temp dir, device identities, and a hand-written tonic
//! service (no protoc) whose handler does what a Custos server does with a peer: read the
//! presented chain and verify it with `TrustRoot::verify_device`.
#![allow(dead_code)] // each test binary uses a different subset

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_net::{peer_info, serve_tls, server_config, TlsIdentity};
use custos_pki::{pem_to_der, PkiDir, TrustRoot};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use tonic::body::BoxBody;
use tonic::codec::ProstCodec;
use tonic::codegen::http;
use tonic::codegen::BoxFuture;
use tonic::transport::Channel;
use tonic::Status;

/// Guard against hangs only (never an assertion about speed).
pub const GUARD: Duration = Duration::from_secs(60);

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Custos PKI (Root, Device CA, Cluster CAs) in a temporary directory.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub dir: PkiDir,
    pub root_der: Vec<u8>,
}

/// A device certificate chain [device, Cluster CA, Device CA] and its PKCS#8 key.
pub struct Device {
    pub chain: Vec<Vec<u8>>,
    pub pkcs8: Vec<u8>,
}

impl Device {
    pub fn local_identity(&self) -> TlsIdentity {
        TlsIdentity::from_local_key(self.chain.clone(), &self.pkcs8).unwrap()
    }
}

impl Pki {
    pub fn new(clusters: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path().join("pki"));
        dir.init().unwrap();
        for c in clusters {
            dir.create_cluster_ca(c).unwrap();
        }
        let root_der = pem_to_der(&dir.root_pem().unwrap(), "root").unwrap();
        Pki {
            _dir: tmp,
            dir,
            root_der,
        }
    }

    pub fn trust_root(&self) -> TrustRoot {
        TrustRoot::from_der(&self.root_der).unwrap()
    }

    /// Issues a device certificate the way a node gets one: a CSR whose CN is the node name,
    /// signed by the cluster's Cluster CA.
    pub fn device(&self, cluster: &str, node: &str) -> Device {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert_pem = self.dir.sign_device_csr(cluster, &csr).unwrap();
        let chain = vec![
            pem_to_der(&cert_pem, "device").unwrap(),
            pem_to_der(&self.dir.cluster_ca_pem(cluster).unwrap(), "cluster CA").unwrap(),
            pem_to_der(&self.dir.device_ca_pem().unwrap(), "device CA").unwrap(),
        ];
        Device {
            chain,
            pkcs8: key.serialize_der(),
        }
    }
}

/// A self-signed certificate that looks like a device certificate (same SAN, EKUs) but
/// chains to nothing.
pub fn self_signed_device(node: &str, cluster: &str) -> Device {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![format!("{node}.{cluster}.custos")]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node.to_string());
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).unwrap();
    Device {
        chain: vec![cert.der().to_vec()],
        pkcs8: key.serialize_der(),
    }
}

/// The single message of the test service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Text {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// A minimal gRPC service written by hand: `custos.test.WhoAmI/Ask` answers
/// "<node>.<cluster> via <ip>" for a peer whose chain passes `verify_device` for the expected
/// cluster, and PERMISSION_DENIED with the reason otherwise (and records the reason, as a
/// server would log it).
#[derive(Clone)]
pub struct WhoAmI {
    pub root: TrustRoot,
    pub cluster: String,
    pub refusals: Arc<Mutex<Vec<String>>>,
}

impl WhoAmI {
    pub fn new(root: TrustRoot, cluster: &str) -> Self {
        WhoAmI {
            root,
            cluster: cluster.to_string(),
            refusals: Arc::default(),
        }
    }

    // Status is what a tonic handler returns; boxing it here would only obscure the test.
    #[allow(clippy::result_large_err)]
    fn answer(&self, req: &tonic::Request<Text>) -> Result<Text, Status> {
        let peer = peer_info(req).ok_or_else(|| Status::internal("no peer info"))?;
        match peer.verify_device(&self.root, Some(&self.cluster), now_unix()) {
            Ok(id) => Ok(Text {
                text: format!(
                    "{}.{} via {} asked {}",
                    id.node,
                    id.cluster,
                    peer.remote_addr.ip(),
                    req.get_ref().text
                ),
            }),
            Err(e) => {
                self.refusals.lock().unwrap().push(e.to_string());
                Err(Status::permission_denied(e.to_string()))
            }
        }
    }
}

impl tonic::server::NamedService for WhoAmI {
    const NAME: &'static str = "custos.test.WhoAmI";
}

struct Ask(WhoAmI);

impl tonic::server::UnaryService<Text> for Ask {
    type Response = Text;
    type Future = BoxFuture<tonic::Response<Text>, Status>;

    fn call(&mut self, req: tonic::Request<Text>) -> Self::Future {
        let out = self.0.answer(&req).map(tonic::Response::new);
        Box::pin(async move { out })
    }
}

impl tower::Service<http::Request<BoxBody>> for WhoAmI {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != "/custos.test.WhoAmI/Ask" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Text, Text>::default());
            Ok(grpc.unary(Ask(this), req).await)
        })
    }
}

/// Calls `WhoAmI/Ask` on a channel.
pub async fn ask(channel: Channel, text: &str) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/custos.test.WhoAmI/Ask");
    let reply = grpc
        .unary(
            tonic::Request::new(Text { text: text.into() }),
            path,
            ProstCodec::<Text, Text>::default(),
        )
        .await?;
    Ok(reply.into_inner().text)
}

/// Starts a tonic server with the WhoAmI service over `serve_tls` on 127.0.0.1.
pub async fn start_server(identity: &TlsIdentity, root_der: &[u8], svc: WhoAmI) -> SocketAddr {
    start_server_with(server_config(identity, root_der).unwrap(), svc).await
}

/// [`start_server`] with a server configuration of the test's choice.
pub async fn start_server_with(config: Arc<rustls::ServerConfig>, svc: WhoAmI) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = serve_tls(listener, config).await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    addr
}
