//! The A/B bundle store on a vehicle: two slots, one atomic switch, a journal.
//!
//! ```text
//! STORE/
//!   trust.set          optional signed trust set ([`crate::trust`]): root keys, signing keys
//!                      with expiry, revoked key ids; every deploy and load is checked against it
//!   trust.pub          the older single-key form (replaced by the first trust set installed)
//!   state.toml         which slot runs (active), which one to fall back to (previous), whether
//!                      the active one is still on trial; replaced only by an atomic rename
//!   journal.jsonl      one JSON line per event (deploy, switch, confirm, rollback), fsynced
//!   slots/a/, slots/b/ complete bundle copies
//!   slots/.incoming/   a copy in progress (removed by the next deploy)
//!   lock               held while the store changes
//! ```
//!
//! Why it survives power loss at any point: the active slot is never written to; a deploy
//! copies into `.incoming`, fsyncs every file and directory, verifies the copy (digests and,
//! with a trust key, the signature), renames it into the inactive slot, and only then points
//! `state.toml` at it with one rename of a fsynced temporary file. Before that rename the store
//! names the old bundle, after it the new one, both complete. Loading re-verifies the active
//! slot against the manifest digest recorded in the state, so a slot changed behind the
//! store's back is refused, never run.
//!
//! A new bundle starts on **trial**: the runtime confirms it after it loaded, passed its
//! self-test and ran its first frames, or rolls back to the previous slot and records why.
//!
//! **No downgrades**: `state.toml` keeps, per bundle name, the highest version a run has
//! confirmed (the version is in the signed manifest). A deploy below it, or one whose version
//! cannot be ordered against it ([`crate::version`]), is refused naming both versions, unless
//! the deployer allows the downgrade, which the journal records. A replayed old bundle,
//! validly signed, therefore cannot replace a newer one.
//!
//! **Trust that can change**: with a trust set, a bundle loads only when its signer is listed,
//! unexpired and not revoked, under a set that has not expired. A new set is installed only
//! when a root of the current one signed it and its version is higher (one atomic rename of
//! `trust.set`, journalled). A revoked signer makes its bundles unloadable, the active one
//! included: the runtime's start then rolls back to the other slot and journals why.
//! A bundle whose manifest `expires` has passed is refused at deploy.
//!
//! Fault injection for the power-loss test: with `BEVRT_FAULT_KILL_AT=N` the process kills
//! itself (SIGKILL, no unwinding, no buffered writes) at the N-th [`crash_point`] of a deploy;
//! `BEVRT_FAULT_COUNT_FILE=F` writes how many points a deploy passed.

use crate::atomic::report_crash_points;
pub use crate::atomic::{crash_point, sync_dir, write_atomically};
use crate::bundle::{Bundle, BundleError, MANIFEST_FILE, sha256_file};
use crate::signature::{self, PublicKey, SIGNATURE_FILE};
use crate::time::now_unix;
use crate::trust::{TrustSet, TrustedKey, show_time};
use crate::version::Version;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.toml";
pub const JOURNAL_FILE: &str = "journal.jsonl";
pub const TRUST_FILE: &str = "trust.pub";
pub const TRUST_SET_FILE: &str = "trust.set";
const SLOTS: &str = "slots";
const INCOMING: &str = ".incoming";
/// Copy granularity; also the spacing of crash points inside a file copy.
const COPY_CHUNK: usize = 8 << 10;

// ------------------------------------------------------------------------- durable files

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Copy one file in chunks and fsync it.
fn copy_durably(src: &Path, dst: &Path) -> Result<(), BundleError> {
    let mut from = File::open(src).map_err(io_err(src))?;
    let mut to = File::create(dst).map_err(io_err(dst))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = from.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).map_err(io_err(dst))?;
        crash_point("mid-copy");
    }
    to.sync_all().map_err(io_err(dst))?;
    crash_point("file synced");
    Ok(())
}

// ------------------------------------------------------------------------- state and journal

/// One slot's bundle, as recorded when it was deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub name: String,
    pub version: String,
    /// sha256 of the slot's `bundle.toml`: the manifest names every other file's digest.
    pub manifest_sha256: String,
    pub deployed_unix_s: u64,
}

