//! Sealed wallet import: a secret HPKE-sealed to one node's device key D is imported by that
//! node's TEE core only, for exactly the approved request, and never shows in clear.
//!
//! The cores run in-process over an in-memory platform, provisioned by a real PKI (Root,
//! Device and Cluster CAs, admins) as the operator tooling does it.

use custos_test_kit::{call_core as call, MemPlatform};

use crate::crash;

use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_wire::approval::{Action, Approval};
use custos_wire::import::{
    import_context, import_key_id, seal_group_import, seal_import, SealedImport,
};
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::{
    ImportSecret, KeyInfo, Origin, Outcome, Request, RequestMeta, Response, SecretBytes,
    SecretString, TeeError,
};
use rand::RngCore;
use zeroize::Zeroizing;

const CLUSTER: &str = "dc1";
/// BIP-39 test vector (Trezor): the all-`abandon` phrase with passphrase "TREZOR".
const PHRASE: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const PASSPHRASE: &str = "TREZOR";

/// The test kit's PKI (cluster dc1 is the one used here).
struct Pki(custos_test_kit::Pki);

impl std::ops::Deref for Pki {
    type Target = custos_test_kit::Pki;
    fn deref(&self) -> &custos_test_kit::Pki {
        &self.0
    }
}

impl Pki {
    fn new() -> Self {
        Pki(custos_test_kit::Pki::with_clusters(&[CLUSTER]))
    }

    /// A core of cluster dc1 with Root pinned, D generated and its certificate installed;
    /// returns it with D's public key.
    fn node(&self, node: &str) -> (TeeCore<MemPlatform>, Vec<u8>) {
        let mut core = TeeCore::open(MemPlatform::default(), "memory").unwrap();
        let (_, public_key) = self.0.provision(&mut core, CLUSTER, node);
        (core, public_key)
    }

    /// Approvals by the first `n` admins of importing `key_id` with `quorum`.
    fn approvals(&self, n: usize, meta: &RequestMeta, quorum: u8, key_id: &[u8]) -> Vec<Approval> {
        let message = Action::ImportWallet { quorum, key_id }.message(CLUSTER, meta);
        self.0.approvals(n, &message)
    }
}

fn meta() -> RequestMeta {
    let mut request_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut request_id);
    RequestMeta {
        request_id,
        expires_at: MemPlatform::default().now_unix() + 600,
    }
}

fn mnemonic() -> ImportSecret {
    ImportSecret::Mnemonic {
        phrase: SecretString(PHRASE.into()),
        passphrase: SecretString(PASSPHRASE.into()),
    }
}

fn keys(core: &mut TeeCore<MemPlatform>) -> Vec<KeyInfo> {
    match call(core, &Request::ListKeys).unwrap() {
        Response::Keys(k) => k,
        r => panic!("unexpected {r:?}"),
    }
}

/// A sealed-import request for node1 with `approvers` approvals of exactly its terms.
struct Sealed {
    meta: RequestMeta,
    quorum: u8,
    key_id: Vec<u8>,
    sealed: SealedImport,
}

impl Sealed {
    fn new(device_key: &[u8], node: &str, quorum: u8, secret: &ImportSecret) -> Self {
        let meta = meta();
        let key_id = import_key_id(secret).unwrap();
        let sealed =
            seal_import(device_key, CLUSTER, node, &meta, quorum, &key_id, secret).unwrap();
        Sealed {
            meta,
            quorum,
            key_id,
            sealed,
        }
    }

    fn request(&self, pki: &Pki, approvers: usize) -> Request {
        Request::ImportWalletSealed {
            meta: self.meta.clone(),
            quorum: self.quorum,
            key_id: self.key_id.clone(),
            sealed: self.sealed.clone(),
            approvals: pki.approvals(approvers, &self.meta, self.quorum, &self.key_id),
        }
    }
}

fn sealed_refusal(e: Outcome) -> String {
    match e {
        Err(TeeError::SealedImportRejected(m)) => m,
        other => panic!("expected SealedImportRejected, got {other:?}"),
    }
}

