//! Secret key files: the 32-byte seed in hex, one line, mode 0600.

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
}

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

/// Reads a key file, refusing one that group or others can read.
pub fn read(path: &Path) -> Result<SecretKey, KeyFileError> {
    let name = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|source| KeyFileError::Read { path: name.clone(), source })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: name, mode });
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| KeyFileError::Read { path: name.clone(), source })?,
    );
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyFileError::Format { path: name })?;
    let key = SecretKey::from_seed(&seed);
    seed.zeroize();
    Ok(key)
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
}
