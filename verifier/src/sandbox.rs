//! Running a build recipe in a clean, normalized environment with limits (the source is
//! unpacked by [`crate::unpack`]).

use chainiac_release::rules::is_safe_relative;
use chainiac_release::{content_hash, Artifact, ArtifactMismatch, Outcome, Recipe};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// What a build may consume.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Entries in the source archive.
    pub max_files: usize,
    /// Bytes of the unpacked source.
    pub max_unpacked_bytes: u64,
    /// Wall time of the build.
    pub time_limit: Duration,
    /// Bytes in the build directory after the build.
    pub max_output_bytes: u64,
    /// Bytes of build log kept.
    pub max_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 20_000,
            max_unpacked_bytes: 512 << 20,
            time_limit: Duration::from_secs(600),
            max_output_bytes: 2 << 30,
            max_log_bytes: 1 << 20,
        }
    }
}

/// The environment every build starts from, plus the recipe's own variables.
fn environment(job: &Path, source_date_epoch: u64) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), job.join("home").display().to_string()),
        ("TMPDIR".into(), job.join("tmp").display().to_string()),
        ("TZ".into(), "UTC".into()),
        ("LC_ALL".into(), "C".into()),
        ("LANG".into(), "C".into()),
        ("SOURCE_DATE_EPOCH".into(), source_date_epoch.to_string()),
    ]
}

/// How a build went.
#[derive(Debug)]
pub struct RunReport {
    /// `Err(reason)` when the recipe could not run or did not succeed.
    pub result: Result<(), String>,
    /// stdout and stderr, interleaved as read, cut at the log limit.
    pub log: Vec<u8>,
    pub took: Duration,
}

/// Runs `recipe` in `root/recipe.workdir` with a clean environment, umask 022, in a new
/// session (so the whole process group can be killed at the time limit) and, when
/// `isolate_network`, in a new network namespace with no interfaces up.
pub async fn run(
    recipe: &Recipe,
    job: &Path,
    root: &Path,
    source_date_epoch: u64,
    limits: &Limits,
    isolate_network: bool,
) -> RunReport {
    let started = Instant::now();
    let fail = |reason: String, log: Vec<u8>| RunReport { result: Err(reason), log, took: started.elapsed() };
    if !is_safe_relative(&recipe.workdir) {
        return fail(format!("working directory {:?} is not a plain relative path", recipe.workdir), vec![]);
    }
    let base = environment(job, source_date_epoch);
    for (name, _) in &recipe.env {
        if base.iter().any(|(b, _)| b == name) {
            return fail(format!("the recipe may not override {name}"), vec![]);
        }
    }
    for dir in ["home", "tmp"] {
        if let Err(e) = std::fs::create_dir_all(job.join(dir)) {
            return fail(format!("preparing the build: {e}"), vec![]);
        }
    }
    let mut argv: Vec<String> = vec!["setsid".into()];
    if isolate_network {
        argv.extend(["unshare".into(), "--net".into(), "--".into()]);
    }
    argv.extend(["sh".into(), "-c".into(), "umask 022; exec \"$@\"".into(), "sh".into()]);
    argv.extend(recipe.argv.iter().cloned());
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(root.join(&recipe.workdir))
        .env_clear()
        .envs(base.iter().cloned())
        .envs(recipe.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return fail(format!("cannot start {:?}: {e}", recipe.argv[0]), vec![]),
    };
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let max_log = limits.max_log_bytes;
    let collect = async move {
        let (mut log, mut a, mut b) = (Vec::new(), [0u8; 8192], [0u8; 8192]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                n = out.read(&mut a), if out_open => match n { Ok(0) | Err(_) => out_open = false, Ok(n) => keep(&mut log, &a[..n], max_log) },
                n = err.read(&mut b), if err_open => match n { Ok(0) | Err(_) => err_open = false, Ok(n) => keep(&mut log, &b[..n], max_log) },
            }
        }
        log
    };
    let waited = tokio::time::timeout(limits.time_limit, async {
        let (log, status) = tokio::join!(collect, child.wait());
        (log, status)
    })
    .await;
    match waited {
        Err(_) => {
            if let Some(pid) = pid {
                // The build runs in its own session: kill the whole group.
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
            fail(format!("the build exceeded its time limit of {} s", limits.time_limit.as_secs()), vec![])
        }
        Ok((log, Err(e))) => fail(format!("waiting for the build: {e}"), log),
        Ok((log, Ok(status))) if !status.success() => fail(format!("the build command failed ({status})"), log),
        Ok((log, Ok(_))) => match directory_size(root) {
            Ok(size) if size > limits.max_output_bytes => {
                fail(format!("the build wrote {size} bytes, more than the limit of {}", limits.max_output_bytes), log)
            }
            Err(e) => fail(format!("measuring the build output: {e}"), log),
            Ok(_) => RunReport { result: Ok(()), log, took: started.elapsed() },
        },
    }
}

fn keep(log: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let room = max.saturating_sub(log.len());
    log.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn directory_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Compares the built files with the manifest's expectations. A path that is missing, not a
/// regular file, or resolves outside `root` counts as not produced.
pub fn compare(root: &Path, expected: &[Artifact]) -> Outcome {
    let root = match root.canonicalize() {
        Ok(root) => root,
        Err(e) => return Outcome::Failed { reason: format!("build directory vanished: {e}") },
    };
    let mut mismatches = Vec::new();
    for artifact in expected {
        let got = read_inside(&root, &artifact.path).map(|bytes| (content_hash(&bytes), bytes.len() as u64));
        if got != Some((artifact.sha3, artifact.size)) {
            mismatches.push(ArtifactMismatch {
                path: artifact.path.clone(),
                expected: artifact.sha3,
                got: got.map(|(h, _)| h),
                got_size: got.map(|(_, s)| s),
            });
        }
    }
    if mismatches.is_empty() {
        Outcome::Reproduced
    } else {
        Outcome::Mismatch { artifacts: mismatches }
    }
}

fn read_inside(root: &Path, relative: &str) -> Option<Vec<u8>> {
    if !is_safe_relative(relative) {
        return None;
    }
    let path: PathBuf = root.join(relative).canonicalize().ok()?;
    if !path.starts_with(root) || !path.is_file() {
        return None;
    }
    std::fs::read(path).ok()
}