#[test]
fn sealed_import_yields_the_key_of_the_secret_as_a_plain_import_does() {
    let pki = Pki::new();
    let (mut node1, d1) = pki.node("node1");
    let (mut node2, _) = pki.node("node2");
    let secret = mnemonic();
    let s = Sealed::new(&d1, "node1", 2, &secret);

    let Response::Wallet(sealed_info) = call(&mut node1, &s.request(&pki, 2)).unwrap() else {
        panic!("expected a wallet");
    };
    assert_eq!(sealed_info.key_id, s.key_id);
    assert_eq!(sealed_info.key_id, import_key_id(&secret).unwrap());
    assert_eq!(
        (sealed_info.quorum, sealed_info.origin),
        (2, Origin::Imported)
    );
    assert_eq!(keys(&mut node1), vec![sealed_info.clone()]);

    // The same secret in clear at another node's own socket gives the same wallet.
    let meta = meta();
    let plain = Request::ImportWallet {
        approvals: pki.approvals(2, &meta, 2, &s.key_id),
        meta,
        quorum: 2,
        key_id: s.key_id.clone(),
        secret,
    };
    let Response::Wallet(plain_info) = call(&mut node2, &plain).unwrap() else {
        panic!("expected a wallet");
    };
    assert_eq!(plain_info, sealed_info);

    // Repeating the sealed request imports nothing twice: it answers the wallet it made. A
    // new request for the key finds it held.
    let again = call(&mut node1, &s.request(&pki, 2)).unwrap();
    assert_eq!(again, Response::Wallet(sealed_info.clone()));
    let e = call(
        &mut node1,
        &Sealed::new(&d1, "node1", 2, &mnemonic()).request(&pki, 2),
    );
    assert!(matches!(e, Err(TeeError::KeyExists(_))), "{e:?}");
    assert_eq!(keys(&mut node1), vec![sealed_info.clone()]);

    // A raw seed travels the same way.
    let seed = ImportSecret::Seed(SecretBytes((0u8..64).collect()));
    let s = Sealed::new(&d1, "node1", 1, &seed);
    let Response::Wallet(info) = call(&mut node1, &s.request(&pki, 1)).unwrap() else {
        panic!("expected a wallet");
    };
    assert_eq!(info.key_id, import_key_id(&seed).unwrap());
}

#[test]
fn a_secret_sealed_for_another_node_does_not_open() {
    let pki = Pki::new();
    let (mut node1, d1) = pki.node("node1");
    let (_node2, d2) = pki.node("node2");
    // To node2's D (under node1's name, so only the key differs).
    let s = Sealed::new(&d2, "node1", 1, &mnemonic());
    sealed_refusal(call(&mut node1, &s.request(&pki, 1)));
    // To node1's D but for node2's name.
    let s = Sealed::new(&d1, "node2", 1, &mnemonic());
    sealed_refusal(call(&mut node1, &s.request(&pki, 1)));
    assert!(keys(&mut node1).is_empty());
}

#[test]
fn a_changed_context_does_not_open_even_with_valid_approvals() {
    let pki = Pki::new();
    let (mut node1, d1) = pki.node("node1");
    let other_key = import_key_id(&ImportSecret::Seed(SecretBytes(vec![5; 32]))).unwrap();
    let s = Sealed::new(&d1, "node1", 1, &mnemonic());
    let mut changes: Vec<(&str, Sealed)> = Vec::new();
    let mut c = Sealed::new(&d1, "node1", 1, &mnemonic());
    c.meta.request_id = meta().request_id;
    changes.push(("request id", c));
    let mut c = Sealed::new(&d1, "node1", 1, &mnemonic());
    c.meta.expires_at -= 1;
    changes.push(("expiry", c));
    let mut c = Sealed::new(&d1, "node1", 1, &mnemonic());
    c.quorum = 2;
    changes.push(("quorum", c));
    let mut c = Sealed::new(&d1, "node1", 1, &mnemonic());
    c.key_id = other_key;
    changes.push(("key id", c));
    for (what, c) in changes {
        // The approvals are valid for the changed terms: only the ciphertext refuses.
        let m = sealed_refusal(call(&mut node1, &c.request(&pki, 2)));
        assert!(m.contains("HPKE open failed"), "{what}: {m}");
    }
    assert!(keys(&mut node1).is_empty());
    // The unchanged request still imports.
    assert!(call(&mut node1, &s.request(&pki, 1)).is_ok());
}

