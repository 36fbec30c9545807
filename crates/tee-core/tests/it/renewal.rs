//! Device certificate renewal (issue 12, item 4): a provisioned core answers
//! `Request::DeviceCsr` with a CSR for the D it already holds, so the renewed certificate
//! certifies the same key (and the node keeps its membership); a core without D refuses.

use custos_pki::{der_to_pem, pem_to_der, DeviceChain, TrustRoot};
use custos_tee_core::TeeCore;
use custos_test_kit::{call_core as call, MemPlatform};
use custos_wire::protocol::{CertChain, Request, Response, TeeError};

const CLUSTER: &str = "dc1";

fn root(pki: &custos_test_kit::Pki) -> TrustRoot {
    TrustRoot::from_der(&pem_to_der(&pki.pki.root_pem().unwrap(), "root").unwrap()).unwrap()
}

fn chain_of(core: &mut TeeCore<MemPlatform>) -> DeviceChain {
    match call(core, &Request::DeviceChain) {
        Ok(Response::DeviceChain(c)) => c.into(),
        other => panic!("expected the device chain, got {other:?}"),
    }
}

#[test]
fn a_renewal_csr_certifies_the_same_device_key() {
    let pki = custos_test_kit::Pki::with_clusters(&[CLUSTER]);
    let mut core = pki.node(CLUSTER, "node1");
    let old_chain = chain_of(&mut core);
    let now = custos_pki::clock::now_unix();
    let old = root(&pki)
        .verify_device(&old_chain, Some(CLUSTER), now)
        .unwrap();

    let Ok(Response::DeviceCsr { csr, public_key }) = call(&mut core, &Request::DeviceCsr) else {
        panic!("expected a CSR");
    };
    assert_eq!(
        public_key, old.public_key,
        "the CSR is for another key than D"
    );

    // The CA takes only the CSR's key and name: the new certificate shows what it carried.
    let cert = pki
        .pki
        .sign_device_csr(CLUSTER, &der_to_pem(&csr, "CERTIFICATE REQUEST"))
        .unwrap();
    let new_chain = DeviceChain {
        device: pem_to_der(&cert, "device certificate").unwrap(),
        ..old_chain.clone()
    };
    let new = root(&pki)
        .verify_device(&new_chain, Some(CLUSTER), now)
        .unwrap();
    assert_eq!(new.public_key, old.public_key);
    assert_eq!(
        (new.node.as_str(), new.cluster.as_str()),
        ("node1", CLUSTER)
    );
    assert_ne!(
        new.fingerprint, old.fingerprint,
        "a new certificate was issued"
    );

    // Asking does not change what is installed; installing does, for the same D.
    assert_eq!(chain_of(&mut core), old_chain);
    let chain = CertChain::from(new_chain.clone());
    let Ok(Response::DeviceCertInstalled(info)) = call(
        &mut core,
        &Request::InstallDeviceCert {
            device: chain.device,
            cluster_ca: chain.cluster_ca,
            device_ca: chain.device_ca,
        },
    ) else {
        panic!("the renewed certificate is installed");
    };
    assert_eq!(info.public_key, old.public_key);
    assert_eq!(info.cert_fingerprint, Some(new.fingerprint));
    assert_eq!(chain_of(&mut core), new_chain);
}

#[test]
fn a_core_without_a_device_key_refuses_a_renewal_csr() {
    let pki = custos_test_kit::Pki::with_clusters(&[CLUSTER]);
    let mut core = TeeCore::open(MemPlatform::default(), "memory").unwrap();
    let refused = |core: &mut TeeCore<MemPlatform>| match call(core, &Request::DeviceCsr) {
        Err(TeeError::NotProvisioned(why)) => why,
        other => panic!("expected NotProvisioned, got {other:?}"),
    };
    assert!(refused(&mut core).contains("no device key D"));
    let root_cert = pem_to_der(&pki.pki.root_pem().unwrap(), "root").unwrap();
    call(&mut core, &Request::PinRoot { root_cert }).unwrap();
    assert!(refused(&mut core).contains("no device key D"));
}
