//! Unpacking a source archive so that nothing lands outside the job's source tree.
//!
//! Runs in the verifier's own process, before any sandbox, on bytes anyone may send: every
//! entry is checked before anything is written. Invariants:
//! - every path is plain and relative (no `..`, no `.`, no absolute path, no NUL);
//! - no entry is written at or beneath a symlink the archive made (the job root is fresh, so
//!   those are the only symlinks below it), and files are opened with `O_NOFOLLOW`;
//! - symlinks point inside the tree, resolved lexically from where they stand, and never
//!   through another link the archive made (so chains of links cannot climb out either);
//! - entry counts and byte counts are checked (with checked sums) before memory is taken,
//!   and the decompressed stream itself is capped, so a decompression bomb stops early;
//! - files and directories keep the archive's modification times, as `tar` does, so that
//!   `make` does not think generated files (`configure`, `aclocal.m4`) are stale.

use chainiac_release::rules::is_safe_relative;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sandbox::Limits;

/// The archive formats a source may come in, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    TarXz,
    TarBz2,
    TarZst,
    Zip,
}

/// The formats [`ArchiveFormat::detect`] accepts, as errors name them.
pub const SUPPORTED_FORMATS: &str = "tar, tar.gz, tar.xz, tar.bz2, tar.zst, zip";

impl ArchiveFormat {
    /// The format of `archive` by its magic bytes (`ustar` at offset 257 for a plain tar).
    pub fn detect(archive: &[u8]) -> Result<Self, UnpackError> {
        let format = if archive.starts_with(&[0x1f, 0x8b]) {
            ArchiveFormat::TarGz
        } else if archive.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            ArchiveFormat::TarXz
        } else if archive.starts_with(b"BZh") {
            ArchiveFormat::TarBz2
        } else if archive.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            ArchiveFormat::TarZst
        } else if archive.starts_with(b"PK\x03\x04") || archive.starts_with(b"PK\x05\x06") {
            ArchiveFormat::Zip
        } else if archive.get(257..262) == Some(b"ustar") || old_tar_header(archive) {
            ArchiveFormat::Tar
        } else {
            return Err(UnpackError::UnknownFormat { found: describe(archive) });
        };
        Ok(format)
    }

    pub fn name(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarXz => "tar.xz",
            ArchiveFormat::TarBz2 => "tar.bz2",
            ArchiveFormat::TarZst => "tar.zst",
            ArchiveFormat::Zip => "zip",
        }
    }
}

/// Whether `archive` starts with a pre-POSIX (v7) tar header, which has no magic: its
/// checksum field holds, in octal, the sum of the header's bytes with that field as spaces.
fn old_tar_header(archive: &[u8]) -> bool {
    let Some(header) = archive.get(..512) else { return false };
    let field = String::from_utf8_lossy(&header[148..156]);
    let Ok(stored) = u32::from_str_radix(field.trim_matches(|c: char| c == ' ' || c == '\0'), 8) else {
        return false;
    };
    let sum: u32 =
        header.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { b' ' as u32 } else { b as u32 }).sum();
    header[0] != 0 && stored == sum
}

/// What an unknown archive looks like, for the error: a few formats people send by
/// mistake, else its size (never its bytes).
fn describe(archive: &[u8]) -> String {
    let known: [(&[u8], &str); 5] = [
        (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        (b"Rar!", "a RAR archive"),
        (b"\x04\x22\x4d\x18", "an LZ4 frame"),
        (b"\x89PNG", "a PNG image"),
        (b"%PDF", "a PDF document"),
    ];
    for (magic, name) in known {
        if archive.starts_with(magic) {
            return name.to_string();
        }
    }
    if archive.is_empty() {
        return "an empty file".into();
    }
    if archive.iter().take(512).all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        return format!("{} bytes of text", archive.len());
    }
    format!("{} bytes of no known archive format", archive.len())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    #[error("the source is {found}, not an archive this verifier reads ({SUPPORTED_FORMATS})")]
    UnknownFormat { found: String },
    #[error("the {format} archive is malformed: {reason}")]
    Malformed { format: &'static str, reason: String },
    #[error("archive entry {path:?} is not a plain relative path")]
    UnsafePath { path: String },
    #[error("archive entry {path:?} links to {target:?}, outside the source tree")]
    LinkOut { path: String, target: String },
    #[error("archive entry {path:?} lies under {link:?}, a symlink the archive made")]
    UnderLink { path: String, link: String },
    #[error("archive entry {path:?} is a {kind}, which sources may not contain")]
    UnsupportedEntry { path: String, kind: &'static str },
    #[error("the archive has more than {limit} entries")]
    TooManyFiles { limit: usize },
    #[error("the archive unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("writing {path:?}: {reason}")]
    Io { path: String, reason: String },
}

/// Whether `target`, a symlink at `link` (both relative to the root), stays inside the root.
pub(crate) fn link_stays_inside(link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: i64 = 0;
    let parent = Path::new(link).parent().unwrap_or(Path::new(""));
    for component in parent.components().chain(Path::new(target).components()) {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// A reader that fails once more than `limit` bytes came through: the cap on what a
/// decompressor may produce, whatever the headers say.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!("the archive decompresses to more than {} bytes", self.limit))
        })?;
        Ok(n)
    }
}

