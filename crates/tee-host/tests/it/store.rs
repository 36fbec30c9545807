//! The software store's epoch record: a record put back from an older copy, or taken out, is
//! noticed and named at open (the software platform opens anyway, so that a damaged record is
//! refused on use and repaired by sync; the TPM platform refuses such a store, see
//! `tpm::tests`), and (its documented limit) a whole older copy put back opens unnoticed.

use std::path::Path;

use custos_tee_core::platform::{Platform, RecordId};
use custos_tee_host::{SealingKeySource, SoftwarePlatform};
use custos_test_kit::swtpm::copy_dir;

const RECORDS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("records");

fn key_file(dir: &Path) -> SealingKeySource {
    let key = dir.join("seal.key");
    if !key.exists() {
        custos_tee_host::sealed::generate_key_file(&key).unwrap();
    }
    SealingKeySource::KeyFile(key)
}

fn id(name: &str) -> RecordId {
    RecordId::new(name).unwrap()
}

/// The raw sealed blob of `name` in the store at `dir`.
fn raw(dir: &Path, name: &str) -> Option<Vec<u8>> {
    let db = redb::Database::open(dir.join("sealed.redb")).unwrap();
    let rtx = db.begin_read().unwrap();
    let table = rtx.open_table(RECORDS).unwrap();
    let value = table.get(name).unwrap().map(|v| v.value().to_vec());
    value
}

/// Writes (or with `None`, deletes) the raw blob of `name` with redb itself: what someone
/// with the folder and an older copy of it can do.
fn splice(dir: &Path, name: &str, blob: Option<&[u8]>) {
    let db = redb::Database::open(dir.join("sealed.redb")).unwrap();
    let wtx = db.begin_write().unwrap();
    {
        let mut table = wtx.open_table(RECORDS).unwrap();
        match blob {
            Some(b) => {
                table.insert(name, b).unwrap();
            }
            None => {
                table.remove(name).unwrap();
            }
        }
    }
    wtx.commit().unwrap();
}

/// A store with a presignature `presign/aa` that was then used (deleted), and the blob it
/// had before.
fn store_with_used_record(root: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let dir = root.join("store");
    let mut p = SoftwarePlatform::open(&dir, &key_file(root), true).unwrap();
    p.seal(&id("wallet/01"), b"wallet").unwrap();
    p.seal(&id("presign/aa"), b"presignature").unwrap();
    p.commit().unwrap();
    drop(p);
    let old = raw(&dir, "presign/aa").expect("sealed");
    let mut p = SoftwarePlatform::open(&dir, &key_file(root), false).unwrap();
    p.remove(&id("presign/aa")).unwrap();
    p.seal(&id("wallet/02"), b"wallet 2").unwrap();
    p.commit().unwrap();
    drop(p);
    (dir, old)
}

#[test]
fn a_record_put_back_from_an_older_copy_is_named_at_open() {
    let root = tempfile::tempdir().unwrap();
    let (dir, old) = store_with_used_record(root.path());
    // Untouched, it opens clean and the used record is gone.
    let mut p = SoftwarePlatform::open(&dir, &key_file(root.path()), false).unwrap();
    assert!(p.unseal(&id("presign/aa")).unwrap().is_none());
    assert_eq!(p.record_set_mismatch(), None);
    drop(p);

    splice(&dir, "presign/aa", Some(&old));
    let p = SoftwarePlatform::open(&dir, &key_file(root.path()), false).unwrap();
    let why = p
        .record_set_mismatch()
        .expect("a used record put back went unnoticed");
    assert!(why.contains("put back"), "{why}");
}

#[test]
fn a_record_taken_out_or_the_epoch_record_removed_is_named_at_open() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = store_with_used_record(root.path());
    let wallet = raw(&dir, "wallet/01").unwrap();
    splice(&dir, "wallet/01", None);
    let p = SoftwarePlatform::open(&dir, &key_file(root.path()), false).unwrap();
    assert!(
        p.record_set_mismatch().is_some(),
        "a record taken out went unnoticed"
    );
    drop(p);
    splice(&dir, "wallet/01", Some(&wallet));
    let p = SoftwarePlatform::open(&dir, &key_file(root.path()), false).expect("restored");
    assert_eq!(p.record_set_mismatch(), None);
    drop(p);

    // Without its epoch record, a store that had one is no longer believed.
    splice(&dir, "epoch", None);
    let p = SoftwarePlatform::open(&dir, &key_file(root.path()), false).unwrap();
    let why = p
        .record_set_mismatch()
        .expect("the epoch record removed went unnoticed");
    assert!(why.contains("missing"), "{why}");
}

#[test]
fn a_wrong_key_is_named_before_anything_else() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = store_with_used_record(root.path());
    let other = tempfile::tempdir().unwrap();
    let e = SoftwarePlatform::open(&dir, &key_file(other.path()), false)
        .err()
        .expect("opened with another key");
    assert_eq!(e.code(), "wrong_sealing_key", "{e}");
}

/// The software platform's limit, shown: its counter lives in the store, so the whole folder
/// copied and put back later opens, with the used record back. The TPM platform refuses this
/// (`store_rolled_back`).
#[test]
fn the_software_platform_cannot_refuse_a_whole_folder_put_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let mut p = SoftwarePlatform::open(&dir, &key_file(root.path()), true).unwrap();
    p.seal(&id("presign/aa"), b"presignature").unwrap();
    p.commit().unwrap();
    drop(p);
    let copy = root.path().join("copy");
    copy_dir(&dir, &copy);
    let mut p = SoftwarePlatform::open(&dir, &key_file(root.path()), false).unwrap();
    p.remove(&id("presign/aa")).unwrap();
    p.commit().unwrap();
    drop(p);
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&copy, &dir);
    let mut p = SoftwarePlatform::open(&dir, &key_file(root.path()), false).unwrap();
    assert!(p.unseal(&id("presign/aa")).unwrap().is_some());
    assert_eq!(p.record_set_mismatch(), None);
}
