//! Trust and updates: `keygen`, `bundle sign|selftest`, `deploy`, `store status`,
//! `trust sign|install|show` (signed trust sets, [`bevrt_models::trust`]).
//!
//! Key handling follows minisign: the public key (`.pub`) goes to the vehicle (or into the
//! store as `trust.pub`), the secret key (`.key`) stays on the signing host. A password comes
//! from `--password-file` or `BEVRT_KEY_PASSWORD`; without one the secret key is written
//! unencrypted (as `minisign -W` does), which the command says.

use anyhow::Context;
use bevrt_models::signature;
use bevrt_models::store::{DeployOptions, Store, Trust};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.pub and PREFIX.key (refuses to overwrite either).
    #[arg(long)]
    pub out: PathBuf,
    /// File holding the password that encrypts the secret key (or set BEVRT_KEY_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// Bundle directory.
    pub dir: PathBuf,
    /// minisign secret key file (from `bevrt-tool keygen` or `minisign -G`).
    #[arg(long)]
    pub key: PathBuf,
    /// File holding the secret key's password (or set BEVRT_KEY_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// Bundle directory.
    pub dir: PathBuf,
    /// Record test vectors with the CPU reference backend (replaces earlier ones; the bundle
    /// must be signed again afterwards).
    #[arg(long)]
    pub record: bool,
    /// Allowed deviation per output, as a share of max(1, max |expected|).
    #[arg(long, default_value_t = bevrt_runtime::selftest::DEFAULT_TOLERANCE)]
    pub tolerance: f32,
    /// Check on this backend (without --record).
    #[arg(long, default_value = "auto", value_parser = crate::cli::choice::<bevrt_runtime::BackendKind>())]
    pub backend: bevrt_runtime::BackendKind,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// Bundle directory to install.
    pub bundle: PathBuf,
    /// Store directory (created when missing).
    #[arg(long)]
    pub store: PathBuf,
    /// Public key the bundle must be signed by; installed as the store's trust.pub when the
    /// store has none yet (from then on every deploy and load must be signed by it).
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Deploy even though the active slot is still on trial (overwrites its fallback).
    #[arg(long)]
    pub force: bool,
    /// Deploy a version below the highest this store has confirmed (or one that cannot be
    /// ordered against it); the journal records the downgrade.
    #[arg(long)]
    pub allow_downgrade: bool,
}

#[derive(clap::Subcommand)]
pub enum StoreCmd {
    /// Active slot, trial state, slots and the journal.
    Status(StoreStatusArgs),
}

#[derive(clap::Args)]
pub struct StoreStatusArgs {
    #[arg(long)]
    pub store: PathBuf,
    /// Journal lines to show (newest last).
    #[arg(long, default_value_t = 20)]
    pub journal: usize,
    /// Verify the active slot's files and signature too.
    #[arg(long)]
    pub verify: bool,
}

#[derive(clap::Subcommand)]
pub enum TrustCmd {
    /// Sign a trust set with a root key (writes FILE.minisig, as `minisign -Sm FILE` does).
    Sign(TrustSignArgs),
    /// Install a signed trust set into a store: signed by a root of the installed set (or,
    /// for the first one, by --root), a higher version, not expired. Journalled.
    Install(TrustInstallArgs),
    /// Check a signed trust set and print what it trusts.
    Show(TrustShowArgs),
}

#[derive(clap::Args)]
pub struct TrustSignArgs {
    /// The trust set (TOML).
    pub file: PathBuf,
    /// The root's minisign secret key.
    #[arg(long)]
    pub key: PathBuf,
    /// File holding the secret key's password (or set BEVRT_KEY_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TrustInstallArgs {
    /// The trust set (TOML), its signature beside it as FILE.minisig.
    pub file: PathBuf,
    #[arg(long)]
    pub store: PathBuf,
    /// The root public key that signed the store's first trust set (given out of band; not
    /// needed later: each set is verified by the roots of the one before).
    #[arg(long)]
    pub root: Option<String>,
}

#[derive(clap::Args)]
pub struct TrustShowArgs {
    /// The trust set (TOML), its signature beside it as FILE.minisig.
    pub file: PathBuf,
    /// Root public key it must be signed by.
    #[arg(long)]
    pub root: String,
}

