//! The signature hashes against the BIPs' own vectors (BIP-143 native and nested P2WPKH,
//! BIP-341 key path), and the checks of [`plan_psbt`] on PSBTs a wallet of the test's own
//! spends: each refusal by name, change recognised, signatures placed and verified.

use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv};
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::psbt::PsbtSighashType;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Amount, Transaction, Witness};

use super::*;

fn h32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn utxo(script: &str, sat: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sat),
        script_pubkey: ScriptBuf::from_hex(script).unwrap(),
    }
}

fn v0_owned(key: &str) -> (InputKind, Vec<u32>, secp256k1::PublicKey, bool) {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&hex::decode(key).unwrap()).unwrap();
    (InputKind::P2wpkh, vec![], sk.public_key(&secp), false)
}

/// BIP-143, "Native P2WPKH": the second input's hash, and the RFC 6979 signature of it.
#[test]
fn bip143_native_p2wpkh_sighash_and_signature() {
    let tx: Transaction = deserialize_hex("0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffffffef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac11000000").unwrap();
    let psbt = Psbt::from_unsigned_tx(tx).unwrap();
    let key = "619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9";
    let spent = [
        utxo(
            "2103c9f4836b9a4f77fc0d81f7bcb01b7f1b35916864b9476c241ce9fc198bd25432ac",
            625_000_000,
        ),
        utxo("00141d0f172a0ecb48aee1be1f2687d2963ae33f71a1", 600_000_000),
    ];
    // The first input (P2PK) is not signed here; only the second's hash is compared.
    let owned = [v0_owned(key), v0_owned(key)];
    let hashes = sighashes(&psbt, &spent, &owned).unwrap();
    let want = h32("c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670");
    assert_eq!(hashes[1], want);
    let job = SignJob {
        input: 1,
        path: vec![],
        kind: InputKind::P2wpkh,
        sighash: hashes[1],
        public_key: owned[1].2,
        explicit_all: false,
    };
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&hex::decode(key).unwrap()).unwrap();
    let InputSignature::Ecdsa(sig) = job.sign(&secp, &sk, &[0; 32]).unwrap() else {
        panic!("not ECDSA")
    };
    assert_eq!(
        hex::encode(sig.serialize_der()),
        "304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee"
    );
}

/// BIP-143, "P2SH-P2WPKH": the hash (its script code from the key, as for native) and the
/// signature.
#[test]
fn bip143_p2sh_p2wpkh_sighash_and_signature() {
    let tx: Transaction = deserialize_hex("0100000001db6b1b20aa0fd7b23880be2ecbd4a98130974cf4748fb66092ac4d3ceb1a54770100000000feffffff02b8b4eb0b000000001976a914a457b684d7f0d539a46a45bbc043f35b59d0d96388ac0008af2f000000001976a914fd270b1ee6abcaea97fea7ad0402e8bd8ad6d77c88ac92040000").unwrap();
    let psbt = Psbt::from_unsigned_tx(tx).unwrap();
    let key = "eb696a065ef48a2192da5b28b694f87544b30fae8327c4510137a922f32c6dcf";
    let spent = [utxo(
        "a9144733f37cf4db86fbc2efed2500b4f4e49f31202387",
        1_000_000_000,
    )];
    let mut owned = v0_owned(key);
    owned.0 = InputKind::P2shP2wpkh;
    let secp = Secp256k1::new();
    // The vector's script is the key's nested P2WPKH: the kind check agrees with the BIP.
    owns_script(
        &Secp256k1::verification_only(),
        owned.0,
        &owned.2,
        &spent[0].script_pubkey,
    )
    .unwrap();
    let hashes = sighashes(&psbt, &spent, &[owned.clone()]).unwrap();
    assert_eq!(
        hashes[0],
        h32("64f3b0f4dd2bb3aa1ce8566d220cc74dda9df97d8490cc81d89d735c92e59fb6")
    );
    let job = SignJob {
        input: 0,
        path: vec![],
        kind: owned.0,
        sighash: hashes[0],
        public_key: owned.2,
        explicit_all: false,
    };
    let sk = SecretKey::from_slice(&hex::decode(key).unwrap()).unwrap();
    let InputSignature::Ecdsa(sig) = job.sign(&secp, &sk, &[0; 32]).unwrap() else {
        panic!("not ECDSA")
    };
    assert_eq!(
        hex::encode(sig.serialize_der()),
        "3044022047ac8e878352d3ebbde1c94ce3a10d057c24175747116f8288e5d794d12d482f0220217f36a485cae903c713331d877c1f64677e3622ad4010726870540656fe9dcb"
    );
}