#[test]
fn a_tampered_ciphertext_is_refused() {
    let pki = Pki::new();
    let (mut node1, d1) = pki.node("node1");
    let s = Sealed::new(&d1, "node1", 1, &mnemonic());
    let mut variants: Vec<(&str, SealedImport)> = Vec::new();
    let mut t = s.sealed.clone();
    t.ciphertext[0] ^= 1;
    variants.push(("ciphertext", t));
    let mut t = s.sealed.clone();
    t.ciphertext.pop();
    variants.push(("truncated", t));
    let mut t = s.sealed.clone();
    t.enc[20] ^= 1;
    variants.push(("encapsulated key", t));
    let mut t = s.sealed.clone();
    t.enc.truncate(33);
    variants.push(("short encapsulated key", t));
    let mut t = s.sealed.clone();
    t.ciphertext.resize(5000, 0);
    variants.push(("oversized", t));
    for (what, sealed) in variants {
        let req = Request::ImportWalletSealed {
            meta: s.meta.clone(),
            quorum: s.quorum,
            key_id: s.key_id.clone(),
            sealed,
            approvals: pki.approvals(1, &s.meta, s.quorum, &s.key_id),
        };
        let m = sealed_refusal(call(&mut node1, &req));
        assert!(!m.is_empty(), "{what}");
    }
    assert!(keys(&mut node1).is_empty());
}

#[test]
fn a_secret_that_is_not_the_approved_key_is_refused() {
    let pki = Pki::new();
    let (mut node1, d1) = pki.node("node1");
    // seal_import refuses this at the sender...
    let secret = mnemonic();
    let other_key = import_key_id(&ImportSecret::Seed(SecretBytes(vec![5; 32]))).unwrap();
    let meta = meta();
    let e = seal_import(&d1, CLUSTER, "node1", &meta, 1, &other_key, &secret).unwrap_err();
    assert!(matches!(e, TeeError::ImportRejected(_)), "{e:?}");
    // ...so a careless or hostile sealer builds it by hand: the context names other_key,
    // the plaintext is another secret. The TEE opens it and still refuses.
    let context = import_context(CLUSTER, "node1", &meta, 1, &other_key);
    let plaintext = Zeroizing::new(postcard::to_allocvec(&secret).unwrap());
    let (enc, ciphertext) = custos_wire::seal::seal_with(
        &mut rand::rngs::OsRng,
        &d1,
        &context,
        &plaintext,
        TeeError::SealedImportRejected,
    )
    .unwrap();
    let req = Request::ImportWalletSealed {
        approvals: pki.approvals(1, &meta, 1, &other_key),
        meta,
        quorum: 1,
        key_id: other_key,
        sealed: SealedImport { enc, ciphertext },
    };
    let e = call(&mut node1, &req).unwrap_err();
    assert!(
        matches!(e, TeeError::ImportRejected(ref m) if m.contains("approvals are for")),
        "{e:?}"
    );
    assert!(keys(&mut node1).is_empty());
}

#[test]
fn without_enough_approvals_nothing_is_imported() {
    let pki = Pki::new();
    let (mut node1, d1) = pki.node("node1");
    let s = Sealed::new(&d1, "node1", 2, &mnemonic());
    let e = call(&mut node1, &s.request(&pki, 1)).unwrap_err();
    assert_eq!(
        e,
        TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        }
    );
    let e = call(&mut node1, &s.request(&pki, 0)).unwrap_err();
    assert_eq!(e, TeeError::ApprovalMissing);
    // Approvals of another import (another key id) do not count.
    let mut req = s.request(&pki, 2);
    let Request::ImportWalletSealed { approvals, .. } = &mut req else {
        unreachable!()
    };
    *approvals = pki.approvals(2, &s.meta, s.quorum, &[2; 33]);
    let e = call(&mut node1, &req).unwrap_err();
    assert!(
        matches!(e, TeeError::ApprovalRejected { index: 0, .. }),
        "{e:?}"
    );
    assert!(keys(&mut node1).is_empty());
}