/// `state.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreState {
    /// Bumped on every change, so a running process sees that the store moved.
    pub generation: u64,
    /// `a` or `b`.
    pub active: String,
    /// The slot to fall back to while the active one is on trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The active slot has not yet been confirmed by a run.
    pub trial: bool,
    #[serde(default)]
    pub slots: std::collections::BTreeMap<String, SlotRecord>,
    /// Per bundle name, the highest version a run has confirmed: deploys below it are refused.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub highest_confirmed: std::collections::BTreeMap<String, String>,
}

/// How a deploy may proceed past the store's rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions {
    /// Deploy although the active slot is still on trial (its fallback is overwritten).
    pub force: bool,
    /// Deploy a version below the highest confirmed one (journalled as `downgrade`).
    pub allow_downgrade: bool,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub unix_s: u64,
    /// deploy, confirm, rollback, refused, recovered.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    pub detail: String,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn other(slot: &str) -> &'static str {
    if slot == "a" { "b" } else { "a" }
}

/// What bundles are verified against.
#[derive(Debug, Clone)]
pub enum Trust {
    /// No key anywhere: digests only, unsigned bundles accepted.
    Unsigned,
    /// One key (the store's `trust.pub`, or `--trust KEY`).
    Key(PublicKey),
    /// The store's trust set; `only` narrows it to one of its signers (`--trust KEY`).
    Set { set: TrustSet, only: Option<String> },
}

/// `trust.set`: the installed trust set, its signature and the root key that verified it at
/// install (it may be a root of the set before, no longer listed after a root rotation).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredTrustSet {
    trust_toml: String,
    minisig: String,
    verified_with: String,
}

/// A bundle store directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

/// The active slot, loaded and verified.
#[derive(Debug, Clone)]
pub struct ActiveBundle {
    pub slot: String,
    pub bundle: Bundle,
    pub trial: bool,
    pub generation: u64,
    /// The signer's key id when the store has a trust key.
    pub signed_by: Option<String>,
}

