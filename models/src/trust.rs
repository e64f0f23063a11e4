//! Trust that can change: a signed **trust set**, in the spirit of TUF's root and targets roles,
//! kept small. One TOML file, signed with minisign by a root key (`trust.toml.minisig` beside
//! it, exactly what `minisign -Sm trust.toml` writes):
//!
//! ```toml
//! format = 1
//! version = 2                        # only ever goes up: a store refuses an older or equal set
//! expires = 2027-12-31T00:00:00Z     # after it, the set (and every bundle under it) is refused
//! revoked = ["A1B2C3D4E5F60718"]     # key ids whose signatures are never accepted again
//!
//! [[root]]                           # may sign the next trust set
//! key = "RWQ…"                       # minisign public key, base64 (`minisign -P` form)
//!
//! [[signer]]                         # may sign bundles
//! key = "RWS…"
//! expires = 2027-06-30               # optional, per key
//! comment = "release key 2026H2"
//! ```
//!
//! Rules, checked on every use (deploy, load, install), with the time of use:
//! - a bundle loads only when its signature's key is a listed signer, not revoked, not past its
//!   own `expires`, and the set itself has not expired;
//! - a new set must be signed by a root of the set it replaces (the first one by a root key
//!   given out of band when the store is provisioned), carry a higher `version`, and not be
//!   expired; a root listed in `revoked` signs nothing;
//! - rotating a signing key is publishing a set that adds the new key (and later drops the old
//!   one); revoking one is listing its id under `revoked`, which also stops the active slot
//!   at the next start when that key signed it (the store then falls back to the other slot).

use crate::bundle::BundleError;
use crate::signature::{self, PublicKey};
use crate::time::unix_seconds;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use toml::value::Datetime;

/// The trust set format this build reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustSetFile {
    format: u32,
    version: u64,
    expires: Datetime,
    #[serde(default)]
    revoked: Vec<String>,
    #[serde(default)]
    root: Vec<KeyEntry>,
    #[serde(default)]
    signer: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    key: String,
    #[serde(default)]
    expires: Option<Datetime>,
    #[serde(default)]
    comment: String,
}

/// One key of a trust set.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// minisign key id, upper-case hex.
    pub id: String,
    pub key: PublicKey,
    /// Unix seconds after which the key signs nothing (`None`: only the set's expiry applies).
    pub expires: Option<i64>,
    pub comment: String,
}