#[test]
fn debug_of_a_sealed_import_never_shows_the_secret() {
    let pki = Pki::new();
    let (_node1, d1) = pki.node("node1");
    let s = Sealed::new(&d1, "node1", 1, &mnemonic());
    let text = format!("{:?} {:#?}", s.request(&pki, 1), s.request(&pki, 1));
    assert!(text.contains("ImportWalletSealed"));
    for secret_part in ["abandon", "about", PASSPHRASE] {
        assert!(!text.contains(secret_part), "{secret_part} printed");
    }
    // Nor the encoded secret bytes.
    let encoded = postcard::to_allocvec(&mnemonic()).unwrap();
    assert!(!text.contains(&format!("{:?}", &encoded[..16])));
}

/// A plain import under `meta` with `approvers` approvals of exactly its terms.
fn plain(pki: &Pki, meta: &RequestMeta, quorum: u8, secret: ImportSecret) -> Request {
    let key_id = import_key_id(&secret).unwrap();
    Request::ImportWallet {
        approvals: pki.approvals(2, meta, quorum, &key_id),
        meta: meta.clone(),
        quorum,
        key_id,
        secret,
    }
}

fn replay_refusal(o: Outcome) -> String {
    match o {
        Err(TeeError::RequestReplayed(m)) => m,
        other => panic!("expected RequestReplayed, got {other:?}"),
    }
}

#[test]
fn wallet_import_crash_after_commit_then_replay() {
    let pki = Pki::new();
    let (node1, d1) = pki.node("node1");
    let s = Sealed::new(&d1, "node1", 2, &mnemonic());
    // The sealed import commits and the TEE is killed before it answers.
    let mut node1 = crash::killed_after_commit(node1, &s.request(&pki, 2), pki.dir.path());
    // The caller asks again with the same id: the wallet the first made, not a refusal.
    let Response::Wallet(info) = call(&mut node1, &s.request(&pki, 2)).unwrap() else {
        panic!("expected the wallet");
    };
    assert_eq!(
        (&info.key_id, info.quorum, info.origin),
        (&s.key_id, 2, Origin::Imported)
    );
    assert_eq!(keys(&mut node1), vec![info.clone()]);
    // The same approved terms in clear are the same request: same answer, nothing opened.
    let same = plain(&pki, &s.meta, 2, mnemonic());
    assert_eq!(call(&mut node1, &same), Ok(Response::Wallet(info.clone())));

    // Other terms under the used id are another request: refused, naming the difference.
    let seed = ImportSecret::Seed(SecretBytes(vec![7; 32]));
    let other_key = hex::encode(import_key_id(&seed).unwrap());
    let m = replay_refusal(call(&mut node1, &plain(&pki, &s.meta, 2, seed)));
    assert!(
        m.contains(&hex::encode(&s.key_id)) && m.contains(&other_key),
        "{m}"
    );
    let m = replay_refusal(call(&mut node1, &plain(&pki, &s.meta, 1, mnemonic())));
    assert!(m.contains("quorum 1"), "{m}");
    let mut later = s.meta.clone();
    later.expires_at += 1;
    let m = replay_refusal(call(&mut node1, &plain(&pki, &later, 2, mnemonic())));
    assert!(m.contains("approved until"), "{m}");
    let create = Request::CreateWallet {
        approvals: pki.0.approvals(
            2,
            &Action::CreateWallet { quorum: 2 }.message(CLUSTER, &s.meta),
        ),
        meta: s.meta.clone(),
        quorum: 2,
    };
    let m = replay_refusal(call(&mut node1, &create));
    assert!(m.contains("Imported") && m.contains("a new wallet"), "{m}");
    assert_eq!(keys(&mut node1), vec![info.clone()]);

    // A plain import killed after its commit, then repeated after the restart: the same.
    let seed = ImportSecret::Seed(SecretBytes(vec![9; 32]));
    let req = plain(&pki, &meta(), 1, seed);
    let mut node1 = crash::killed_after_commit(node1, &req, pki.dir.path());
    let Ok(Response::Wallet(second)) = call(&mut node1, &req) else {
        panic!("expected the second wallet");
    };
    let mut node1 = TeeCore::open(node1.platform().after_restart(), "memory").unwrap();
    assert_eq!(call(&mut node1, &req), Ok(Response::Wallet(second.clone())));
    assert_eq!(keys(&mut node1).len(), 2);
    assert!(keys(&mut node1).contains(&second));
}