fn password(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        anyhow::ensure!(
            !f.is_dir(),
            "{}: is a directory, expected a password file",
            f.display()
        );
        let p =
            std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?;
        return Ok(Some(p.trim_end_matches(['\n', '\r']).to_string()));
    }
    Ok(std::env::var("BEVRT_KEY_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty()))
}

pub fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    let pk_path = a.out.with_extension("pub");
    let sk_path = a.out.with_extension("key");
    for p in [&pk_path, &sk_path] {
        anyhow::ensure!(
            !p.exists(),
            "{}: already exists; refusing to overwrite a key",
            p.display()
        );
    }
    let pw = password(a.password_file.as_deref())?;
    let encrypted = pw.is_some();
    let (pk, sk) = signature::generate_keypair(pw).map_err(|e| anyhow::anyhow!("keygen: {e}"))?;
    if let Some(d) = pk_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    std::fs::write(&pk_path, pk).with_context(|| format!("{}: cannot write", pk_path.display()))?;
    write_private(&sk_path, sk.as_bytes())?;
    let key = signature::load_public_key(&pk_path.to_string_lossy())?;
    println!(
        "public key {} (key id {})",
        pk_path.display(),
        signature::key_id(key.keynum())
    );
    println!(
        "secret key {}{}",
        sk_path.display(),
        if encrypted {
            " (encrypted)"
        } else {
            " (NOT encrypted: keep it on the signing host; give --password-file to encrypt)"
        }
    );
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

pub fn sign(a: &SignArgs) -> anyhow::Result<()> {
    let sk = signature::load_secret_key(&a.key, password(a.password_file.as_deref())?)?;
    let sig = signature::sign_bundle(&a.dir, &sk)?;
    println!(
        "signed {} with key {} -> {}",
        a.dir.display(),
        signature::key_id(sk.keynum()),
        sig.display()
    );
    Ok(())
}

pub fn selftest(a: &SelftestArgs) -> anyhow::Result<()> {
    if a.record {
        let st = bevrt_runtime::selftest::record(&a.dir, a.tolerance)?;
        println!(
            "{}: recorded a self-test frame and {} output(s) with {} (tolerance {})",
            a.dir.display(),
            st.outputs.len(),
            st.recorded_with,
            st.tolerance
        );
        return Ok(());
    }
    let b = bevrt_models::Bundle::load(&a.dir)?;
    let mut be = bevrt_runtime::backend::open(a.backend, &b, &Default::default())?;
    match bevrt_runtime::selftest::check(&mut *be, &b)? {
        Some(r) => println!(
            "{}: self-test passed on {}: {}",
            a.dir.display(),
            be.describe(),
            r.line()
        ),
        None => anyhow::bail!(
            "{}: the bundle carries no self-test vectors (record them with --record)",
            a.dir.display()
        ),
    }
    Ok(())
}

pub fn deploy(a: &DeployArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.store, true)?;
    let trust = match &a.trust {
        Some(p) => {
            let k = signature::load_public_key(&p.to_string_lossy())?;
            if store.trust_key()?.is_none() && store.trust_set()?.is_none() {
                store.set_trust_key(p)?;
                println!(
                    "{}: now trusts key {}",
                    a.store.display(),
                    signature::key_id(k.keynum())
                );
            }
            Some(k)
        }
        None => None,
    };
    let opts = DeployOptions {
        force: a.force,
        allow_downgrade: a.allow_downgrade,
    };
    let (slot, b) = store.deploy(&a.bundle, trust.as_ref(), opts)?;
    println!(
        "deployed {} {} into slot {slot} of {} (active, on trial until a run confirms it)",
        b.manifest.name,
        b.manifest.version,
        a.store.display()
    );
    Ok(())
}

pub fn trust(c: &TrustCmd) -> anyhow::Result<()> {
    use bevrt_models::trust::{self, TrustSet};
    match c {
        TrustCmd::Sign(a) => {
            let sk = signature::load_secret_key(&a.key, password(a.password_file.as_deref())?)?;
            let sig = signature::sign_file(&a.file, &sk, "bevrt trust set")?;
            println!(
                "signed {} with key {} -> {}",
                a.file.display(),
                signature::key_id(sk.keynum()),
                sig.display()
            );
        }
        TrustCmd::Install(a) => {
            let store = Store::open(&a.store, true)?;
            let root = a
                .root
                .as_deref()
                .map(trust::root_from_public_key)
                .transpose()?;
            let set = store.install_trust_set(&a.file, root.as_ref())?;
            println!("{}: installed {}", a.store.display(), set.summary());
        }
        TrustCmd::Show(a) => {
            let root = trust::root_from_public_key(&a.root)?;
            let (text, sig) = trust::read_signed_pair(&a.file)?;
            let set = TrustSet::verify(&text, &sig, &[root], &a.file)?;
            println!("{}: {}", a.file.display(), set.summary());
            let now = bevrt_models::time::now_unix();
            if let Err(e) = set.check_fresh(now, &a.file) {
                println!("{e}");
            }
        }
    }
    Ok(())
}

pub fn store(c: &StoreCmd) -> anyhow::Result<()> {
    let StoreCmd::Status(a) = c;
    let store = Store::open(&a.store, false)?;
    let trust = match store.trust(None)? {
        Trust::Set { set, .. } => set.summary(),
        Trust::Key(k) => format!("trusts key {}", signature::key_id(k.keynum())),
        Trust::Unsigned => "no trust key (unsigned bundles accepted)".into(),
    };
    println!("store {}: {trust}", a.store.display());
    match store.state()? {
        None => println!("nothing deployed"),
        Some(s) => {
            println!(
                "active slot {}{} (generation {}), previous {}",
                s.active,
                if s.trial { " ON TRIAL" } else { "" },
                s.generation,
                s.previous.as_deref().unwrap_or("none")
            );
            for (name, v) in &s.highest_confirmed {
                println!("  highest confirmed {name} {v} (older versions are refused)");
            }
            for (slot, r) in &s.slots {
                println!(
                    "  slot {slot}: {} {} (manifest sha256 {}…)",
                    r.name,
                    r.version,
                    &r.manifest_sha256[..12.min(r.manifest_sha256.len())]
                );
            }
            if a.verify {
                let act = store.load_active(None)?;
                println!(
                    "  active slot verified{}",
                    act.signed_by
                        .map(|k| format!(", signed by {k}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    let j = store.journal()?;
    for e in j.iter().skip(j.len().saturating_sub(a.journal)) {
        println!(
            "  {} {:<8} {} {} {}",
            e.unix_s,
            e.event,
            e.slot.as_deref().unwrap_or("-"),
            e.bundle.as_deref().unwrap_or("-"),
            e.detail
        );
    }
    Ok(())
}