/// The BIP-341 key-path vector: nine inputs, the hashes of the two that ask for what this
/// signer signs (input 3: `SIGHASH_ALL`, input 4: the default). The other inputs' hash
/// types are refused ([`bip341_other_hash_types_are_refused`]).
#[test]
fn bip341_key_path_sighashes() {
    let tx: Transaction = deserialize_hex(BIP341_TX).unwrap();
    let psbt = Psbt::from_unsigned_tx(tx).unwrap();
    let spent: Vec<TxOut> = BIP341_UTXOS.iter().map(|(s, v)| utxo(s, *v)).collect();
    let any_key = v0_owned("0000000000000000000000000000000000000000000000000000000000000001").2;
    let owned: Vec<_> = (0..9)
        .map(|i| (InputKind::P2trKeyPath, vec![], any_key, i == 3))
        .collect();
    let hashes = sighashes(&psbt, &spent, &owned).unwrap();
    assert_eq!(
        hashes[3],
        h32("bf013ea93474aa67815b1b6cc441d23b64fa310911d991e713cd34c7f5d46669")
    );
    assert_eq!(
        hashes[4],
        h32("4f900a0bae3f1446fd48490c2958b5a023228f01661cda3496a11da502a7f7ef")
    );
}

const BIP341_TX: &str = "02000000097de20cbff686da83a54981d2b9bab3586f4ca7e48f57f5b55963115f3b334e9c010000000000000000d7b7cab57b1393ace2d064f4d4a2cb8af6def61273e127517d44759b6dafdd990000000000fffffffff8e1f583384333689228c5d28eac13366be082dc57441760d957275419a418420000000000fffffffff0689180aa63b30cb162a73c6d2a38b7eeda2a83ece74310fda0843ad604853b0100000000feffffffaa5202bdf6d8ccd2ee0f0202afbbb7461d9264a25e5bfd3c5a52ee1239e0ba6c0000000000feffffff956149bdc66faa968eb2be2d2faa29718acbfe3941215893a2a3446d32acd050000000000000000000e664b9773b88c09c32cb70a2a3e4da0ced63b7ba3b22f848531bbb1d5d5f4c94010000000000000000e9aa6b8e6c9de67619e6a3924ae25696bb7b694bb677a632a74ef7eadfd4eabf0000000000ffffffffa778eb6a263dc090464cd125c466b5a99667720b1c110468831d058aa1b82af10100000000ffffffff0200ca9a3b000000001976a91406afd46bcdfd22ef94ac122aa11f241244a37ecc88ac807840cb0000000020ac9a87f5594be208f8532db38cff670c450ed2fea8fcdefcc9a663f78bab962b0065cd1d";

const BIP341_UTXOS: [(&str, u64); 9] = [
    (
        "512053a1f6e454df1aa2776a2814a721372d6258050de330b3c6d10ee8f4e0dda343",
        420000000,
    ),
    (
        "5120147c9c57132f6e7ecddba9800bb0c4449251c92a1e60371ee77557b6620f3ea3",
        462000000,
    ),
    (
        "76a914751e76e8199196d454941c45d1b3a323f1433bd688ac",
        294000000,
    ),
    (
        "5120e4d810fd50586274face62b8a807eb9719cef49c04177cc6b76a9a4251d5450e",
        504000000,
    ),
    (
        "512091b64d5324723a985170e4dc5a0f84c041804f2cd12660fa5dec09fc21783605",
        630000000,
    ),
    ("00147dd65592d0ab2fe0d0257d571abf032cd9db93dc", 378000000),
    (
        "512075169f4001aa68f15bbed28b218df1d0a62cbbcf1188c6665110c293c907b831",
        672000000,
    ),
    (
        "5120712447206d7a5238acc7ff53fbe94a3b64539ad291c7cdbc490b7577e4b17df5",
        546000000,
    ),
    (
        "512077e30a5522dd9f894c3f8b8bd4c4b2cf82ca7da8a3ea6a239655c39c050ab220",
        588000000,
    ),
];