/// One entry, whatever the container: its kind and what it carries.
enum Kind {
    Dir,
    File { size: u64, mode: u32 },
    Symlink(String),
    Other(&'static str),
}

/// Writes entries beneath `dest`, keeping what the invariants need.
struct Writer<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    files: usize,
    bytes: u64,
    /// Symlinks the archive made, relative to `dest`.
    links: HashSet<PathBuf>,
    /// Directory times, set at the end (writing inside a directory moves its time).
    dir_times: Vec<(PathBuf, SystemTime)>,
    newest: Option<SystemTime>,
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    /// The newest modification time of an entry, in seconds since 1970: the default
    /// `SOURCE_DATE_EPOCH` of a release (`chainiac release prepare`).
    pub newest_mtime_s: Option<u64>,
}

impl<'a> Writer<'a> {
    /// Checks an entry's path and kind, then writes it, reading a file's bytes from `data`.
    fn entry(
        &mut self,
        raw: &str,
        kind: Kind,
        mtime: Option<SystemTime>,
        data: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(UnpackError::TooManyFiles { limit: self.limits.max_files });
        }
        self.newest = self.newest.max(mtime);
        let path = raw.trim_end_matches('/').trim_start_matches("./").to_string();
        if path.is_empty() || path == "." {
            return match kind {
                Kind::Dir => Ok(()), // "./" itself
                _ => Err(UnpackError::UnsafePath { path: raw.to_string() }),
            };
        }
        if !is_safe_relative(&path) {
            return Err(UnpackError::UnsafePath { path: raw.to_string() });
        }
        let relative = PathBuf::from(&path);
        // Nothing at or beneath a symlink the archive made: that is how a link pointing
        // inside becomes a way out (`a/up -> ..`, then `a/up/a/up/l -> ../../x`, then `l`).
        for ancestor in relative.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if self.links.contains(ancestor) {
                return Err(UnpackError::UnderLink { path, link: ancestor.display().to_string() });
            }
        }
        let target = self.dest.join(&relative);
        let io = |e: std::io::Error| UnpackError::Io { path: path.clone(), reason: e.to_string() };
        if let Some(parent) = target.parent() {
            // Only directories this unpacking made lie on the way (no symlink above, checked).
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        match kind {
            Kind::Dir => {
                match std::fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => return Err(io(std::io::Error::other("a file of that name is already there"))),
                    Err(_) => std::fs::create_dir(&target).map_err(io)?,
                }
                if let Some(time) = mtime {
                    self.dir_times.push((target, time));
                }
            }
            Kind::File { size, mode } => {
                self.bytes = self
                    .bytes
                    .checked_add(size)
                    .filter(|&b| b <= self.limits.max_unpacked_bytes)
                    .ok_or(UnpackError::TooLarge { limit: self.limits.max_unpacked_bytes })?;
                if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    return Err(io(std::io::Error::other("a directory of that name is already there")));
                }
                // A later entry of the same name replaces the file, as tar does.
                let _ = std::fs::remove_file(&target);
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io)?;
                let copied = std::io::copy(&mut data.take(size), &mut file).map_err(io)?;
                if copied != size {
                    return Err(UnpackError::Malformed {
                        format: "archive",
                        reason: format!("entry {path:?} ends after {copied} of its {size} bytes"),
                    });
                }
                file.flush().map_err(io)?;
                use std::os::unix::fs::PermissionsExt;
                let mode = (mode & 0o755) | 0o600;
                file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
                if let Some(time) = mtime {
                    file.set_modified(time).map_err(io)?;
                }
            }
            Kind::Symlink(link) => {
                if !link_stays_inside(&path, &link) || self.through_links(&relative, &link) {
                    return Err(UnpackError::LinkOut { path, target: link });
                }
                if std::fs::symlink_metadata(&target).is_ok() {
                    return Err(io(std::io::Error::other("an entry of that name is already there")));
                }
                std::os::unix::fs::symlink(&link, &target).map_err(io)?;
                self.links.insert(relative);
            }
            Kind::Other(kind) => return Err(UnpackError::UnsupportedEntry { path, kind }),
        }
        Ok(())
    }

    /// Whether the target of a link at `at` passes through a link the archive made: the
    /// lexical check alone would let `l2 -> .` then `l3 -> l2/l2/l2/../../..` climb out.
    fn through_links(&self, at: &Path, target: &str) -> bool {
        let mut walked = at.parent().map(Path::to_path_buf).unwrap_or_default();
        for component in Path::new(target).components() {
            match component {
                Component::Normal(name) => {
                    walked.push(name);
                    if self.links.contains(&walked) {
                        return true;
                    }
                }
                Component::ParentDir => {
                    walked.pop();
                }
                _ => {}
            }
        }
        false
    }

    /// Directory times, deepest first, once nothing more is written inside them.
    fn finish(mut self) -> Result<Unpacked, UnpackError> {
        self.dir_times.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (dir, time) in &self.dir_times {
            let set = std::fs::File::open(dir).and_then(|f| f.set_modified(*time));
            set.map_err(|e| UnpackError::Io { path: dir.display().to_string(), reason: e.to_string() })?;
        }
        let newest_mtime_s = self.newest.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs());
        Ok(Unpacked { entries: self.files, newest_mtime_s })
    }
}

