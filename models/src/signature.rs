//! Signed bundles, in the minisign format (Ed25519; <https://jedisct1.github.io/minisign/>).
//!
//! What is signed: the manifest's bytes, `bundle.toml`. The manifest names every other file of
//! the bundle with its sha256, so one signature covers them all; the signature sits beside it
//! as `bundle.toml.minisig`, exactly the file `minisign -Sm bundle.toml` writes, so Debian's
//! `minisign` signs and verifies bevrt bundles and bevrt verifies its signatures.
//!
//! A trusted load ([`load_trusted`]) refuses, naming the file and the reason:
//! - a missing or unreadable signature, one by another key, or one that does not match;
//! - a file whose sha256 differs from the signed manifest;
//! - a file in the bundle directory the manifest does not name (nothing unsigned rides along).
//!
//! The manifest is parsed from the very bytes whose signature was checked, never re-read.
//! Keys are minisign key files; a public key may also be given as its base64 line, as
//! `minisign -P` takes it. Secret keys are scrypt-encrypted when a password is given.

use crate::bundle::{Bundle, BundleError, MANIFEST_FILE, Manifest};
use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Name of the signature file inside a bundle directory.
pub const SIGNATURE_FILE: &str = "bundle.toml.minisig";

pub use minisign::{PublicKey, SecretKey};

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_text(path: &Path, what: &str) -> Result<String, BundleError> {
    if path.is_dir() {
        return Err(invalid(
            path,
            format!("is a directory, expected a {what} file"),
        ));
    }
    std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The key id minisign prints (`minisign -V` and the public key's comment), upper-case hex.
pub fn key_id(keynum: &[u8]) -> String {
    let mut id = [0u8; 8];
    id.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(id))
}

/// A public key from a minisign `.pub` file, or from its base64 line given directly.
pub fn load_public_key(spec: &str) -> Result<PublicKey, BundleError> {
    let path = Path::new(spec);
    if path.exists() {
        let text = read_text(path, "minisign public key")?;
        return minisign::PublicKeyBox::from_string(&text)
            .and_then(|b| b.into_public_key())
            .map_err(|e| invalid(path, format!("not a minisign public key: {e}")));
    }
    if spec.len() == 56 && spec.starts_with("RW") {
        return PublicKey::from_base64(spec)
            .map_err(|e| invalid(path, format!("not a minisign public key: {e}")));
    }
    Err(invalid(
        path,
        "no such public key file (give a minisign .pub file or its base64 line)",
    ))
}

/// A secret key from a minisign key file; `password` decrypts an encrypted one.
///
/// Unencrypted keys (`minisign -G -W`, `bevrt-tool keygen` without a password) are read from
/// their bytes directly: the C tool leaves their checksum field zero, which the crate's
/// unencrypted-box reader rejects as corrupt.
pub fn load_secret_key(path: &Path, password: Option<String>) -> Result<SecretKey, BundleError> {
    use ct_codecs::{Base64, Decoder};
    let text = read_text(path, "minisign secret key")?;
    let not_key = |why: &str| invalid(path, format!("not a minisign secret key: {why}"));
    let line = text
        .lines()
        .nth(1)
        .ok_or_else(|| not_key("no key line"))?
        .trim();
    let bytes =
        Base64::decode_to_vec(line, None).map_err(|_| not_key("the key line is not base64"))?;
    if bytes.len() != 158 || &bytes[..2] != b"Ed" {
        return Err(not_key("unexpected length or algorithm"));
    }
    let key = if bytes[2..4] == [0, 0] {
        SecretKey::from_bytes(&bytes).map_err(|e| not_key(&e.to_string()))?
    } else {
        let Some(p) = password else {
            return Err(invalid(
                path,
                "the secret key is encrypted: give its password (--password-file or BEVRT_KEY_PASSWORD)",
            ));
        };
        minisign::SecretKeyBox::from_string(&text)
            .and_then(|b| b.into_secret_key(Some(p)))
            .map_err(|e| invalid(path, format!("cannot open the secret key: {e}")))?
    };
    if key.is_encrypted() {
        return Err(invalid(path, "wrong password for the secret key"));
    }
    Ok(key)
}

/// A new key pair as (public key file text, secret key file text); the secret key is
/// encrypted with `password` when one is given.
pub fn generate_keypair(password: Option<String>) -> Result<(String, String), String> {
    let kp = match password {
        Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| e.to_string())?;
    let id = key_id(kp.pk.keynum());
    let pk = kp.pk.to_box().map_err(|e| e.to_string())?.into_string();
    let sk = kp
        .sk
        .to_box(Some(&format!("bevrt secret key {id}")))
        .map_err(|e| e.to_string())?
        .into_string();
    Ok((pk, sk))
}

/// Sign `dir/bundle.toml` (after checking the bundle's digests), writing
/// `dir/bundle.toml.minisig`. The trusted comment names the bundle.
pub fn sign_bundle(dir: &Path, sk: &SecretKey) -> Result<PathBuf, BundleError> {
    let bundle = Bundle::load(dir)?;
    let comment = format!(
        "bevrt bundle {} {} task {}",
        bundle.manifest.name, bundle.manifest.version, bundle.manifest.task
    );
    sign_file(&dir.join(MANIFEST_FILE), sk, &comment)
}

/// Sign any file, writing `FILE.minisig` beside it (as `minisign -Sm FILE -t COMMENT` does).
pub fn sign_file(path: &Path, sk: &SecretKey, comment: &str) -> Result<PathBuf, BundleError> {
    let bytes = std::fs::read(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sig = minisign::sign(None, sk, Cursor::new(&bytes), Some(comment), None)
        .map_err(|e| invalid(path, format!("cannot sign: {e}")))?;
    let mut spath = path.as_os_str().to_owned();
    spath.push(".minisig");
    let spath = PathBuf::from(spath);
    crate::atomic::write_atomically(&spath, sig.into_string().as_bytes()).map_err(|source| {
        BundleError::Io {
            path: spath.clone(),
            source,
        }
    })?;
    Ok(spath)
}

/// A bundle's signature file, parsed (not yet checked against anything).
fn read_signature(dir: &Path) -> Result<minisign::SignatureBox, BundleError> {
    let spath = dir.join(SIGNATURE_FILE);
    if !spath.exists() {
        return Err(invalid(
            &spath,
            "unsigned bundle: no signature (sign it with `bevrt-tool bundle sign` or `minisign -Sm bundle.toml`)",
        ));
    }
    let sig_text = read_text(&spath, "minisign signature")?;
    let sig = minisign::SignatureBox::from_string(&sig_text)
        .map_err(|e| invalid(&spath, format!("not a minisign signature: {e}")))?;
    Ok(sig)
}

/// The key id a bundle's signature names (before any check of the signature itself).
pub fn signer_key_id(dir: &Path) -> Result<String, BundleError> {
    Ok(key_id(read_signature(dir)?.keynum()))
}

/// What a successful trusted load saw.
#[derive(Debug, Clone)]
pub struct Signed {
    pub bundle: Bundle,
    /// The signer's key id.
    pub key_id: String,
    /// The signature's trusted comment.
    pub trusted_comment: String,
}

/// Load a bundle only if `pk` signed its manifest and every byte of it is what the manifest
/// says (see the module doc for what is refused).
pub fn load_trusted(dir: &Path, pk: &PublicKey) -> Result<Signed, BundleError> {
    let dir_ok = Bundle::load_unverified(dir)?; // the directory and manifest exist and parse
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&mpath).map_err(|source| BundleError::Io {
        path: mpath.clone(),
        source,
    })?;
    let spath = dir.join(SIGNATURE_FILE);
    let sig = read_signature(dir)?;
    let (signer, trusted) = (key_id(sig.keynum()), key_id(pk.keynum()));
    if signer != trusted {
        return Err(invalid(
            &spath,
            format!("signed by key {signer}, not by the trusted key {trusted}"),
        ));
    }
    minisign::verify(pk, &sig, Cursor::new(&bytes), true, false, false).map_err(|e| {
        invalid(
            &mpath,
            format!("signature check failed ({e}): the manifest or its signature was altered"),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| invalid(&mpath, "not UTF-8 text"))?;
    let manifest = Manifest::parse(&text, &mpath)?;
    let bundle = Bundle {
        dir: dir_ok.dir,
        manifest,
    };
    bundle.verify()?;
    refuse_unlisted_files(&bundle)?;
    Ok(Signed {
        bundle,
        key_id: signer,
        trusted_comment: sig.trusted_comment().unwrap_or_default(),
    })
}

/// Every regular file under the bundle directory must be the manifest, its signature or a
/// file the manifest names; links and other special files are refused outright.
fn refuse_unlisted_files(b: &Bundle) -> Result<(), BundleError> {
    let mut listed: BTreeSet<PathBuf> = b.files().map(|f| PathBuf::from(&f.file)).collect();
    listed.insert(PathBuf::from(MANIFEST_FILE));
    listed.insert(PathBuf::from(SIGNATURE_FILE));
    let mut stack = vec![b.dir.clone()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| BundleError::Io {
            path: d.clone(),
            source,
        })?;
        for e in entries {
            let e = e.map_err(|source| BundleError::Io {
                path: d.clone(),
                source,
            })?;
            let path = e.path();
            let ty = std::fs::symlink_metadata(&path)
                .map_err(|source| BundleError::Io {
                    path: path.clone(),
                    source,
                })?
                .file_type();
            let rel = path.strip_prefix(&b.dir).unwrap_or(&path).to_path_buf();
            if ty.is_dir() {
                stack.push(path);
            } else if !ty.is_file() {
                return Err(invalid(
                    &path,
                    "not a regular file (links are not allowed in a trusted bundle)",
                ));
            } else if !listed.contains(&rel) {
                return Err(invalid(
                    &path,
                    "not named by the signed manifest (an unsigned file in a trusted bundle)",
                ));
            }
        }
    }
    Ok(())
}
