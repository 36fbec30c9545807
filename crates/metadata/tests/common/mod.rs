//! Metadata records for the tests; the databases (SQLite and a PostgreSQL schema of its own
//! per test) come from `custos-test-kit`.

use custos_metadata::{KeyRecord, NewEntry};

/// A realistic entry; `i` varies every field so that field-specific bugs show.
pub fn entry(i: usize) -> NewEntry {
    NewEntry {
        kind: ["sign", "create-wallet", "audit", "refusal"][i % 4].into(),
        request_id: (!i.is_multiple_of(3)).then(|| format!("req-{i}")),
        actor: format!("client-{}", i % 7),
        key_id: i.is_multiple_of(2).then(|| format!("02{:064x}", i)),
        path: i.is_multiple_of(4).then(|| format!("m/44'/0'/0'/0/{i}")),
        approvers: (0..i % 3).map(|a| format!("admin{a}")).collect(),
        node: (!i.is_multiple_of(5)).then(|| format!("node{}", i % 3)),
        outcome: if i % 4 == 3 {
            "E_QUORUM".into()
        } else {
            "ok".into()
        },
        detail: format!("entry {i} with text: äöü, \"quotes\", commas, and 'apostrophes'"),
        duration_us: (i as i64) * 13,
    }
}

pub fn key(i: usize) -> KeyRecord {
    KeyRecord {
        key_id: format!("03{:064x}", i),
        xpub: format!("xpub661MyMwAqRbcF{i:0>94}"),
        quorum: (i % 3 + 1) as i64,
        origin: if i.is_multiple_of(2) {
            "generated"
        } else {
            "imported"
        }
        .into(),
        created_at_ms: 1_700_000_000_000 + i as i64,
        created_on: format!("node{}", i % 4),
    }
}