impl Store {
    /// Open (and with `create`, make) a store directory.
    pub fn open(dir: &Path, create: bool) -> Result<Store, BundleError> {
        if create {
            fs::create_dir_all(dir.join(SLOTS)).map_err(io_err(dir))?;
        }
        if !dir.is_dir() {
            return Err(invalid(
                dir,
                if dir.exists() {
                    "is a file, expected a bundle store directory"
                } else {
                    "no such bundle store directory (`bevrt-tool deploy --store DIR` makes one)"
                },
            ));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn slot_dir(&self, slot: &str) -> PathBuf {
        self.dir.join(SLOTS).join(slot)
    }

    /// The installed trust set, re-verified against the root that admitted it.
    pub fn trust_set(&self) -> Result<Option<TrustSet>, BundleError> {
        let p = self.dir.join(TRUST_SET_FILE);
        if !p.exists() {
            return Ok(None);
        }
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        let stored: StoredTrustSet = serde_json::from_str(&text)
            .map_err(|e| invalid(&p, format!("malformed stored trust set: {e}")))?;
        let root = crate::trust::root_from_public_key(&stored.verified_with)
            .map_err(|e| invalid(&p, format!("its recorded root key: {e}")))?;
        TrustSet::verify(&stored.trust_toml, &stored.minisig, &[root], &p).map(Some)
    }

    /// What deploys and loads are verified against: the trust set when the store has one
    /// (narrowed to `explicit`'s key when given), else `explicit` or `trust.pub`.
    pub fn trust(&self, explicit: Option<&PublicKey>) -> Result<Trust, BundleError> {
        if let Some(set) = self.trust_set()? {
            return Ok(Trust::Set {
                set,
                only: explicit.map(|k| signature::key_id(k.keynum())),
            });
        }
        Ok(match explicit {
            Some(k) => Trust::Key(k.clone()),
            None => self.trust_key()?.map_or(Trust::Unsigned, Trust::Key),
        })
    }

    /// Install the trust set at `path` (signature at `path.minisig`). It must be signed by a
    /// live root of the installed set, or, for a store's first set, by `initial_root` (given
    /// out of band); its version must be higher than the installed one's and it must not have
    /// expired. Replaces `trust.pub` if the store had one.
    pub fn install_trust_set(
        &self,
        path: &Path,
        initial_root: Option<&TrustedKey>,
    ) -> Result<TrustSet, BundleError> {
        let _lock = self.lock()?;
        let r = self.install_trust_set_locked(path, initial_root);
        match &r {
            Ok(set) => self.log("trust", None, None, &format!("installed {}", set.summary())),
            Err(e) => self.log("refused", None, None, &e.to_string()),
        }
        r
    }

    fn install_trust_set_locked(
        &self,
        path: &Path,
        initial_root: Option<&TrustedKey>,
    ) -> Result<TrustSet, BundleError> {
        let (text, sig) = crate::trust::read_signed_pair(path)?;
        let current = self.trust_set()?;
        let roots = match (&current, initial_root) {
            (Some(c), _) => c.live_roots(),
            (None, Some(r)) => vec![r.clone()],
            (None, None) => {
                return Err(invalid(
                    path,
                    "the store has no trust set yet: give the root key that signed this one (--root KEY.pub), obtained out of band",
                ));
            }
        };
        let new = TrustSet::verify(&text, &sig, &roots, path)?;
        if let Some(c) = &current
            && new.version <= c.version
        {
            return Err(invalid(
                path,
                format!(
                    "trust set version {} is not newer than the installed version {}: refusing to go back",
                    new.version, c.version
                ),
            ));
        }
        new.check_fresh(now_unix(), path)?;
        let root = roots
            .iter()
            .find(|r| r.id == new.signed_by)
            .expect("verify found the signing root among these");
        let stored = StoredTrustSet {
            trust_toml: text,
            minisig: sig,
            verified_with: root.key.to_base64(),
        };
        let p = self.dir.join(TRUST_SET_FILE);
        let json = serde_json::to_string_pretty(&stored).expect("trust set serializes");
        write_atomically(&p, json.as_bytes()).map_err(io_err(&p))?;
        let legacy = self.dir.join(TRUST_FILE);
        if legacy.exists() {
            fs::remove_file(&legacy).map_err(io_err(&legacy))?;
            sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        Ok(new)
    }

    /// The store's own trust key (`trust.pub`), if it has one.
    pub fn trust_key(&self) -> Result<Option<PublicKey>, BundleError> {
        let p = self.dir.join(TRUST_FILE);
        if !p.exists() {
            return Ok(None);
        }
        signature::load_public_key(&p.to_string_lossy()).map(Some)
    }

    /// Install `pk_file` as the store's trust key (only when none is there yet).
    pub fn set_trust_key(&self, pk_file: &Path) -> Result<(), BundleError> {
        let p = self.dir.join(TRUST_FILE);
        if self.dir.join(TRUST_SET_FILE).exists() {
            return Err(invalid(
                &p,
                "the store trusts a signed trust set; a single key would bypass it (install a new trust set instead)",
            ));
        }
        let text = fs::read(pk_file).map_err(io_err(pk_file))?;
        signature::load_public_key(&pk_file.to_string_lossy())?;
        if p.exists() {
            if fs::read(&p).map_err(io_err(&p))? == text {
                return Ok(());
            }
            return Err(invalid(
                &p,
                "the store already trusts another key; replacing it is a deliberate act (remove the file by hand)",
            ));
        }
        write_atomically(&p, &text).map_err(io_err(&p))
    }

    fn lock(&self) -> Result<File, BundleError> {
        let p = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        Ok(f)
    }

    /// The current state (`None`: nothing deployed yet).
    pub fn state(&self) -> Result<Option<StoreState>, BundleError> {
        let p = self.dir.join(STATE_FILE);
        if !p.exists() {
            return Ok(None);
        }
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        let s: StoreState = toml::from_str(&text)
            .map_err(|e| invalid(&p, format!("malformed store state: {}", e.message())))?;
        if !matches!(s.active.as_str(), "a" | "b") {
            return Err(invalid(
                &p,
                format!("active slot '{}' is not a or b", s.active),
            ));
        }
        Ok(Some(s))
    }

    fn write_state(&self, s: &StoreState) -> Result<(), BundleError> {
        let p = self.dir.join(STATE_FILE);
        let text = toml::to_string_pretty(s).expect("state serializes");
        write_atomically(&p, text.as_bytes()).map_err(io_err(&p))
    }

    /// Append one fsynced line to the journal.
    pub fn log(&self, event: &str, slot: Option<&str>, bundle: Option<String>, detail: &str) {
        let e = JournalEntry {
            unix_s: unix_now(),
            event: event.into(),
            slot: slot.map(str::to_string),
            bundle,
            detail: detail.into(),
        };
        let p = self.dir.join(JOURNAL_FILE);
        let line = serde_json::to_string(&e).expect("journal entry serializes") + "\n";
        let r = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .and_then(|mut f| {
                f.write_all(line.as_bytes())?;
                f.sync_all()
            });
        if let Err(err) = r {
            log::error!("{}: cannot append to the journal: {err}", p.display());
        }
    }

    /// Every journal entry; a torn last line (power lost mid-append) is skipped.
    pub fn journal(&self) -> Result<Vec<JournalEntry>, BundleError> {
        let p = self.dir.join(JOURNAL_FILE);
        if !p.exists() {
            return Ok(vec![]);
        }
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Copy `src` into the inactive slot, verify it there, and make it the active slot on
    /// trial. `trust` (or the store's `trust.pub`) must have signed it when given; its version
    /// must not be below the highest this store has confirmed for its name.
    pub fn deploy(
        &self,
        src: &Path,
        trust: Option<&PublicKey>,
        opts: DeployOptions,
    ) -> Result<(String, Bundle), BundleError> {
        let _lock = self.lock()?;
        let r = self.deploy_locked(src, trust, opts);
        report_crash_points();
        if let Err(e) = &r {
            self.log("refused", None, None, &e.to_string());
        }
        r
    }

    fn deploy_locked(
        &self,
        src: &Path,
        trust: Option<&PublicKey>,
        opts: DeployOptions,
    ) -> Result<(String, Bundle), BundleError> {
        let trust = self.trust(trust)?;
        let now = now_unix();
        let source = verify_bundle(src, &trust, now)?.0;
        refuse_expired(&source, src, now)?;
        let state = self.state()?;
        let downgrade = check_not_older(state.as_ref(), &source, src, opts.allow_downgrade)?;
        if let Some(s) = &state
            && s.trial
            && !opts.force
        {
            return Err(invalid(
                &self.dir,
                format!(
                    "slot {} is still on trial (not yet confirmed by a run); deploying now would overwrite its fallback. Run it first, or pass --force",
                    s.active
                ),
            ));
        }
        let target = state.as_ref().map(|s| other(&s.active)).unwrap_or("a");
        let incoming = self.dir.join(SLOTS).join(INCOMING);
        self.stage_copy(&source, &incoming)?;
        // The copy, not the source, is what will run: verify it again.
        verify_bundle(&incoming, &trust, now)?;
        let slot_dir = self.slot_dir(target);
        if slot_dir.exists() {
            fs::remove_dir_all(&slot_dir).map_err(io_err(&slot_dir))?;
            crash_point("old slot removed");
        }
        fs::rename(&incoming, &slot_dir).map_err(io_err(&slot_dir))?;
        crash_point("slot renamed");
        sync_dir(&self.dir.join(SLOTS)).map_err(io_err(&self.dir))?;
        let mut next = state.clone().unwrap_or(StoreState {
            generation: 0,
            active: target.into(),
            previous: None,
            trial: true,
            slots: Default::default(),
            highest_confirmed: Default::default(),
        });
        next.generation += 1;
        next.previous = state.as_ref().map(|s| s.active.clone());
        next.active = target.into();
        next.trial = true;
        next.slots.insert(
            target.into(),
            SlotRecord {
                name: source.manifest.name.clone(),
                version: source.manifest.version.clone(),
                manifest_sha256: sha256_file(&slot_dir.join(MANIFEST_FILE))?,
                deployed_unix_s: unix_now(),
            },
        );
        self.write_state(&next)?; // the switch
        crash_point("switched");
        let label = source.label();
        if let Some(detail) = downgrade {
            self.log("downgrade", Some(target), Some(label.clone()), &detail);
        }
        self.log(
            "deploy",
            Some(target),
            Some(label.clone()),
            &format!("from {}; active on trial", src.display()),
        );
        let b = Bundle::load(&slot_dir)?;
        Ok((target.to_string(), b))
    }

    /// Copy the manifest, its signature and the files it names (nothing else) into a fresh
    /// `dst`, each fsynced, and the directories too.
    fn stage_copy(&self, source: &Bundle, dst: &Path) -> Result<(), BundleError> {
        if dst.exists() {
            fs::remove_dir_all(dst).map_err(io_err(dst))?;
        }
        fs::create_dir_all(dst).map_err(io_err(dst))?;
        let mut names: Vec<String> = source.files().map(|f| f.file.clone()).collect();
        names.push(MANIFEST_FILE.into());
        if source.dir.join(SIGNATURE_FILE).exists() {
            names.push(SIGNATURE_FILE.into());
        }
        let mut dirs = vec![dst.to_path_buf()];
        for name in &names {
            let to = dst.join(name);
            if let Some(parent) = to.parent()
                && !parent.exists()
            {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
                dirs.push(parent.to_path_buf());
            }
            copy_durably(&source.dir.join(name), &to)?;
        }
        for d in dirs.iter().rev() {
            sync_dir(d).map_err(io_err(d))?;
        }
        sync_dir(&self.dir.join(SLOTS)).map_err(io_err(&self.dir))?;
        crash_point("staged");
        Ok(())
    }

    /// Load and verify the active slot (digests, the recorded manifest digest, and the
    /// signature when the store has a trust key or `trust` is given).
    pub fn load_active(&self, trust: Option<&PublicKey>) -> Result<ActiveBundle, BundleError> {
        let state = self.state()?.ok_or_else(|| {
            invalid(
                &self.dir,
                "the store holds no deployed bundle yet (`bevrt-tool deploy --store DIR BUNDLE`)",
            )
        })?;
        self.load_slot(&state, &state.active, trust)
    }

    /// Load and verify one slot of `state`.
    pub fn load_slot(
        &self,
        state: &StoreState,
        slot: &str,
        trust: Option<&PublicKey>,
    ) -> Result<ActiveBundle, BundleError> {
        let trust = self.trust(trust)?;
        let dir = self.slot_dir(slot);
        let (bundle, signed_by) = verify_bundle(&dir, &trust, now_unix())?;
        let mpath = dir.join(MANIFEST_FILE);
        let recorded = state.slots.get(slot).ok_or_else(|| {
            invalid(
                &dir,
                "slot has no record in state.toml (not deployed by the store)",
            )
        })?;
        let actual = sha256_file(&mpath)?;
        if actual != recorded.manifest_sha256 {
            return Err(invalid(
                &mpath,
                format!(
                    "differs from the manifest deployed into slot {slot} (sha256 {actual}, deployed {}): changed behind the store's back",
                    recorded.manifest_sha256
                ),
            ));
        }
        Ok(ActiveBundle {
            slot: slot.to_string(),
            bundle,
            trial: state.active == slot && state.trial,
            generation: state.generation,
            signed_by,
        })
    }

    /// The active slot passed its trial: it stays, and is no longer rolled back.
    pub fn confirm(&self, generation: u64, detail: &str) -> Result<bool, BundleError> {
        let _lock = self.lock()?;
        let Some(mut s) = self.state()? else {
            return Ok(false);
        };
        if s.generation != generation || !s.trial {
            return Ok(false); // the store moved on meanwhile
        }
        s.trial = false;
        s.generation += 1;
        if let Some(r) = s.slots.get(&s.active).cloned() {
            raise_highest_confirmed(&mut s, &r);
        }
        self.write_state(&s)?;
        let label = s.slots.get(&s.active).map(record_label);
        self.log("confirm", Some(&s.active), label, detail);
        Ok(true)
    }

    /// The active slot failed (`reason`): make the previous slot active again. Returns the
    /// slot now active, or an error when there is nothing to fall back to.
    pub fn rollback(&self, generation: u64, reason: &str) -> Result<String, BundleError> {
        let _lock = self.lock()?;
        let mut s = self
            .state()?
            .ok_or_else(|| invalid(&self.dir, "nothing deployed"))?;
        if s.generation != generation {
            return Err(invalid(
                &self.dir.join(STATE_FILE),
                "the store changed while the bundle was on trial; not rolling back over the newer state",
            ));
        }
        let failed = s.active.clone();
        let label = s.slots.get(&failed).map(record_label);
        let Some(prev) = s.previous.take() else {
            self.log(
                "failed",
                Some(&failed),
                label,
                &format!("{reason}; no previous slot to roll back to"),
            );
            return Err(invalid(
                &self.slot_dir(&failed),
                format!("{reason}; and the store has no previous bundle to roll back to"),
            ));
        };
        s.active = prev.clone();
        s.trial = false;
        s.generation += 1;
        self.write_state(&s)?;
        self.log(
            "rollback",
            Some(&failed),
            label,
            &format!("{reason}; slot {prev} is active again"),
        );
        Ok(prev)
    }
}

/// Refuses `source` when its version is below (or cannot be ordered against) the highest
/// version this store has confirmed for its name; with `allow`, lets it through and returns
/// what the journal should say.
fn check_not_older(
    state: Option<&StoreState>,
    source: &Bundle,
    src: &Path,
    allow: bool,
) -> Result<Option<String>, BundleError> {
    let name = &source.manifest.name;
    let new = &source.manifest.version;
    let Some(high) = state.and_then(|s| s.highest_confirmed.get(name)) else {
        return Ok(None);
    };
    let problem = match (Version::parse(new), Version::parse(high)) {
        (Some(n), Some(h)) if n >= h => return Ok(None),
        (Some(_), Some(_)) => format!(
            "{name} {new} is older than {name} {high}, the highest version this store has confirmed"
        ),
        _ => format!(
            "{name} {new} cannot be ordered against {name} {high}, the highest version this store has confirmed (versions are MAJOR.MINOR.PATCH[-PRE])"
        ),
    };
    if allow {
        Ok(Some(format!("{problem}; deployed with --allow-downgrade")))
    } else {
        Err(invalid(
            src,
            format!(
                "{problem}: refusing a downgrade (pass --allow-downgrade to deploy it anyway; it is journalled)"
            ),
        ))
    }
}

/// After `r` is confirmed: its version becomes the highest for its name unless a higher one
/// was confirmed before (a version that cannot be ordered replaces the record).
fn raise_highest_confirmed(s: &mut StoreState, r: &SlotRecord) {
    let keep = s.highest_confirmed.get(&r.name).is_some_and(|high| {
        matches!(
            (Version::parse(high), Version::parse(&r.version)),
            (Some(h), Some(v)) if h > v
        )
    });
    if !keep {
        s.highest_confirmed
            .insert(r.name.clone(), r.version.clone());
    }
}

fn record_label(r: &SlotRecord) -> String {
    format!("{} {}", r.name, r.version)
}

/// Load `dir` with its digests checked, and its signature as `trust` requires at `now`;
/// returns the signer's key id.
pub fn verify_bundle(
    dir: &Path,
    trust: &Trust,
    now: i64,
) -> Result<(Bundle, Option<String>), BundleError> {
    let key = match trust {
        Trust::Unsigned => return Ok((Bundle::load(dir)?, None)),
        Trust::Key(k) => k,
        Trust::Set { set, only } => {
            let id = signature::signer_key_id(dir)?;
            let spath = dir.join(SIGNATURE_FILE);
            if let Some(only) = only
                && *only != id
            {
                return Err(invalid(
                    &spath,
                    format!("signed by key {id}, not by the key given with --trust ({only})"),
                ));
            }
            set.signer(&id, now, &spath)?
        }
    };
    let s = signature::load_trusted(dir, key)?;
    Ok((s.bundle, Some(s.key_id)))
}

/// Refuses a bundle whose manifest `expires` has passed.
fn refuse_expired(b: &Bundle, src: &Path, now: i64) -> Result<(), BundleError> {
    match b.manifest.expires_unix() {
        Some(t) if now > t => Err(invalid(
            src,
            format!(
                "{} expired at {} (now {}): refusing to deploy a stale bundle",
                b.label(),
                show_time(t),
                show_time(now)
            ),
        )),
        _ => Ok(()),
    }
}
