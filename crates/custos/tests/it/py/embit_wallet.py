"""An independent watch-only wallet (embit, from PyPI) for the Bitcoin Core external
signer's test (issue 14). Reads the signer's `getdescriptors` answer (JSON) on stdin.

  embit_wallet.py descriptors  -> JSON, per descriptor: whether its checksum is the one embit
                                  computes, its address at index 0 (regtest), and the
                                  single-key descriptor of that address as Bitcoin Core
                                  writes it for `displayaddress`
  embit_wallet.py psbt         -> a base64 PSBT (version 0) spending made-up coins of the
                                  BIP-84 (P2WPKH), BIP-86 (P2TR key path) and BIP-49
                                  (P2SH-P2WPKH) receive descriptors at index 1, 2 and 3:
                                  100 000, 200 000 and 300 000 sat, paying `pay` sat (argv[2])
                                  to an outside P2WPKH and the rest but 1 000 sat of fee to
                                  the BIP-84 change address 0
"""
import json
import sys

from embit import script
from embit.descriptor import Descriptor
from embit.descriptor.checksum import add_checksum
from embit.ec import PublicKey
from embit.networks import NETWORKS
from embit.psbt import PSBT, DerivationPath
from embit.transaction import Transaction, TransactionInput, TransactionOutput

REGTEST = NETWORKS["regtest"]


def parse(desc):
    body = desc.split("#")[0]
    return body, Descriptor.from_string(body)


def single(desc_body, derived):
    """The one-key descriptor of `derived` (a descriptor at an index), with its origin."""
    key = derived.keys[0]
    origin = str(key.origin)[2:] if str(key.origin).startswith("m/") else str(key.origin)
    pub = key.key.key
    if desc_body.startswith("tr("):
        inner = "tr([%s]%s)" % (origin, pub.xonly().hex())
    elif desc_body.startswith("sh(wpkh("):
        inner = "sh(wpkh([%s]%s))" % (origin, pub.sec().hex())
    else:
        inner = "wpkh([%s]%s)" % (origin, pub.sec().hex())
    return add_checksum(inner)


def descriptors(answer):
    out = []
    for desc in answer["receive"] + answer["internal"]:
        body, d = parse(desc)
        d0 = d.derive(0)
        out.append(
            {
                "desc": desc,
                "checksum_ok": add_checksum(body) == desc,
                "address0": d0.address(REGTEST),
                "single0": single(body, d0),
            }
        )
    return out


def funding_tx(spk, value, salt):
    vin = [TransactionInput(bytes([salt]) * 32, 0)]
    return Transaction(version=2, vin=vin, vout=[TransactionOutput(value, spk)], locktime=0)


def key_at(d, index):
    key = d.derive(index).keys[0]
    return key.key.key, DerivationPath(key.origin.fingerprint, key.origin.derivation)


def psbt(answer, pay):
    by_kind = {}
    for desc in answer["receive"]:
        body, d = parse(desc)
        by_kind[body.split("(")[0] if not body.startswith("sh(") else "sh"] = d
    change_body, change = parse(
        [x for x in answer["internal"] if x.startswith("wpkh(")][0]
    )
    k1, o1 = key_at(by_kind["wpkh"], 1)
    k2, o2 = key_at(by_kind["tr"], 2)
    k3, o3 = key_at(by_kind["sh"], 3)
    kc, oc = key_at(change, 0)
    redeem3 = script.p2wpkh(k3)
    f1 = funding_tx(script.p2wpkh(k1), 100_000, 1)
    f2 = funding_tx(script.p2tr(k2), 200_000, 2)
    f3 = funding_tx(script.p2sh(redeem3), 300_000, 3)
    outside = script.p2wpkh(
        PublicKey.parse(
            bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
        )
    )
    tx = Transaction(
        version=2,
        locktime=0,
        vin=[TransactionInput(f.txid(), 0, sequence=0xFFFFFFFD) for f in (f1, f2, f3)],
        vout=[
            TransactionOutput(pay, outside),
            TransactionOutput(600_000 - pay - 1_000, script.p2wpkh(kc)),
        ],
    )
    p = PSBT(tx)
    i0, i1, i2 = p.inputs
    i0.witness_utxo = f1.vout[0]
    i0.non_witness_utxo = f1
    i0.bip32_derivations[k1] = o1
    # Next to segwit v0 inputs, Bitcoin Core keeps every input's previous transaction.
    i1.witness_utxo = f2.vout[0]
    i1.non_witness_utxo = f2
    i1.taproot_internal_key = k2
    i1.taproot_bip32_derivations[k2] = ([], o2)
    i2.non_witness_utxo = f3
    i2.redeem_script = redeem3
    i2.bip32_derivations[k3] = o3
    p.outputs[1].bip32_derivations[kc] = oc
    return p.to_base64()


if __name__ == "__main__":
    answer = json.loads(sys.stdin.read())
    if sys.argv[1] == "descriptors":
        print(json.dumps(descriptors(answer)))
    elif sys.argv[1] == "psbt":
        print(psbt(answer, int(sys.argv[2])))
    else:
        sys.exit("unknown command " + sys.argv[1])
