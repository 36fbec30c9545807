//! TEST ONLY: a TEE core stand-in on a Unix socket that answers each request with what a
//! script says, framed and signed the way the TEE signs (so the node's pool checks it).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use custos_wire::frame::{encode_frame, read_frame, Kind, MAX_REQUEST};
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
        Self::start_with(device, signer, script, Conduct::default())
    }

    /// As [`FakeTee::start`], treating each connection as `conduct` says.
    pub fn start_with(
        device: &KeyPair,
        signer: &KeyPair,
        script: Script,
        conduct: Conduct,
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
                    serve(stream, &public_key, &pkcs8, &*script, conduct);
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

/// How the stand-in treats each connection.
#[derive(Clone, Copy)]
pub struct Conduct {
    /// Requests it runs before it closes the connection (as a TEE process that restarted
    /// closed its clients' connections).
    pub requests: usize,
    /// Copies of each answer but `Status`'s, sent in one write (more than one: a TEE gone
    /// wrong).
    pub copies: usize,
    /// Requests but `Status` answered on a connection before the stand-in falls silent: it
    /// runs each later one and does not answer it (a TEE that died, or hung, mid-request).
    pub answers: usize,
    /// Once silent, holds the connection open until the client lets go (a hung TEE)
    /// rather than closing it (a dead one).
    pub hang: bool,
}

impl Default for Conduct {
    fn default() -> Self {
        Conduct {
            requests: usize::MAX,
            copies: 1,
            answers: usize::MAX,
            hang: false,
        }
    }
}

fn serve(
    mut stream: UnixStream,
    public_key: &[u8],
    pkcs8: &[u8],
    script: &(dyn Fn(&Request) -> Outcome + Send + Sync),
    conduct: Conduct,
) {
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng).unwrap();
    let mut answered = 0;
    for _ in 0..conduct.requests {
        let Ok((_, request)) = read_frame(&mut stream, MAX_REQUEST) else {
            return;
        };
        let decoded = decode_request(&request);
        // The pool's first contact (its status, which pins D) is answered whatever the
        // conduct.
        let status = matches!(decoded, Ok(Request::Status));
        let outcome = match decoded {
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
        if !status && answered >= conduct.answers {
            if conduct.hang {
                // Returns once the client closes its end.
                let _ = stream.read(&mut [0u8; 1]);
            }
            return;
        }
        answered += usize::from(!status);
        let frame = encode_frame(Kind::Response, &postcard::to_allocvec(&signed).unwrap());
        let copies = if status { 1 } else { conduct.copies };
        if stream.write_all(&frame.repeat(copies)).is_err() {
            return;
        }
    }
}
