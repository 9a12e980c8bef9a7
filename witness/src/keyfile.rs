//! Secret key files: the 32-byte seed in hex, one line, mode 0600. An OpenSSH ed25519
//! private key (`ssh-keygen -t ed25519`, optionally passphrase-protected) is read as well: its
//! 32-byte private part is the same RFC 8032 seed, so a developer can sign releases with the
//! key they already use for git.

use chainiac_cosi::SecretKey;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("key file {path} does not hold a 64-digit hex seed")]
    Format { path: String },
    #[error("key file {path} already exists; refusing to overwrite a key")]
    Exists { path: String },
    #[error("{path} is not a valid OpenSSH private key: {reason}")]
    OpenSsh { path: String, reason: String },
    #[error("{path} holds an OpenSSH {algorithm} key; chainiac signs with Ed25519 only (`ssh-keygen -t ed25519`)")]
    NotEd25519 { path: String, algorithm: String },
    #[error("{path} is passphrase-protected; set CHAINIAC_SSH_PASSPHRASE (or convert it once with `chainiac keygen --from-openssh`)")]
    NeedsPassphrase { path: String },
    #[error("wrong passphrase for {path}")]
    WrongPassphrase { path: String },
}

const OPENSSH_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";

/// Writes `key`'s seed to a new file at `path` with mode 0600.
pub fn write(path: &Path, key: &SecretKey) -> Result<(), KeyFileError> {
    let name = path.display().to_string();
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: name.clone() }
            } else {
                KeyFileError::Write { path: name.clone(), source }
            }
        })?;
    let hex = Zeroizing::new(format!("{}\n", hex::encode(key.seed())));
    file.write_all(hex.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|source| KeyFileError::Write { path: name, source })
}

/// Reads a key file (ours or an unencrypted OpenSSH ed25519 key), refusing one that group or
/// others can read.
pub fn read(path: &Path) -> Result<SecretKey, KeyFileError> {
    read_with_passphrase(path, None)
}

/// Reads a key file; `passphrase` opens a passphrase-protected OpenSSH key.
pub fn read_with_passphrase(path: &Path, passphrase: Option<&[u8]>) -> Result<SecretKey, KeyFileError> {
    let name = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|source| KeyFileError::Read { path: name.clone(), source })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: name, mode });
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| KeyFileError::Read { path: name.clone(), source })?,
    );
    if text.trim_start().starts_with(OPENSSH_BEGIN) {
        return from_openssh(&name, &text, passphrase);
    }
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyFileError::Format { path: name })?;
    let key = SecretKey::from_seed(&seed);
    seed.zeroize();
    Ok(key)
}

fn from_openssh(path: &str, text: &str, passphrase: Option<&[u8]>) -> Result<SecretKey, KeyFileError> {
    let bad = |e: ssh_key::Error| KeyFileError::OpenSsh { path: path.to_owned(), reason: e.to_string() };
    let mut key = ssh_key::PrivateKey::from_openssh(text).map_err(bad)?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(KeyFileError::NotEd25519 { path: path.to_owned(), algorithm: key.algorithm().to_string() });
    }
    if key.is_encrypted() {
        let passphrase = passphrase.ok_or_else(|| KeyFileError::NeedsPassphrase { path: path.to_owned() })?;
        key = key.decrypt(passphrase).map_err(|e| match e {
            ssh_key::Error::Crypto => KeyFileError::WrongPassphrase { path: path.to_owned() },
            other => bad(other),
        })?;
    }
    let pair = key
        .key_data()
        .ed25519()
        .ok_or_else(|| KeyFileError::NotEd25519 { path: path.to_owned(), algorithm: key.algorithm().to_string() })?;
    let secret = SecretKey::from_seed(pair.private.as_ref());
    // A file whose public half does not belong to its private half is corrupt or forged.
    if secret.public_key().to_bytes() != pair.public.0 {
        return Err(KeyFileError::OpenSsh {
            path: path.to_owned(),
            reason: "its public key does not match its private key".into(),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_permission_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = SecretKey::from_seed(&[6; 32]);
        write(&path, &key).unwrap();
        assert_eq!(read(&path).unwrap().public_key(), key.public_key());
        assert!(matches!(write(&path, &key), Err(KeyFileError::Exists { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&path), Err(KeyFileError::Permissions { mode: 0o644, .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(read(&path), Err(KeyFileError::Format { .. })));
    }

    fn install(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn public_of(pub_file: &str) -> [u8; 32] {
        ssh_key::PublicKey::from_openssh(pub_file).unwrap().key_data().ed25519().unwrap().0
    }

    // Fixtures made by OpenSSH's `ssh-keygen -t ed25519` (one with passphrase "correct horse").
    const PLAIN: &str = include_str!("../tests/data/openssh_ed25519");
    const PLAIN_PUB: &str = include_str!("../tests/data/openssh_ed25519.pub");
    const PROTECTED: &str = include_str!("../tests/data/openssh_ed25519_protected");
    const PROTECTED_PUB: &str = include_str!("../tests/data/openssh_ed25519_protected.pub");
    const RSA: &str = include_str!("../tests/data/openssh_rsa");

    #[test]
    fn openssh_ed25519_keys_are_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let plain = read(&install(dir.path(), "plain", PLAIN)).unwrap();
        assert_eq!(plain.public_key().to_bytes(), public_of(PLAIN_PUB));
        let signature = plain.sign_ed25519(b"manifest");
        assert!(plain.public_key().verify_ed25519(b"manifest", &signature));

        let protected = install(dir.path(), "protected", PROTECTED);
        assert!(matches!(read(&protected), Err(KeyFileError::NeedsPassphrase { .. })));
        assert!(matches!(
            read_with_passphrase(&protected, Some(b"wrong horse")),
            Err(KeyFileError::WrongPassphrase { .. })
        ));
        let opened = read_with_passphrase(&protected, Some(b"correct horse")).unwrap();
        assert_eq!(opened.public_key().to_bytes(), public_of(PROTECTED_PUB));

        let rsa = read(&install(dir.path(), "rsa", RSA)).unwrap_err();
        assert!(matches!(&rsa, KeyFileError::NotEd25519 { algorithm, .. } if algorithm == "ssh-rsa"), "{rsa}");

        let truncated = &PLAIN[..PLAIN.len() / 2];
        let err = read(&install(dir.path(), "truncated", truncated)).unwrap_err();
        assert!(matches!(err, KeyFileError::OpenSsh { .. }), "{err}");

        let loose = install(dir.path(), "loose", PLAIN);
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&loose), Err(KeyFileError::Permissions { .. })));
    }
}
