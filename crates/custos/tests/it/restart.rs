//! Crash and restart of the TEE core process: every acknowledged key comes back with the
//! right sealing key; a wrong or badly stored key refuses to start with a clear error.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;
use custos::tee_process::{KeyArg, SpawnError, TeeProcess};
use custos_wire::protocol::{Request, Response};

#[test]
fn kill_9_and_restart_restores_every_acknowledged_key() {
    let mut fx = Fixture::new();
    let mut acknowledged = Vec::new();
    for i in 0..10u8 {
        acknowledged.push(fx.create_wallet(1 + i % 2, &["alice", "bob"]));
    }
    for i in 0..5u8 {
        acknowledged.push(fx.import_seed(&[i; 32], 1).unwrap());
    }
    let pid = fx.tee.process.pid().unwrap();
    fx.tee.crash_and_restart();
    assert_ne!(fx.tee.process.pid().unwrap(), pid);

    let mut keys = fx.tee.keys();
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    acknowledged.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    assert_eq!(keys, acknowledged);
    // Identity survives too: same D (the client still requires its signature), same cert.
    let status = fx.tee.status();
    assert!(status.device.unwrap().cert_fingerprint.is_some());
    assert!(status.corrupt_records.is_empty());
    for w in &acknowledged {
        let Response::Signature(sig) = fx
            .sign(&w.key_id, &[1, 2], [5; 32], &["alice", "bob"])
            .unwrap()
        else {
            panic!("expected a signature");
        };
        verify_independently(
            &sig,
            &[5; 32],
            &child_public_key(&mut fx.tee, &w.key_id, &[1, 2]),
        );
    }
}

#[test]
fn wrong_sealing_key_refuses_to_start() {
    let mut fx = Fixture::new();
    fx.create_wallet(1, &["alice"]);
    fx.tee.process.kill();
    let wrong = fx.pki.path().join("wrong.key");
    custos_tee_host::sealed::generate_key_file(&wrong).unwrap();
    let err = TeeProcess::start(
        &exe(),
        &fx.pki.path().join("w.sock"),
        &fx.tee.process.store,
        KeyArg::File(wrong),
    )
    .err()
    .expect("must refuse");
    let SpawnError::Exited { stderr, .. } = &err else {
        panic!("{err}")
    };
    assert!(stderr.contains("wrong sealing key"), "{stderr}");
    // A passphrase offered for a key-file store is named as such.
    let err = TeeProcess::start(
        &exe(),
        &fx.pki.path().join("w.sock"),
        &fx.tee.process.store,
        KeyArg::Passphrase("hunter2".into()),
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("not a passphrase"), "{err}");
    // The right key still opens it.
    fx.tee.crash_and_restart();
    assert_eq!(fx.tee.keys().len(), 1);
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let pki = Pki::new();
    let key = pki.path().join("loose.key");
    custos_tee_host::sealed::generate_key_file(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = TeeProcess::start(
        &exe(),
        &pki.path().join("l.sock"),
        &pki.path().join("l-store"),
        KeyArg::File(key),
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn passphrase_sealed_store_survives_restart_and_rejects_wrong_passphrase() {
    let pki = Pki::new();
    let sock = pki.path().join("p.sock");
    let store = pki.path().join("p-store");
    let mut tee = TeeProcess::start(
        &exe(),
        &sock,
        &store,
        KeyArg::Passphrase("correct horse".into()),
    )
    .unwrap();
    let mut client = tee.client().unwrap();
    custos::ops::provision(&mut client, &pki.pki, CLUSTER, "pnode").unwrap();
    drop(client);
    tee.kill();
    let err = TeeProcess::start(
        &exe(),
        &sock,
        &store,
        KeyArg::Passphrase("wrong horse".into()),
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("wrong sealing key"), "{err}");
    tee.restart().unwrap();
    let mut client = tee.client().unwrap();
    let Response::Status(s) = client.call(&Request::Status).unwrap() else {
        panic!()
    };
    assert_eq!(s.device.unwrap().node, "pnode");
}

#[test]
fn tee_refuses_a_second_server_on_the_same_socket() {
    let fx = Fixture::new();
    let err = TeeProcess::start(
        &exe(),
        &fx.tee.process.socket,
        &fx.pki.path().join("other-store"),
        KeyArg::File(fx.tee.key_file.clone()),
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("already serving"), "{err}");
}