/// A governed cluster imports a wallet only under an approver group (issue 12, items 3 and
/// G6): the legacy imports, sealed or plain, are refused by name even with the governors'
/// approvals (before, they made a wallet without a group of its own); the group import is
/// approved by a quorum of the new group only (a valid admin outside it is named), gives the
/// wallet that group, and a repeat answers the same wallet.
#[test]
fn a_governed_node_imports_wallets_only_under_a_group() {
    use crate::governance::{approvals_by, govern_alone, group_policy, refused_outsider, sign};

    let pki = Pki::new();
    let (mut node1, d1) = pki.node("node1");
    govern_alone(&pki, &mut node1);
    let secret = mnemonic();
    // The governors' own approvals of a legacy import: refused, nothing stored.
    let legacy = Sealed::new(&d1, "node1", 2, &secret);
    for request in [
        legacy.request(&pki, 2),
        plain(&pki, &legacy.meta, 2, mnemonic()),
    ] {
        match call(&mut node1, &request) {
            Err(TeeError::LegacyRequest(m)) => {
                assert!(m.contains("ImportGroupWalletSealed"), "{m}")
            }
            other => panic!("a legacy import ran on a governed node: {other:?}"),
        }
    }
    assert!(keys(&mut node1).is_empty());

    let policy = group_policy(&pki, &["bob", "carol"], 2);
    let meta = meta();
    let key_id = import_key_id(&secret).unwrap();
    let sealed =
        seal_group_import(&d1, CLUSTER, "node1", &meta, &policy, &key_id, &secret).unwrap();
    // An import of `sealed` under `policy`, approved by `signers`.
    let import = |policy: &KeyPolicy, sealed: &SealedImport, signers: &[&str]| {
        let message = Action::ImportGroupWallet {
            policy,
            key_id: &key_id,
        }
        .message(CLUSTER, &meta);
        Request::ImportGroupWalletSealed {
            meta: meta.clone(),
            policy: policy.clone(),
            key_id: key_id.clone(),
            sealed: sealed.clone(),
            approvals: approvals_by(&pki, signers, &message),
        }
    };
    let request = |signers: &[&str]| import(&policy, &sealed, signers);
    // Whoever relays the ciphertext cannot import it under a group of its own (alice alone
    // here, approving herself), nor open a legacy ciphertext as a group import: the group is
    // part of what the seed is sealed to.
    let mine = group_policy(&pki, &["alice"], 2 - 1);
    for (policy, sealed, signers) in [
        (&mine, &sealed, &["alice"][..]),
        (&policy, &legacy.sealed, &["bob", "carol"][..]),
    ] {
        match call(&mut node1, &import(policy, sealed, signers)) {
            Err(TeeError::SealedImportRejected(_)) => {}
            other => panic!("a seed opened under other terms than it was sealed for: {other:?}"),
        }
    }
    assert!(keys(&mut node1).is_empty());
    // alice governs the cluster but is not in the new key's group.
    refused_outsider(call(&mut node1, &request(&["alice", "bob"])), "alice");
    assert!(keys(&mut node1).is_empty());
    let Ok(Response::Wallet(info)) = call(&mut node1, &request(&["carol", "bob"])) else {
        panic!("the group import was refused")
    };
    assert_eq!(
        (info.key_id.clone(), info.origin),
        (key_id.clone(), Origin::Imported)
    );
    // Only the group counts for the imported key; a repeat answers the same wallet.
    refused_outsider(
        sign(&pki, &mut node1, &info.key_id, &["alice", "bob"]),
        "alice",
    );
    assert!(sign(&pki, &mut node1, &info.key_id, &["bob", "carol"]).is_ok());
    assert_eq!(
        call(&mut node1, &request(&["bob", "carol"])),
        Ok(Response::Wallet(info))
    );
    assert_eq!(keys(&mut node1).len(), 1);
}