/// Input 0 of the BIP-341 vector asks for `SIGHASH_SINGLE` (3): refused by name before any
/// key is looked at.
#[test]
fn bip341_other_hash_types_are_refused() {
    let tx: Transaction = deserialize_hex(BIP341_TX).unwrap();
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    for (input, (s, v)) in psbt.inputs.iter_mut().zip(BIP341_UTXOS) {
        input.witness_utxo = Some(utxo(s, v));
    }
    psbt.inputs[0].sighash_type = Some(PsbtSighashType::from_u32(3));
    let wallet = TestWallet::new();
    match plan_psbt(&psbt.serialize(), Network::Bitcoin, &wallet) {
        Err(
            e @ TxError::SighashTypeRefused {
                input: 0,
                sighash_type: 3,
            },
        ) => assert_eq!(e.code(), "sighash_type_refused"),
        other => panic!("expected a refusal of SIGHASH_SINGLE: {:?}", other.err()),
    }
}

/// A wallet of the test's own (BIP-32 seed 000102…0f).
struct TestWallet {
    master: Xpriv,
    secp: Secp256k1<All>,
}

impl TestWallet {
    fn new() -> Self {
        let seed: Vec<u8> = (0u8..16).collect();
        TestWallet {
            master: Xpriv::new_master(Network::Bitcoin, &seed).unwrap(),
            secp: Secp256k1::new(),
        }
    }

    fn secret(&self, path: &[u32]) -> SecretKey {
        let p: Vec<ChildNumber> = path.iter().map(|&s| ChildNumber::from(s)).collect();
        self.master.derive_priv(&self.secp, &p).unwrap().private_key
    }

    fn fp(&self) -> Fingerprint {
        self.master.fingerprint(&self.secp)
    }
}

impl WalletKeys for TestWallet {
    fn fingerprint(&self) -> [u8; 4] {
        self.fp().to_bytes()
    }

    fn public_key(&self, path: &[u32]) -> Result<secp256k1::PublicKey, TxError> {
        Ok(self.secret(path).public_key(&self.secp))
    }
}

const H: u32 = 0x8000_0000;

fn path(p: &[u32]) -> DerivationPath {
    p.iter()
        .map(|&s| ChildNumber::from(s))
        .collect::<Vec<_>>()
        .into()
}

/// A spend of three wallet outputs (P2WPKH at m/84'/0'/0'/0/0, P2SH-P2WPKH at
/// m/49'/0'/0'/0/0, P2TR at m/86'/0'/0'/0/0) to an external P2WPKH and a change output at
/// m/84'/0'/0'/1/0.
fn spend(w: &TestWallet) -> Psbt {
    let external = crate::synthetic::script_of(InputKind::P2wpkh, &w.public_key(&[7]).unwrap());
    crate::synthetic::Spend::with(w)
        .input(InputKind::P2wpkh, &[84 | H, H, H, 0, 0], 50_000)
        .input(InputKind::P2shP2wpkh, &[49 | H, H, H, 0, 0], 30_000)
        .input(InputKind::P2trKeyPath, &[86 | H, H, H, 0, 0], 20_000)
        .pay(external, 70_000)
        .change(&[84 | H, H, H, 1, 0], 29_000)
        .psbt()
}

fn refusal(psbt: &Psbt, w: &TestWallet) -> TxError {
    match plan_psbt(&psbt.serialize(), Network::Bitcoin, w) {
        Err(e) => e,
        Ok(p) => panic!("accepted: {:?}", p.intent()),
    }
}