/// A trust set whose signature was checked against the roots that may sign it.
#[derive(Debug, Clone)]
pub struct TrustSet {
    pub version: u64,
    /// Unix seconds.
    pub expires: i64,
    pub roots: Vec<TrustedKey>,
    pub signers: Vec<TrustedKey>,
    pub revoked: BTreeSet<String>,
    /// The root key id that signed it.
    pub signed_by: String,
    /// The exact signed text and its minisign signature, kept to store and re-verify.
    pub text: String,
    pub signature: String,
}

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `2027-06-30T00:00:00Z` for messages.
pub fn show_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Inverse of days_from_civil (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn parse_key(e: &KeyEntry, path: &Path, role: &str) -> Result<TrustedKey, BundleError> {
    let key = PublicKey::from_base64(e.key.trim()).map_err(|err| {
        invalid(
            path,
            format!(
                "[[{role}]] key {:?}: not a minisign public key ({err})",
                e.key
            ),
        )
    })?;
    let expires = match &e.expires {
        Some(dt) => Some(unix_seconds(dt).ok_or_else(|| {
            invalid(
                path,
                format!("[[{role}]] key {}: expires {dt} has no date", e.key),
            )
        })?),
        None => None,
    };
    Ok(TrustedKey {
        id: signature::key_id(key.keynum()),
        key,
        expires,
        comment: e.comment.clone(),
    })
}

impl TrustSet {
    /// Parse `text` and check `sig` (minisign signature text) over it by one of `roots`, which
    /// must not be revoked by the set itself. `path` names the file in errors.
    pub fn verify(
        text: &str,
        sig: &str,
        roots: &[TrustedKey],
        path: &Path,
    ) -> Result<TrustSet, BundleError> {
        let sig_box = minisign::SignatureBox::from_string(sig)
            .map_err(|e| invalid(path, format!("not a minisign signature: {e}")))?;
        let signer = signature::key_id(sig_box.keynum());
        let root = roots.iter().find(|r| r.id == signer).ok_or_else(|| {
            let ids: Vec<&str> = roots.iter().map(|r| r.id.as_str()).collect();
            invalid(
                path,
                format!(
                    "signed by key {signer}, which is not a root allowed to sign it (roots: {})",
                    ids.join(", ")
                ),
            )
        })?;
        minisign::verify(
            &root.key,
            &sig_box,
            Cursor::new(text.as_bytes()),
            true,
            false,
            false,
        )
        .map_err(|e| {
            invalid(
                path,
                format!("signature check failed ({e}): the trust set or its signature was altered"),
            )
        })?;
        let set = Self::parse(text, path, signer, sig)?;
        if set.revoked.contains(&set.signed_by) {
            return Err(invalid(
                path,
                format!(
                    "signed by root {}, which the set itself revokes",
                    set.signed_by
                ),
            ));
        }
        Ok(set)
    }

    fn parse(
        text: &str,
        path: &Path,
        signed_by: String,
        sig: &str,
    ) -> Result<TrustSet, BundleError> {
        let f: TrustSetFile = toml::from_str(text)
            .map_err(|e| invalid(path, format!("malformed trust set: {}", e.message())))?;
        if f.format != FORMAT {
            return Err(invalid(
                path,
                format!(
                    "trust set format {} (this build reads format {FORMAT})",
                    f.format
                ),
            ));
        }
        let expires = unix_seconds(&f.expires)
            .ok_or_else(|| invalid(path, format!("expires {}: has no date", f.expires)))?;
        let roots = f
            .root
            .iter()
            .map(|e| parse_key(e, path, "root"))
            .collect::<Result<Vec<_>, _>>()?;
        let signers = f
            .signer
            .iter()
            .map(|e| parse_key(e, path, "signer"))
            .collect::<Result<Vec<_>, _>>()?;
        let revoked: BTreeSet<String> = f.revoked.iter().map(|r| r.trim().to_uppercase()).collect();
        if let Some(bad) = revoked
            .iter()
            .find(|r| r.len() != 16 || !r.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                path,
                format!("revoked {bad:?}: not a 16-digit key id"),
            ));
        }
        if roots.iter().all(|r| revoked.contains(&r.id)) {
            return Err(invalid(
                path,
                "no root key that is not revoked: nothing could sign the next trust set",
            ));
        }
        if let Some(both) = signers.iter().find(|s| revoked.contains(&s.id)) {
            return Err(invalid(
                path,
                format!("key {} is listed as a signer and revoked; say one", both.id),
            ));
        }
        Ok(TrustSet {
            version: f.version,
            expires,
            roots,
            signers,
            revoked,
            signed_by,
            text: text.to_string(),
            signature: sig.to_string(),
        })
    }

    /// The roots that may sign the next set.
    pub fn live_roots(&self) -> Vec<TrustedKey> {
        self.roots
            .iter()
            .filter(|r| !self.revoked.contains(&r.id))
            .cloned()
            .collect()
    }

    /// Refuses a set past its expiry.
    pub fn check_fresh(&self, now: i64, path: &Path) -> Result<(), BundleError> {
        if now > self.expires {
            return Err(invalid(
                path,
                format!(
                    "trust set version {} expired at {} (now {}): install a newer one signed by a root",
                    self.version,
                    show_time(self.expires),
                    show_time(now)
                ),
            ));
        }
        Ok(())
    }

    /// The public key for a bundle signed by `key_id` at `now`, or why there is none.
    pub fn signer(&self, key_id: &str, now: i64, path: &Path) -> Result<&PublicKey, BundleError> {
        self.check_fresh(now, path)?;
        if self.revoked.contains(key_id) {
            return Err(invalid(
                path,
                format!(
                    "signed by key {key_id}, which trust set version {} revokes",
                    self.version
                ),
            ));
        }
        let k = self.signers.iter().find(|s| s.id == key_id).ok_or_else(|| {
            let ids: Vec<&str> = self.signers.iter().map(|s| s.id.as_str()).collect();
            invalid(
                path,
                format!(
                    "signed by key {key_id}, not a signer of trust set version {} (signers: {})",
                    self.version,
                    ids.join(", ")
                ),
            )
        })?;
        if let Some(exp) = k.expires
            && now > exp
        {
            return Err(invalid(
                path,
                format!(
                    "signed by key {key_id}, which expired at {}",
                    show_time(exp)
                ),
            ));
        }
        Ok(&k.key)
    }

    /// One line for logs and `store status`.
    pub fn summary(&self) -> String {
        let ids = |ks: &[TrustedKey]| {
            ks.iter()
                .map(|k| k.id.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "trust set version {} (signed by root {}, expires {}): signers [{}], roots [{}], revoked [{}]",
            self.version,
            self.signed_by,
            show_time(self.expires),
            ids(&self.signers),
            ids(&self.roots),
            self.revoked.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

/// A root key given out of band (a minisign `.pub` file or its base64 line), for the first
/// trust set a store installs.
pub fn root_from_public_key(spec: &str) -> Result<TrustedKey, BundleError> {
    let key = signature::load_public_key(spec)?;
    Ok(TrustedKey {
        id: signature::key_id(key.keynum()),
        key,
        expires: None,
        comment: "initial root given out of band".into(),
    })
}

/// Read `path` (a trust set) and `path.minisig` (its signature) as text.
pub fn read_signed_pair(path: &Path) -> Result<(String, String), BundleError> {
    let read = |p: &Path| {
        if p.is_dir() {
            return Err(invalid(p, "is a directory, expected a file"));
        }
        std::fs::read_to_string(p).map_err(|source| BundleError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".minisig");
    let sig_path = std::path::PathBuf::from(sig_path);
    if !sig_path.exists() {
        return Err(invalid(
            &sig_path,
            "no signature beside the trust set (sign it with `bevrt-tool trust sign` or `minisign -Sm`)",
        ));
    }
    Ok((read(path)?, read(&sig_path)?))
}

#[cfg(test)]
mod tests {
    use super::show_time;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(show_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(show_time(1_796_605_201), "2026-12-07T01:00:01Z");
        assert_eq!(show_time(951_868_800), "2000-03-01T00:00:00Z");
    }
}
