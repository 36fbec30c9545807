//! The TPM platform against a software TPM of each test's own: rollback, an interrupted
//! commit, a TPM put back, sealing (another operator key, changed PCRs, another TPM).

use std::str::FromStr;

use custos_test_kit::swtpm::{copy_dir, replace_dir, Swtpm};
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::handles::{NvIndexTpmHandle, PcrHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::structures::{Digest as TpmDigest, DigestValues, NvPublicBuilder};
use tss_esapi::tcti_ldr::TctiNameConf;

use super::*;

fn options(tpm: &Swtpm) -> TpmOptions {
    TpmOptions {
        tcti: tpm.tcti(),
        pcrs: PcrSelection::parse("sha256:23").unwrap(),
        nv_index: DEFAULT_NV_INDEX,
    }
}

fn key_file(dir: &Path, name: &str) -> SealingKeySource {
    let key = dir.join(name);
    if !key.exists() {
        crate::sealed::generate_key_file(&key).unwrap();
    }
    SealingKeySource::KeyFile(key)
}

fn id(name: &str) -> RecordId {
    RecordId::new(name).unwrap()
}

struct Fixture {
    root: tempfile::TempDir,
    tpm: Swtpm,
}

impl Fixture {
    fn new() -> Option<Self> {
        Some(Fixture {
            root: tempfile::tempdir().unwrap(),
            tpm: Swtpm::start()?,
        })
    }

    fn store(&self) -> PathBuf {
        self.root.path().join("store")
    }

    fn open(&self, create: bool) -> Result<TpmPlatform, StoreError> {
        TpmPlatform::open(
            &self.store(),
            &key_file(self.root.path(), "seal.key"),
            &options(&self.tpm),
            create,
        )
    }

    /// The counter as the TPM holds it (the store's own key gives its auth).
    fn counter_of(&self, p: &mut TpmPlatform) -> u64 {
        p.device.counter(p.nv_index, &p.nv_auth).unwrap()
    }
}

#[test]
fn a_store_reopens_with_its_records_and_its_epoch_equal_to_the_counter() {
    let Some(f) = Fixture::new() else { return };
    let mut p = f.open(true).unwrap();
    p.seal(&id("wallet/01"), b"wallet").unwrap();
    p.commit().unwrap();
    let epoch = p.epoch();
    assert_eq!(f.counter_of(&mut p), epoch);
    drop(p);
    let mut p = f.open(false).unwrap();
    assert_eq!(p.epoch(), epoch);
    assert_eq!(f.counter_of(&mut p), epoch);
    assert_eq!(&p.unseal(&id("wallet/01")).unwrap().unwrap()[..], b"wallet");
    // The key never reaches the disk: only the TPM's blobs do.
    let blobs = std::fs::read(f.store().join(BLOBS_FILE)).unwrap();
    assert!(blobs.len() > 100);
}

/// The attack: copy the store after a presignature is made, use it, put the copy back and
/// restart. The software platform opens the copy (its limit, `tests/it/store.rs`); here the
/// store is older than the TPM's counter and is refused: the used presignature never comes
/// back.
#[test]
fn a_copy_of_the_store_put_back_is_refused_as_rolled_back() {
    let Some(f) = Fixture::new() else { return };
    let mut p = f.open(true).unwrap();
    p.seal(&id("presign/aa"), b"presignature").unwrap();
    p.commit().unwrap();
    drop(p);
    let copy = f.root.path().join("copy");
    copy_dir(&f.store(), &copy);
    let mut p = f.open(false).unwrap();
    p.remove(&id("presign/aa")).unwrap();
    p.commit().unwrap();
    let used_at = p.epoch();
    drop(p);
    replace_dir(&f.store(), &copy);
    match f.open(false) {
        Err(e @ StoreError::RolledBack { .. }) => {
            assert_eq!(e.code(), "store_rolled_back");
            let StoreError::RolledBack {
                store_epoch,
                counter,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!((store_epoch, counter), (used_at - 1, used_at));
        }
        Err(e) => panic!("expected store_rolled_back, got {e}"),
        Ok(_) => panic!("a store put back from a copy was opened"),
    }
}

/// The crash between the two steps of a commit, made real: the TPM goes away after the store
/// was written and before the counter moved. The commit fails and nothing more is committed;
/// after a restart the store opens (no false alarm), the counter is brought level, and the
/// record written is there.
#[test]
fn a_commit_cut_before_the_counter_is_finished_at_the_next_open() {
    let Some(mut f) = Fixture::new() else { return };
    let mut p = f.open(true).unwrap();
    p.seal(&id("wallet/01"), b"wallet").unwrap();
    f.tpm.stop();
    let e = p.commit().unwrap_err();
    assert!(e.to_string().contains("did not advance"), "{e}");
    p.seal(&id("wallet/02"), b"another").unwrap();
    assert!(p.commit().is_err(), "a poisoned store committed again");
    assert!(
        p.unseal(&id("wallet/02")).unwrap().is_none(),
        "a refused commit left its writes visible"
    );
    let written = p.epoch();
    drop(p);
    f.tpm.run();
    let mut p = f.open(false).unwrap();
    assert_eq!(p.epoch(), written);
    assert_eq!(f.counter_of(&mut p), written);
    assert!(p.unseal(&id("wallet/01")).unwrap().is_some());
    assert!(p.unseal(&id("wallet/02")).unwrap().is_none());
}

/// The TPM's own state put back (what a copied software TPM folder does) leaves the counter
/// behind the store: refused by name.
#[test]
fn a_tpm_state_put_back_is_refused_as_counter_behind() {
    let Some(mut f) = Fixture::new() else { return };
    drop(f.open(true).unwrap());
    f.tpm.stop();
    let old_tpm = f.root.path().join("old-tpm");
    copy_dir(f.tpm.state_dir(), &old_tpm);
    f.tpm.run();
    let mut p = f.open(false).unwrap();
    for i in 0..2 {
        p.seal(&id(&format!("wallet/{i}")), b"w").unwrap();
        p.commit().unwrap();
    }
    drop(p);
    f.tpm.stop();
    replace_dir(f.tpm.state_dir(), &old_tpm);
    f.tpm.run();
    let e = f.open(false).err().expect("opened on a TPM put back");
    assert_eq!(e.code(), "tpm_counter_behind", "{e}");
}

#[test]
fn another_operator_key_changed_pcrs_or_another_tpm_cannot_open_the_store() {
    let Some(f) = Fixture::new() else { return };
    let mut p = f.open(true).unwrap();
    p.seal(&id("wallet/01"), b"wallet").unwrap();
    p.commit().unwrap();
    drop(p);

    let other_key = key_file(f.root.path(), "other.key");
    let e = TpmPlatform::open(&f.store(), &other_key, &options(&f.tpm), false)
        .err()
        .expect("opened with another operator key");
    assert_eq!(e.code(), "wrong_sealing_key", "{e}");

    // The software platform is refused by name, whatever the key.
    let e = crate::SoftwarePlatform::open(&f.store(), &key_file(f.root.path(), "seal.key"), false)
        .err()
        .expect("the software platform opened a TPM store");
    assert_eq!(e.code(), "platform_mismatch", "{e}");

    let other = Swtpm::start().unwrap();
    let e = TpmPlatform::open(
        &f.store(),
        &key_file(f.root.path(), "seal.key"),
        &options(&other),
        false,
    )
    .err()
    .expect("opened on another TPM");
    assert_eq!(e.code(), "tpm_error", "{e}");
    assert!(e.to_string().contains("another TPM"), "{e}");
    drop(other);

    // PCR 23 extended (as a changed boot measurement would): the TPM refuses to unseal.
    {
        let mut ctx =
            tss_esapi::Context::new(TctiNameConf::from_str(&f.tpm.tcti()).unwrap()).unwrap();
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            TpmDigest::try_from(vec![7u8; 32]).unwrap(),
        );
        ctx.execute_with_nullauth_session(|c| c.pcr_extend(PcrHandle::Pcr23, values))
            .unwrap();
    }
    let e = f.open(false).err().expect("opened with other PCR values");
    assert_eq!(e.code(), "tpm_error", "{e}");
    assert!(e.to_string().contains("PCRs sha256:23 differ"), "{e}");
}

/// Someone with the folder (not the TPM's secrets) empties or removes parts of it: never a
/// silent new start, never a new key over the old one.
#[test]
fn a_store_emptied_or_missing_its_files_is_refused_by_name() {
    let Some(f) = Fixture::new() else { return };
    let mut p = f.open(true).unwrap();
    p.seal(&id("wallet/01"), b"wallet").unwrap();
    p.commit().unwrap();
    drop(p);
    let keep = f.root.path().join("keep");
    copy_dir(&f.store(), &keep);

    // The records replaced by an empty database, even with --init.
    std::fs::remove_file(f.store().join(DB_FILE)).unwrap();
    drop(redb::Database::create(f.store().join(DB_FILE)).unwrap());
    let e = f.open(true).err().expect("an emptied store was opened");
    assert_eq!(e.code(), "store_tampered", "{e}");
    replace_dir(&f.store(), &keep);

    // The TPM's blobs gone: named, and no new key is made in their place.
    std::fs::remove_file(f.store().join(BLOBS_FILE)).unwrap();
    let e = f.open(true).err().expect("opened without tpm.bin");
    assert_eq!(e.code(), "store_meta", "{e}");
    assert!(!f.store().join(BLOBS_FILE).exists());
    replace_dir(&f.store(), &keep);

    // store.meta gone: --init does not make a new store over the old records.
    std::fs::remove_file(f.store().join("store.meta")).unwrap();
    let e = f
        .open(true)
        .err()
        .expect("a new store was made over old records");
    assert_eq!(e.code(), "store_meta", "{e}");
    replace_dir(&f.store(), &keep);
    let mut p = f.open(false).expect("the store put back as it was opens");
    assert!(p.unseal(&id("wallet/01")).unwrap().is_some());
}

/// The counter undefined by the owner and an ordinary index defined in its place (which,
/// unlike a counter, could be written back to an old value): refused by name.
#[test]
fn a_counter_replaced_by_an_ordinary_index_is_refused() {
    let Some(f) = Fixture::new() else { return };
    drop(f.open(true).unwrap());
    {
        let mut ctx =
            tss_esapi::Context::new(TctiNameConf::from_str(&f.tpm.tcti()).unwrap()).unwrap();
        let index = NvIndexTpmHandle::new(DEFAULT_NV_INDEX).unwrap();
        let h = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(index)))
            .unwrap();
        ctx.execute_with_nullauth_session(|c| c.nv_undefine_space(Provision::Owner, h.into()))
            .unwrap();
        let attrs = NvIndexAttributesBuilder::new()
            .with_nv_index_type(NvIndexType::Ordinary)
            .with_owner_write(true)
            .with_owner_read(true)
            .with_auth_read(true)
            .build()
            .unwrap();
        let public = NvPublicBuilder::new()
            .with_nv_index(index)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attrs)
            .with_data_area_size(8)
            .build()
            .unwrap();
        ctx.execute_with_nullauth_session(|c| c.nv_define_space(Provision::Owner, None, public))
            .unwrap();
    }
    let e = f.open(false).err().expect("opened on a replaced counter");
    assert_eq!(e.code(), "tpm_error", "{e}");
    assert!(e.to_string().contains("was replaced"), "{e}");
}