#[test]
fn a_wallet_spend_is_planned_signed_and_its_signatures_verify() {
    let w = TestWallet::new();
    let plan = plan_psbt(&spend(&w).serialize(), Network::Bitcoin, &w).unwrap();
    let Intent::Bitcoin(intent) = plan.intent() else {
        panic!("not Bitcoin")
    };
    assert_eq!(intent.fee_sat, 1_000);
    assert_eq!(intent.sent_sat(), 70_000);
    let kinds: Vec<InputKind> = intent.inputs.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        [
            InputKind::P2wpkh,
            InputKind::P2shP2wpkh,
            InputKind::P2trKeyPath
        ]
    );
    assert_eq!(intent.outputs[0].change_path, None);
    assert_eq!(
        intent.outputs[1].change_path,
        Some(vec![84 | H, H, H, 1, 0])
    );
    assert!(intent.outputs[0]
        .address
        .as_ref()
        .unwrap()
        .starts_with("bc1q"));
    let lines = plan.intent().describe().join("\n");
    assert!(
        lines.contains("send 0.00070000 BTC to 1 recipient(s), fee 0.00001000 BTC"),
        "{lines}"
    );

    let sigs = plan
        .jobs()
        .iter()
        .map(|j| j.sign(&w.secp, &w.secret(&j.path), &[7; 32]).unwrap())
        .collect();
    let signed = Psbt::deserialize(&plan.finish(sigs).unwrap()).unwrap();
    assert_eq!(signed.inputs[0].partial_sigs.len(), 1);
    assert_eq!(signed.inputs[1].partial_sigs.len(), 1);
    assert!(signed.inputs[2].tap_key_sig.is_some());
}

#[test]
fn the_intent_hash_changes_with_every_fact_an_approver_sees() {
    let w = TestWallet::new();
    let base = spend(&w);
    let hash = |p: &Psbt| {
        plan_psbt(&p.serialize(), Network::Bitcoin, &w)
            .unwrap()
            .intent()
            .hash()
    };
    let h0 = hash(&base);
    assert_eq!(h0, hash(&base.clone()), "one PSBT, one intent");
    // Another recipient amount (fee changes with it).
    let mut p = base.clone();
    p.unsigned_tx.output[0].value = Amount::from_sat(69_000);
    assert_ne!(hash(&p), h0);
    // The change output no longer marked as change: it becomes a payment.
    let mut p = base.clone();
    p.outputs[1].bip32_derivation.clear();
    assert_ne!(hash(&p), h0);
    // Another network writes other addresses and is another intent.
    let other = plan_psbt(&base.serialize(), Network::Testnet, &w).unwrap();
    assert_ne!(other.intent().hash(), h0);
}

#[test]
fn a_change_output_swapped_for_a_script_the_wallet_does_not_derive_is_a_payment() {
    let w = TestWallet::new();
    let mut p = spend(&w);
    // The PSBT still claims the change path, but the script pays someone else.
    let thief = w.public_key(&[9]).unwrap();
    p.unsigned_tx.output[1].script_pubkey =
        ScriptBuf::new_p2wpkh(&CompressedPublicKey(thief).wpubkey_hash());
    let plan = plan_psbt(&p.serialize(), Network::Bitcoin, &w).unwrap();
    let Intent::Bitcoin(intent) = plan.intent() else {
        panic!("not Bitcoin")
    };
    assert_eq!(intent.outputs[1].change_path, None);
    assert_eq!(intent.sent_sat(), 99_000);
}