/// Unpacks `archive` (any of [`SUPPORTED_FORMATS`]) into `dest`, which must exist and be
/// empty: regular files, directories and symlinks that stay inside; nothing else.
pub fn unpack(archive: &[u8], dest: &Path, limits: &Limits) -> Result<Unpacked, UnpackError> {
    let format = ArchiveFormat::detect(archive)?;
    // What the headers may take on top of the contents: a 1 KiB allowance per entry.
    let cap = limits.max_unpacked_bytes.saturating_add((limits.max_files as u64).saturating_mul(1024));
    let writer =
        Writer { dest, limits, files: 0, bytes: 0, links: HashSet::new(), dir_times: Vec::new(), newest: None };
    let capped = |inner| Capped { inner, left: cap, limit: cap };
    let decoder: Box<dyn Read + '_> = match format {
        ArchiveFormat::Zip => return unpack_zip(archive, writer),
        ArchiveFormat::Tar => Box::new(archive),
        ArchiveFormat::TarGz => Box::new(flate2::read::GzDecoder::new(archive)),
        ArchiveFormat::TarBz2 => Box::new(bzip2::read::BzDecoder::new(archive)),
        ArchiveFormat::TarXz => Box::new(lzma_rust2::XzReader::new(archive, false)),
        ArchiveFormat::TarZst => Box::new(
            ruzstd::decoding::StreamingDecoder::new(archive)
                .map_err(|e| UnpackError::Malformed { format: format.name(), reason: e.to_string() })?,
        ),
    };
    unpack_tar(capped(decoder), format, writer)
}

fn unpack_tar(reader: impl Read, format: ArchiveFormat, mut writer: Writer<'_>) -> Result<Unpacked, UnpackError> {
    let malformed = |e: std::io::Error| UnpackError::Malformed { format: format.name(), reason: e.to_string() };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let header = entry.header();
        let mtime = header.mtime().ok().map(|s| UNIX_EPOCH + Duration::from_secs(s));
        let kind = header.entry_type();
        let kind = if kind.is_dir() {
            Kind::Dir
        } else if kind.is_file() {
            Kind::File { size: header.size().map_err(malformed)?, mode: header.mode().unwrap_or(0o644) }
        } else if kind.is_symlink() {
            let link = entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).ok_or_else(|| {
                UnpackError::Malformed { format: format.name(), reason: format!("symlink {raw:?} without a target") }
            })?;
            Kind::Symlink(link)
        } else if kind.is_hard_link() {
            Kind::Other("hard link")
        } else if kind.is_character_special() || kind.is_block_special() {
            Kind::Other("device")
        } else if kind.is_fifo() {
            Kind::Other("fifo")
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() {
            continue; // metadata the tar reader applies itself
        } else {
            Kind::Other("special entry")
        };
        writer.entry(&raw, kind, mtime, &mut entry)?;
    }
    writer.finish()
}

