//! Unpacking hostile and ordinary source archives (issue 18): nothing escapes the source
//! tree, whatever links the archive makes; every supported format unpacks to the same tree
//! with its times; bombs and strangers stop with an error naming what was wrong.

use chainiac_verifier::sandbox::Limits;
use chainiac_verifier::unpack::{unpack, ArchiveFormat, UnpackError, SUPPORTED_FORMATS};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// One raw tar entry: a name and type the tar builder would refuse to write.
fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_400_000_000);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

/// A fresh job: the source goes in `job/src`, and `job/x` is what an escape would reach.
fn job() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("job/src");
    std::fs::create_dir_all(&src).unwrap();
    (dir, src)
}

/// Every file under `root`, with its contents, sorted.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.push((name + "/", vec![]));
                stack.push(path);
            } else if meta.is_symlink() {
                out.push((name, std::fs::read_link(&path).unwrap().display().to_string().into_bytes()));
            } else {
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The escape, step by step: `a/up -> ..` stays inside, `a/up/a/up/a/up/l ->
/// ../../../../x` looks inside lexically but stands at the root through `a/up`, and a file
/// named `l` would then be written through it. Refused at the second entry.
#[test]
fn entries_beneath_an_archive_made_symlink_are_refused() {
    let (dir, src) = job();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "a/", tar::EntryType::Directory, None, b"");
    raw_entry(&mut b, "a/up", tar::EntryType::Symlink, Some(".."), b"");
    raw_entry(&mut b, "a/up/a/up/a/up/l", tar::EntryType::Symlink, Some("../../../../x"), b"");
    raw_entry(&mut b, "l", tar::EntryType::Regular, None, b"owned");
    let archive = b.into_inner().unwrap();
    let e = unpack(&archive, &src, &Limits::default()).unwrap_err();
    assert_eq!(e, UnpackError::UnderLink { path: "a/up/a/up/a/up/l".into(), link: "a/up".into() });
    assert!(!dir.path().join("job/x").exists() && !dir.path().join("x").exists());
    assert!(std::fs::symlink_metadata(src.join("l")).is_err(), "nothing was made at l");

    // A file written at a link's own name would follow it: refused too.
    let (dir, src) = job();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "s", tar::EntryType::Symlink, Some("t"), b"");
    raw_entry(&mut b, "s", tar::EntryType::Regular, None, b"through the link");
    let e = unpack(&b.into_inner().unwrap(), &src, &Limits::default()).unwrap_err();
    assert!(matches!(e, UnpackError::UnderLink { .. }), "{e}");
    assert!(!src.join("t").exists());
    drop(dir);

    // Links through links (found by review): `l2 -> .` is inside, and `l3 ->
    // l2/l2/l2/../../..` is inside by text, yet resolves three levels up.
    let (_dir, src) = job();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "l2", tar::EntryType::Symlink, Some("."), b"");
    raw_entry(&mut b, "l3", tar::EntryType::Symlink, Some("l2/l2/l2/../../.."), b"");
    let e = unpack(&b.into_inner().unwrap(), &src, &Limits::default()).unwrap_err();
    assert_eq!(e, UnpackError::LinkOut { path: "l3".into(), target: "l2/l2/l2/../../..".into() });
}

/// A plain source: a directory, two files (one executable), a symlink inside; every format.
fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], mode: u32, mtime: u64, link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("pkg-1.0/", tar::EntryType::Directory, b"", 0o755, 1_300_000_000, None);
    add("pkg-1.0/configure", tar::EntryType::Regular, b"#!/bin/sh\necho ok\n", 0o755, 1_400_000_000, None);
    add("pkg-1.0/aclocal.m4", tar::EntryType::Regular, b"dnl generated\n", 0o644, 1_400_000_100, None);
    add("pkg-1.0/README", tar::EntryType::Symlink, b"", 0o777, 1_400_000_000, Some("aclocal.m4"));
    b.into_inner().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn bz2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::default()).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zst(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn zip_of_sample() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let at = |secs: u32| zip::DateTime::from_date_and_time(2014, 5, 13, 16, 53, secs as u8).unwrap();
    let opts = zip::write::SimpleFileOptions::default().last_modified_time(at(20));
    w.add_directory("pkg-1.0/", opts.unix_permissions(0o755)).unwrap();
    w.start_file("pkg-1.0/configure", opts.unix_permissions(0o755)).unwrap();
    w.write_all(b"#!/bin/sh\necho ok\n").unwrap();
    w.start_file("pkg-1.0/aclocal.m4", opts.unix_permissions(0o644)).unwrap();
    w.write_all(b"dnl generated\n").unwrap();
    w.add_symlink("pkg-1.0/README", "aclocal.m4", opts).unwrap();
    w.finish().unwrap().into_inner()
}

