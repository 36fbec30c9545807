//! TEST ONLY: a TEE core stand-in on a Unix socket that answers each request with what a
//! script says, framed and signed the way the TEE signs (so the node's pool checks it).

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use custos_wire::frame::{read_frame, write_frame, Kind, MAX_REQUEST};
use custos_wire::protocol::{
    decode_request, response_transcript, DeviceInfo, Outcome, Request, Response, SignedResponse,
    Status,
};
use rcgen::KeyPair;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

/// What the stand-in answers to everything but `Status`.
pub type Script = Arc<dyn Fn(&Request) -> Outcome + Send + Sync>;

/// A listening stand-in; its socket lives as long as it does.
pub struct FakeTee {
    _dir: tempfile::TempDir,
    /// Socket to connect a [`crate::TeePool`] to.
    pub socket: PathBuf,
    /// Connections the stand-in has closed after their last answer.
    pub closed: Arc<AtomicUsize>,
}

impl FakeTee {
    /// Serves: `Status` names `device`'s key as D; every answer is signed with `signer`
    /// (`device` for an honest TEE).
    pub fn start(device: &KeyPair, signer: &KeyPair, script: Script) -> Self {
        Self::start_closing(device, signer, script, usize::MAX)
    }

    /// As [`FakeTee::start`], closing each connection after `answers` answers, as a TEE
    /// process that restarted closed its clients' connections.
    pub fn start_closing(
        device: &KeyPair,
        signer: &KeyPair,
        script: Script,
        answers: usize,
    ) -> Self {
        let closed = Arc::new(AtomicUsize::new(0));
        let closed_c = closed.clone();
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("tee.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let public_key = device.public_key_raw().to_vec();
        let pkcs8 = signer.serialize_der();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (public_key, pkcs8, script, closed) = (
                    public_key.clone(),
                    pkcs8.clone(),
                    script.clone(),
                    closed_c.clone(),
                );
                std::thread::spawn(move || {
                    serve(stream, &public_key, &pkcs8, &*script, answers);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        FakeTee {
            _dir: dir,
            socket,
            closed,
        }
    }
}

fn serve(
    mut stream: UnixStream,
    public_key: &[u8],
    pkcs8: &[u8],
    script: &(dyn Fn(&Request) -> Outcome + Send + Sync),
    answers: usize,
) {
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng).unwrap();
    for _ in 0..answers {
        let Ok((_, request)) = read_frame(&mut stream, MAX_REQUEST) else {
            return;
        };
        let outcome = match decode_request(&request) {
            Ok(Request::Status) => Ok(Response::Status(Status {
                protocol_version: 0,
                platform: "fake".into(),
                root_fingerprint: None,
                device: Some(DeviceInfo {
                    cluster: "dc1".into(),
                    node: "node1".into(),
                    public_key: public_key.to_vec(),
                    cert_fingerprint: None,
                }),
                wallets: 0,
                corrupt_records: vec![],
            })),
            Ok(r) => script(&r),
            Err(e) => Err(e),
        };
        let body = postcard::to_allocvec(&outcome).unwrap();
        let signature = key
            .sign(&rng, &response_transcript(&request, &body))
            .unwrap()
            .as_ref()
            .to_vec();
        let signed = SignedResponse {
            body,
            signature: Some(signature),
        };
        let payload = postcard::to_allocvec(&signed).unwrap();
        if write_frame(&mut stream, Kind::Response, &payload).is_err() {
            return;
        }
    }
}