#[test]
fn inputs_the_wallet_cannot_vouch_for_are_refused_by_name() {
    let w = TestWallet::new();

    let mut p = spend(&w);
    p.inputs[0].non_witness_utxo = None;
    assert_eq!(refusal(&p, &w).code(), "input_value_unproven");

    let mut p = spend(&w);
    let mut lie = p.inputs[1].witness_utxo.clone().unwrap();
    lie.value = Amount::from_sat(1);
    p.inputs[1].witness_utxo = Some(lie);
    assert!(matches!(
        refusal(&p, &w),
        TxError::UtxoMismatch { input: 1, .. }
    ));

    let mut p = spend(&w);
    p.inputs[0].non_witness_utxo = None;
    p.inputs[0].witness_utxo = None;
    assert_eq!(refusal(&p, &w).code(), "input_utxo_missing");

    let mut p = spend(&w);
    p.unsigned_tx.input[1].previous_output.vout = 5;
    assert!(matches!(
        refusal(&p, &w),
        TxError::UtxoMismatch { input: 1, .. }
    ));

    let mut p = spend(&w);
    p.inputs[0].bip32_derivation.clear();
    assert!(matches!(
        refusal(&p, &w),
        TxError::ForeignInput { input: 0, .. }
    ));

    let mut p = spend(&w);
    let (key, origin) = p.inputs[0].bip32_derivation.pop_first().unwrap();
    let mut wrong = origin.clone();
    wrong.1 = path(&[84 | H, H, H, 0, 1]);
    p.inputs[0].bip32_derivation.insert(key, wrong);
    assert!(matches!(
        refusal(&p, &w),
        TxError::KeyMismatch { input: 0, .. }
    ));

    let mut p = spend(&w);
    p.inputs[2].tap_merkle_root = Some(bitcoin::TapNodeHash::from_byte_array([1; 32]));
    assert_eq!(refusal(&p, &w).code(), "taproot_script_tree");

    let mut p = spend(&w);
    p.inputs[0].sighash_type = Some(PsbtSighashType::from_u32(0x81));
    assert_eq!(refusal(&p, &w).code(), "sighash_type_refused");

    let mut p = spend(&w);
    p.inputs[1].final_script_witness = Some(Witness::new());
    assert_eq!(refusal(&p, &w).code(), "input_finalized");

    let mut p = spend(&w);
    p.unsigned_tx.output[0].value = Amount::from_sat(100_000);
    assert_eq!(refusal(&p, &w).code(), "outputs_exceed_inputs");

    // Next to v0 inputs, a taproot input's value must be proven too: the v0 signatures
    // would hold for whatever fee its misstated value hides.
    let mut p = spend(&w);
    p.inputs[2].non_witness_utxo = None;
    assert!(matches!(
        refusal(&p, &w),
        TxError::InputValueUnproven { input: 2 }
    ));

    let mut p = spend(&w);
    let again = p.unsigned_tx.input[0].clone();
    p.unsigned_tx.input.push(again);
    p.inputs.push(p.inputs[0].clone());
    assert!(matches!(
        refusal(&p, &w),
        TxError::DuplicateInput { input: 3 }
    ));

    let mut p = spend(&w);
    p.unsigned_tx.output.clear();
    p.outputs.clear();
    assert_eq!(refusal(&p, &w).code(), "tx_no_outputs");

    assert_eq!(
        plan_psbt(b"psbt\xff\x00", Network::Bitcoin, &w)
            .err()
            .unwrap()
            .code(),
        "tx_malformed"
    );
    let big = vec![0u8; MAX_PSBT_BYTES + 1];
    assert_eq!(
        plan_psbt(&big, Network::Bitcoin, &w).err().unwrap().code(),
        "tx_too_large"
    );
}

/// A segwit input given by its previous transaction alone (no witness_utxo, as BIP-174
/// allows and some wallets write) is read from it, its value proven.
#[test]
fn an_input_given_by_its_previous_transaction_alone_is_read_from_it() {
    let w = TestWallet::new();
    let mut p = spend(&w);
    for i in &mut p.inputs {
        i.witness_utxo = None;
    }
    let plan = plan_psbt(&p.serialize(), Network::Bitcoin, &w).unwrap();
    let Intent::Bitcoin(intent) = plan.intent() else {
        panic!("not Bitcoin")
    };
    let values: Vec<u64> = intent.inputs.iter().map(|i| i.value_sat).collect();
    assert_eq!(
        (values, intent.fee_sat),
        (vec![50_000, 30_000, 20_000], 1_000)
    );
}

/// A spend of taproot inputs only needs no previous transactions: every signature commits
/// to every spent output's value.
#[test]
fn taproot_inputs_alone_are_proven_by_their_signatures() {
    let w = TestWallet::new();
    let mut p = spend(&w);
    p.unsigned_tx.input.drain(..2);
    p.inputs.drain(..2);
    p.inputs[0].non_witness_utxo = None;
    p.unsigned_tx.output[0].value = Amount::from_sat(19_000);
    p.unsigned_tx.output.truncate(1);
    p.outputs.truncate(1);
    let plan = plan_psbt(&p.serialize(), Network::Bitcoin, &w).unwrap();
    let Intent::Bitcoin(intent) = plan.intent() else {
        panic!("not Bitcoin")
    };
    assert_eq!((intent.fee_sat, intent.inputs.len()), (1_000, 1));
}

#[test]
fn a_signature_for_another_hash_is_not_placed() {
    let w = TestWallet::new();
    let plan = plan_psbt(&spend(&w).serialize(), Network::Bitcoin, &w).unwrap();
    let mut sigs: Vec<InputSignature> = plan
        .jobs()
        .iter()
        .map(|j| j.sign(&w.secp, &w.secret(&j.path), &[7; 32]).unwrap())
        .collect();
    sigs.swap(0, 1);
    assert_eq!(plan.finish(sigs).err().unwrap().code(), "signing_failed");
}