#[test]
fn every_supported_format_unpacks_to_the_same_tree_with_its_times() {
    let tar = sample_tar();
    let cases = [
        (ArchiveFormat::Tar, tar.clone()),
        (ArchiveFormat::TarGz, gz(&tar)),
        (ArchiveFormat::TarBz2, bz2(&tar)),
        (ArchiveFormat::TarXz, xz(&tar)),
        (ArchiveFormat::TarZst, zst(&tar)),
        (ArchiveFormat::Zip, zip_of_sample()),
    ];
    let mut first = None;
    for (format, archive) in cases {
        assert_eq!(ArchiveFormat::detect(&archive).unwrap(), format);
        let (_dir, src) = job();
        assert_eq!(unpack(&archive, &src, &Limits::default()).unwrap().entries, 4, "{}", format.name());
        let got = tree(&src);
        match &first {
            None => first = Some(got),
            Some(expected) => assert_eq!(&got, expected, "{}", format.name()),
        }
        use std::os::unix::fs::PermissionsExt;
        let configure = std::fs::metadata(src.join("pkg-1.0/configure")).unwrap();
        assert_eq!(configure.permissions().mode() & 0o777, 0o755, "{}", format.name());
        // Times as the archive has them: make must not think aclocal.m4 is stale.
        let m4 = std::fs::metadata(src.join("pkg-1.0/aclocal.m4")).unwrap().modified().unwrap();
        let dir = std::fs::metadata(src.join("pkg-1.0")).unwrap().modified().unwrap();
        if format == ArchiveFormat::Zip {
            let expected = UNIX_EPOCH + Duration::from_secs(1_400_000_000);
            assert_eq!(m4, expected, "zip times are date fields: 2014-05-13 16:53:20");
            assert_eq!(dir, expected);
        } else {
            assert_eq!(m4, UNIX_EPOCH + Duration::from_secs(1_400_000_100), "{}", format.name());
            assert_eq!(dir, UNIX_EPOCH + Duration::from_secs(1_300_000_000), "{}", format.name());
        }
    }
}

/// The real upstream tarball the issue names, from `../shared/data/sources`.
#[test]
fn gnu_hello_unpacks_with_its_times() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/sources/hello-2.10.tar.gz");
    let Ok(archive) = std::fs::read(&path) else {
        println!("SKIPPED: {} is not on this machine", path.display());
        return;
    };
    let (_dir, src) = job();
    let unpacked = unpack(&archive, &src, &Limits::default()).unwrap();
    assert!(unpacked.entries > 100, "{unpacked:?}");
    // The newest entry: hello 2.10 was released on 2014-11-16.
    let newest = unpacked.newest_mtime_s.unwrap();
    assert!((1_416_000_000..1_416_300_000).contains(&newest), "{unpacked:?}");
    let configure = std::fs::metadata(src.join("hello-2.10/configure")).unwrap().modified().unwrap();
    let makefile_in = std::fs::metadata(src.join("hello-2.10/Makefile.in")).unwrap().modified().unwrap();
    let aclocal = std::fs::metadata(src.join("hello-2.10/aclocal.m4")).unwrap().modified().unwrap();
    // From the archive (2014), not from the moment of unpacking; generated files no older
    // than what they are generated from.
    assert!(configure < UNIX_EPOCH + Duration::from_secs(1_500_000_000));
    assert!(makefile_in >= aclocal, "Makefile.in is not older than aclocal.m4");
}

#[test]
fn bombs_and_strangers_stop_with_an_error_naming_what_was_wrong() {
    let limits = Limits { max_unpacked_bytes: 1 << 10, max_files: 4, ..Limits::default() };
    // A file larger than the limit: refused from its header, before any byte is read.
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "big", tar::EntryType::Regular, None, &vec![0; 4096]);
    let (_dir, src) = job();
    let e = unpack(&gz(&b.into_inner().unwrap()), &src, &limits).unwrap_err();
    assert_eq!(e, UnpackError::TooLarge { limit: 1 << 10 });
    // A directory entry with a megabyte of data after it: the decompressed stream is capped.
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "d/", tar::EntryType::Directory, None, &vec![0; 1 << 20]);
    let (_dir, src) = job();
    let e = unpack(&xz(&b.into_inner().unwrap()), &src, &limits).unwrap_err().to_string();
    assert!(e.contains("tar.xz") && e.contains("decompresses to more than"), "{e}");
    // Too many entries.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..5 {
        raw_entry(&mut b, &format!("f{i}"), tar::EntryType::Regular, None, b"x");
    }
    let (_dir, src) = job();
    assert_eq!(unpack(&b.into_inner().unwrap(), &src, &limits).unwrap_err(), UnpackError::TooManyFiles { limit: 4 });
    // Not an archive, or a broken one: the error names the format, never the bytes.
    let (_dir, src) = job();
    let e = unpack(b"Rar!\x1a\x07\x01\x00 secret bytes", &src, &limits).unwrap_err().to_string();
    assert!(e.contains("a RAR archive") && e.contains(SUPPORTED_FORMATS) && !e.contains("secret"), "{e}");
    let mut truncated = bz2(&sample_tar());
    truncated.truncate(truncated.len() / 2);
    let e = unpack(&truncated, &src, &Limits::default()).unwrap_err().to_string();
    assert!(e.starts_with("the tar.bz2 archive is malformed"), "{e}");
}
