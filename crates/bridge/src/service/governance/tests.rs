//! The stored log at start: rows the bridge cannot account for stop it, naming the row.

use custos_wire::governance::{GovError, MemberRecord};
use custos_wire::protocol::RequestMeta;

use super::*;

const CLUSTER: &str = "dc1";

/// A genesis naming governor `[1; 32]` and a member without a certificate: well formed, never
/// approved.
fn unapproved_genesis() -> GovEntry {
    GovEntry {
        version: 0,
        prev: [0; 32],
        meta: RequestMeta {
            request_id: [7; 16],
            expires_at: 1,
        },
        change: GovChange::Genesis {
            governors: vec![[1; 32]],
            quorum: 1,
            members: vec![MemberRecord {
                node: "node1".into(),
                key_fingerprint: [2; 32],
                chain: Default::default(),
                evidence: Default::default(),
                admitted_at: 1,
            }],
            rules: Vec::new(),
        },
        approvals: Vec::new(),
    }
}

fn remove(version: u64) -> GovEntry {
    GovEntry {
        version,
        change: GovChange::Remove {
            key_fingerprint: [9; 32],
            reason: "lost".into(),
        },
        ..unapproved_genesis()
    }
}

#[test]
fn a_row_is_decoded_at_its_version_with_its_hash() {
    let e = remove(3);
    let row = row_of(CLUSTER, &e).unwrap();
    assert_eq!(decode_row(CLUSTER, &row).unwrap(), e);

    let garbage = GovernanceRow {
        entry: vec![0xff; 3],
        ..row.clone()
    };
    let err = decode_row(CLUSTER, &garbage).unwrap_err();
    assert!(
        matches!(err, GovernanceLoadError::Decode { version: 3, .. }),
        "{err}"
    );

    let moved = GovernanceRow {
        version: 4,
        ..row.clone()
    };
    let err = decode_row(CLUSTER, &moved).unwrap_err();
    assert!(
        matches!(
            err,
            GovernanceLoadError::Position {
                version: 4,
                found: 3
            }
        ),
        "{err}"
    );

    // The hash covers the cluster: a row of another cluster's log does not pass as ours.
    let err = decode_row("dc2", &row).unwrap_err();
    assert!(
        matches!(err, GovernanceLoadError::Hash { version: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("governance row 3"), "{err}");
}

#[test]
fn the_history_names_the_change_and_its_nodes() {
    assert_eq!(
        describe_change(&unapproved_genesis().change, None),
        ("genesis", vec!["node1".to_string()])
    );
    let (kind, named) = describe_change(&remove(1).change, None);
    assert_eq!(kind, "member-remove");
    assert_eq!(named, vec![format!("key {}", hex::encode([9u8; 32]))]);
}

fn root() -> (tempfile::TempDir, TrustRoot) {
    let dir = tempfile::tempdir().unwrap();
    let pki = custos_pki::PkiDir::new(dir.path().join("pki"));
    pki.init().unwrap();
    let der = pem_to_der(&pki.root_pem().unwrap(), "root").unwrap();
    (dir, TrustRoot::from_der(&der).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_log_that_does_not_verify_stops_the_bridge() {
    let (dir, root) = root();
    let url = custos_metadata::sqlite_url(&dir.path().join("m.db")).unwrap();
    let db = MetadataDb::connect(&url).await.unwrap();
    assert!(load_governance(&db, &root, CLUSTER, None)
        .await
        .unwrap()
        .is_none());

    db.append_governance(&[row_of(CLUSTER, &unapproved_genesis()).unwrap()])
        .await
        .unwrap();
    let err = load_governance(&db, &root, CLUSTER, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            BridgeError::Governance(GovernanceLoadError::Verify(GovError::Approvals {
                version: 0,
                ..
            }))
        ),
        "{err}"
    );

    // A pin is checked before the approvals: another genesis is named as such.
    let err = load_governance(&db, &root, CLUSTER, Some([5; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            BridgeError::Governance(GovernanceLoadError::Verify(GovError::WrongPin { .. }))
        ),
        "{err}"
    );
}

#[test]
fn a_pin_is_64_hex_digits() {
    let toml = format!(
        "cluster = \"dc1\"\nlisten = \"127.0.0.1:0\"\ncert = \"c\"\nkey = \"k\"\n\
         cluster_ca = \"a\"\ndevice_ca = \"d\"\nroot_ca = \"r\"\ndb_url = \"sqlite://x\"\n\
         genesis_id = \"{}\"\n",
        "ab".repeat(32)
    );
    let mut cfg: BridgeConfig = toml::from_str(&toml).unwrap();
    assert_eq!(cfg.genesis_pin().unwrap(), Some([0xab; 32]));
    cfg.genesis_id = Some("abc".into());
    let err = cfg.genesis_pin().unwrap_err();
    assert!(err.contains("genesis_id \"abc\""), "{err}");
    cfg.genesis_id = None;
    assert_eq!(cfg.genesis_pin().unwrap(), None);
}

/// A fresh P-256 public key as a device identity holds it (SEC1).
fn device_key() -> Vec<u8> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec()
}

#[test]
fn a_registry_entry_stays_only_as_the_member_of_its_name() {
    let member_key = device_key();
    let fp = device_key_fingerprint(&member_key).unwrap();
    let mut gov = GovState {
        cluster: CLUSTER.into(),
        genesis_id: [0; 32],
        version: 0,
        head: [0; 32],
        governors: vec![[1; 32]],
        quorum: 1,
        members: Default::default(),
        removed: Default::default(),
        revoked_admins: Default::default(),
        revoked_devices: Default::default(),
        measurement: None,
        used_nonces: Default::default(),
    };
    gov.members.insert(
        fp,
        custos_wire::governance::Member {
            record: MemberRecord {
                key_fingerprint: fp,
                ..unapproved_genesis_member()
            },
            admitted_version: 0,
        },
    );
    assert!(is_member(&gov, "node1", &member_key));
    // The member's name with another key, or the member's key under another name: gone.
    assert!(!is_member(&gov, "node1", &device_key()));
    assert!(!is_member(&gov, "node2", &member_key));
    assert!(!is_member(&gov, "node1", b"not a point"));
    gov.revoked_devices.insert(fp, 1);
    assert!(!is_member(&gov, "node1", &member_key));
}

fn unapproved_genesis_member() -> MemberRecord {
    match unapproved_genesis().change {
        GovChange::Genesis { mut members, .. } => members.remove(0),
        _ => unreachable!("a genesis"),
    }
}