/// The splice: today's store with a used presignature's old record put back (with redb
/// itself, from an older copy). The TPM platform refuses the store (the software platform
/// names it and opens, `tests/it/store.rs`).
#[test]
fn a_record_put_back_from_an_older_copy_is_refused() {
    const RECORDS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("records");
    let Some(f) = Fixture::new() else { return };
    let mut p = f.open(true).unwrap();
    p.seal(&id("presign/aa"), b"presignature").unwrap();
    p.commit().unwrap();
    drop(p);
    let db = f.store().join(DB_FILE);
    let old = {
        let db = redb::Database::open(&db).unwrap();
        let rtx = db.begin_read().unwrap();
        let table = rtx.open_table(RECORDS).unwrap();
        let blob = table.get("presign/aa").unwrap().unwrap().value().to_vec();
        blob
    };
    let mut p = f.open(false).unwrap();
    p.remove(&id("presign/aa")).unwrap();
    p.commit().unwrap();
    drop(p);
    {
        let db = redb::Database::open(&db).unwrap();
        let wtx = db.begin_write().unwrap();
        wtx.open_table(RECORDS)
            .unwrap()
            .insert("presign/aa", old.as_slice())
            .unwrap();
        wtx.commit().unwrap();
    }
    let e = f
        .open(false)
        .err()
        .expect("a used record put back was accepted");
    assert_eq!(e.code(), "store_tampered", "{e}");
}