fn unpack_zip(archive: &[u8], mut writer: Writer<'_>) -> Result<Unpacked, UnpackError> {
    let malformed = |e: zip::result::ZipError| UnpackError::Malformed { format: "zip", reason: e.to_string() };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).map_err(malformed)?;
    if zip.len() > writer.limits.max_files {
        return Err(UnpackError::TooManyFiles { limit: writer.limits.max_files });
    }
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(malformed)?;
        let raw = String::from_utf8_lossy(file.name_raw()).into_owned();
        let mtime = file.last_modified().and_then(|t| {
            let (month, day) = (t.month() as u32, t.day() as u32);
            if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
                return None;
            }
            let date = days_from_civil(t.year() as i64, month, day);
            let secs = date * 86_400 + t.hour() as i64 * 3600 + t.minute() as i64 * 60 + t.second() as i64;
            u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s))
        });
        let mode = file.unix_mode();
        let kind = if file.is_dir() {
            Kind::Dir
        } else if file.is_symlink() {
            let mut link = String::new();
            (&mut file)
                .take(4096)
                .read_to_string(&mut link)
                .map_err(|e| UnpackError::Malformed { format: "zip", reason: format!("symlink {raw:?}: {e}") })?;
            Kind::Symlink(link)
        } else if file.is_file() {
            Kind::File { size: file.size(), mode: mode.unwrap_or(0o644) }
        } else {
            Kind::Other("special entry")
        };
        writer.entry(&raw, kind, mtime, &mut file)?;
    }
    writer.finish()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`):
/// zip entries carry their time as date fields. The bench places PyPI months with it too.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_resolved_lexically() {
        assert!(link_stays_inside("a/b", "c"));
        assert!(link_stays_inside("a/b", "../c"));
        assert!(!link_stays_inside("a/b", "../../c"));
        assert!(!link_stays_inside("b", "/etc/passwd"));
        assert!(!link_stays_inside("b", ".."));
        assert!(link_stays_inside("a/b", "./x/../y"));
        assert!(link_stays_inside("a/b/c", "../../x/../y"));
    }

    #[test]
    fn formats_are_told_by_their_first_bytes_and_strangers_are_named() {
        assert_eq!(ArchiveFormat::detect(&[0x1f, 0x8b, 8]).unwrap(), ArchiveFormat::TarGz);
        assert_eq!(ArchiveFormat::detect(b"\xfd7zXZ\x00rest").unwrap(), ArchiveFormat::TarXz);
        assert_eq!(ArchiveFormat::detect(b"BZh91AY").unwrap(), ArchiveFormat::TarBz2);
        assert_eq!(ArchiveFormat::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(), ArchiveFormat::TarZst);
        assert_eq!(ArchiveFormat::detect(b"PK\x03\x04....").unwrap(), ArchiveFormat::Zip);
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(ArchiveFormat::detect(&tar).unwrap(), ArchiveFormat::Tar);
        let mut old = tar::Header::new_old();
        old.set_path("f").unwrap();
        old.set_cksum();
        assert_eq!(ArchiveFormat::detect(old.as_bytes()).unwrap(), ArchiveFormat::Tar, "a v7 header, no magic");
        let mut broken = old.as_bytes().to_vec();
        broken[0] ^= 1;
        assert!(ArchiveFormat::detect(&broken).is_err(), "a bad checksum is not a tar");
        let e = ArchiveFormat::detect(b"Rar!\x1a\x07\x00 and some more").unwrap_err().to_string();
        assert!(e.contains("a RAR archive") && e.contains(SUPPORTED_FORMATS), "{e}");
        let e = ArchiveFormat::detect(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]).unwrap_err().to_string();
        assert_eq!(e, format!("the source is 6 bytes of no known archive format, not an archive this verifier reads ({SUPPORTED_FORMATS})"));
        assert!(!e.contains("de") || !e.contains("ad be"), "never the raw bytes");
    }
}
