//! Running a build recipe in a clean, normalized environment with limits (the source is
//! unpacked by [`crate::unpack`]).
//!
//! With [`Isolation::Bubblewrap`] (the default) a build runs under `bwrap` in new user,
//! mount, pid, network, ipc and uts namespaces: the host's system directories read-only
//! (`/usr`, `/etc` and the `/bin`, `/sbin`, `/lib*` links or directories), nothing else of
//! the host — not the verifier's data, key or configuration — the source read-write at
//! `/build/<project>-<version>` (the same path on every verifier, so `-g` builds reproduce
//! as they are), `HOME` and `TMPDIR` on size-capped tmpfs, only a loopback interface, and
//! the pid namespace torn down with the build, so nothing it started outlives it. Resource
//! limits are set with `prlimit` in both modes (address space, CPU time, file size, and
//! processes when the build has no cgroup of its own) and, where the verifier may create
//! cgroups, over the whole build ([`crate::cgroup`]: processes and memory; with
//! `isolation = "none"` the build runs as a user that may own its group, so those limits
//! are only advisory there). [`Isolation::None`] must be chosen explicitly: a verifier refuses to start with
//! bubblewrap selected and not working.

use chainiac_release::rules::is_safe_relative;
use chainiac_release::{content_hash, Artifact, ArtifactMismatch, Outcome, Recipe, SOURCE_DATE_EPOCH};
use serde::{Deserialize, Serialize};
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
    /// Address space of each build process (`RLIMIT_AS`), and the memory of the whole build
    /// in its own cgroup where there is one ([`crate::cgroup`]; tmpfs pages count).
    pub max_memory_bytes: u64,
    /// Processes (tasks) of the whole build in its own cgroup; without one, of the build's
    /// user (`RLIMIT_NPROC`, shared by concurrent builds; the kernel does not apply it to
    /// root).
    pub max_processes: u64,
    /// Size of the tmpfs that holds `HOME`, and of the one that holds `TMPDIR` (bubblewrap).
    pub tmpfs_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 20_000,
            max_unpacked_bytes: 512 << 20,
            time_limit: Duration::from_secs(600),
            max_output_bytes: 2 << 30,
            max_log_bytes: 1 << 20,
            max_memory_bytes: 8 << 30,
            max_processes: 4096,
            tmpfs_bytes: 1 << 30,
        }
    }
}

/// How builds are confined (`isolation` in verifier.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Namespaces through bubblewrap (see the module comment).
    #[default]
    Bubblewrap,
    /// No confinement: the build runs as the verifier's user and sees its files (the
    /// network is still cut with `unshare --net` where that works). Never the default.
    None,
}

impl Isolation {
    /// What attestations record of it.
    pub fn level(self) -> chainiac_release::BuildIsolation {
        match self {
            Isolation::Bubblewrap => chainiac_release::BuildIsolation::Namespaces,
            Isolation::None => chainiac_release::BuildIsolation::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isolation::Bubblewrap => "bubblewrap",
            Isolation::None => "none",
        }
    }
}

/// Where the source is inside the sandbox: `/build/<project>-<version>`.
pub fn build_path(project: &str, version: &str) -> Result<String, String> {
    let name = format!("{project}-{version}");
    if name.contains('/') || !is_safe_relative(&name) {
        return Err(format!("project and version {name:?} do not make a directory name"));
    }
    Ok(format!("/build/{name}"))
}

/// The user a root verifier's builds run as on the host (`nobody`): inside the sandbox's
/// user namespace the build is uid 1000, but files are checked against the host uid it maps
/// to, and for a root verifier that would be root (able to read `/etc/shadow` and host keys
/// under `/etc`).
pub const BUILD_HOST_UID: u32 = 65534;

/// For a root verifier: the job directories must be reachable by [`BUILD_HOST_UID`], which
/// sets up the sandbox (bubblewrap binds the source before the build sees anything; the
/// build itself sees none of the host's directories). Makes `jobs` (0711) and names the
/// first directory above it that others cannot search.
pub fn jobs_reachable(jobs: &Path) -> Result<(), String> {
    if !running_as_root() {
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(jobs).map_err(|e| format!("creating {}: {e}", jobs.display()))?;
    std::fs::set_permissions(jobs, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("{}: {e}", jobs.display()))?;
    let absolute = std::path::absolute(jobs).map_err(|e| format!("{}: {e}", jobs.display()))?;
    for dir in absolute.ancestors().skip(1) {
        let mode = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "builds run as uid {BUILD_HOST_UID} on the host and must reach {}, but {} is not searchable by others (chmod o+x {})",
                jobs.display(),
                dir.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The `bwrap` arguments up to the command: namespaces, the read-only system, capped tmpfs
/// for `HOME` and `TMPDIR`, the source at `build` (host directory `source`), `chdir` there.
/// A root verifier first drops to [`BUILD_HOST_UID`] with `setpriv`.
fn bwrap_args(bwrap: &Path, source: &Path, build: &str, chdir: &str, limits: &Limits) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if running_as_root() {
        let id = BUILD_HOST_UID.to_string();
        args.extend(["setpriv".into(), format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into()]);
        args.push("--".into());
    }
    args.push(bwrap.display().to_string());
    let tmpfs = limits.tmpfs_bytes.to_string();
    args.extend(
        [
            "--unshare-all",
            "--unshare-user",
            // No user namespace inside: a build that made one could mount cgroupfs and, where
            // its group's files are its user's (a delegated subtree), raise its own limits.
            "--disable-userns",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--hostname",
            "build",
            "--die-with-parent",
            "--new-session",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--ro-bind",
            "/usr",
            "/usr",
            "--ro-bind",
            "/etc",
            "/etc",
        ]
        .map(String::from),
    );
    // Merged /usr makes these links; older systems have directories.
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match std::fs::symlink_metadata(top) {
            Ok(meta) if meta.is_symlink() => {
                if let Ok(target) = std::fs::read_link(top) {
                    args.extend(["--symlink".into(), target.display().to_string(), top.into()]);
                }
            }
            Ok(_) => args.extend(["--ro-bind".into(), top.into(), top.into()]),
            Err(_) => {}
        }
    }
    for dir in ["/tmp", "/home/build"] {
        args.extend(["--size".into(), tmpfs.clone(), "--tmpfs".into(), dir.into()]);
    }
    args.extend(["--bind".into(), source.display().to_string(), build.into(), "--chdir".into(), chdir.into()]);
    args
}

/// Whether bubblewrap runs here with every namespace the builds use; the reason if not.
pub fn bubblewrap_works(bwrap: &Path) -> Result<(), String> {
    let dir = std::env::temp_dir();
    let mut argv = bwrap_args(bwrap, &dir, "/build/probe", "/build/probe", &Limits::default());
    argv.push("true".into());
    match std::process::Command::new(&argv[0]).args(&argv[1..]).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            Err(format!("{} does not run here: {}", bwrap.display(), String::from_utf8_lossy(&out.stderr).trim()))
        }
        Err(e) => Err(format!("{} cannot be started: {e} (Debian: apt install bubblewrap)", bwrap.display())),
    }
}

/// The environment every build starts from, plus the recipe's own variables.
fn environment(home: &str, tmp: &str, source_date_epoch: u64) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), home.into()),
        ("TMPDIR".into(), tmp.into()),
        ("TZ".into(), "UTC".into()),
        ("LC_ALL".into(), "C".into()),
        ("LANG".into(), "C".into()),
        (SOURCE_DATE_EPOCH.into(), source_date_epoch.to_string()),
    ]
}

/// How a build is confined, and where: the sandbox settings [`run`] needs.
#[derive(Debug, Clone)]
pub struct Confinement {
    pub isolation: Isolation,
    /// The bubblewrap program.
    pub bwrap: PathBuf,
    /// Without bubblewrap: a new network namespace (`unshare --net`).
    pub isolate_network: bool,
    /// The source's path inside the sandbox ([`build_path`]).
    pub build_path: String,
    /// Where the build gets its own cgroup (its process and memory limits over the whole
    /// build); none: the rlimits alone.
    pub cgroups: Option<crate::cgroup::Cgroups>,
}

/// Hands the unpacked tree to `uid` (symlinks themselves, not their targets).
fn chown_tree(root: &Path, uid: u32) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Why a build did not succeed, and whether the same build would fail again anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    pub reason: String,
    /// The failure is the recipe's and would recur on any machine: a working directory
    /// or variable the recipe may not have, too much output. Not so anything the running
    /// build ran into: a non-zero exit (under bubblewrap a kill by a CPU or memory limit
    /// comes back as exit code 128 + signal, and make or sh turn a child's failed fork —
    /// without cgroups the process limit is shared by every build of uid 65534 — or
    /// allocation into exit
    /// 2), a signal, the time limit, or the verifier's own trouble: those can depend on the
    /// machine's load, so the verifier signs them but does not keep them (a later request
    /// builds again; an attack review showed a concurrent build making an honest one
    /// fail, which a kept failure would have pinned on its manifest).
    pub deterministic: bool,
}

impl BuildFailure {
    fn of_build(reason: String) -> Self {
        BuildFailure { reason, deterministic: true }
    }

    fn of_circumstance(reason: String) -> Self {
        BuildFailure { reason, deterministic: false }
    }
}

/// How a build went.
#[derive(Debug)]
pub struct RunReport {
    /// Why the recipe could not run or did not succeed.
    pub result: Result<(), BuildFailure>,
    /// stdout and stderr, interleaved as read, cut at the log limit.
    pub log: Vec<u8>,
    pub took: Duration,
}

/// Runs `recipe` in `recipe.workdir` of the source (host directory `root`, inside the
/// sandbox at `confinement.build_path`) with a clean environment, umask 022, the limits,
/// in its own process group (killed whole at the time limit) and confined as
/// `confinement` says. `job` holds `HOME` and `TMPDIR` when there is no sandbox.
pub async fn run(
    recipe: &Recipe,
    job: &Path,
    root: &Path,
    source_date_epoch: u64,
    limits: &Limits,
    confinement: &Confinement,
) -> RunReport {
    let started = Instant::now();
    let fail = |reason: String, log: Vec<u8>| RunReport {
        result: Err(BuildFailure::of_build(reason)),
        log,
        took: started.elapsed(),
    };
    let trouble = |reason: String, log: Vec<u8>| RunReport {
        result: Err(BuildFailure::of_circumstance(reason)),
        log,
        took: started.elapsed(),
    };
    if !is_safe_relative(&recipe.workdir) {
        return fail(format!("working directory {:?} is not a plain relative path", recipe.workdir), vec![]);
    }
    let (home, tmp) = match confinement.isolation {
        Isolation::Bubblewrap => ("/home/build".to_string(), "/tmp".to_string()),
        Isolation::None => (job.join("home").display().to_string(), job.join("tmp").display().to_string()),
    };
    let base = environment(&home, &tmp, source_date_epoch);
    // The recipe's SOURCE_DATE_EPOCH is the one `source_date_epoch` carries (the caller took
    // it from the manifest): it is in `base` already.
    let recipe_env: Vec<&(String, String)> = recipe.env.iter().filter(|(name, _)| name != SOURCE_DATE_EPOCH).collect();
    for (name, value) in recipe_env.iter().copied() {
        if base.iter().any(|(b, _)| b == name) {
            return fail(format!("the recipe may not override {name}"), vec![]);
        }
        let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain || value.contains('\0') {
            return fail(format!("recipe variable {name:?} is not a plain NAME=value"), vec![]);
        }
    }
    for dir in ["home", "tmp"] {
        if let Err(e) = std::fs::create_dir_all(job.join(dir)) {
            return trouble(format!("preparing the build: {e}"), vec![]);
        }
    }
    // The build's own cgroup, entered by its first process before it execs; dropped (what
    // is left in it killed, the group removed) when this function returns.
    let group = match &confinement.cgroups {
        None => None,
        Some(cgroups) => {
            let name = job.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match cgroups.create(&name, limits.max_processes, limits.max_memory_bytes) {
                Ok(group) => Some(group),
                Err(e) => return trouble(format!("preparing the build's cgroup: {e}"), vec![]),
            }
        }
    };
    let cpu_seconds = limits.time_limit.as_secs().max(1);
    let mut argv: Vec<String> = vec![
        "prlimit".into(),
        format!("--as={}", limits.max_memory_bytes),
        format!("--cpu={cpu_seconds}"),
        format!("--fsize={}", limits.max_output_bytes),
    ];
    // Without a cgroup the process limit is the build user's, shared by concurrent builds;
    // with one, the group's limit is the build's own and the user's is not narrowed.
    if group.is_none() {
        argv.push(format!("--nproc={}", limits.max_processes));
    }
    argv.push("--".into());
    let workdir = root.join(&recipe.workdir);
    match confinement.isolation {
        Isolation::Bubblewrap => {
            let inside = format!("{}/{}", confinement.build_path, recipe.workdir);
            let inside = inside.trim_end_matches('/').trim_end_matches("/.");
            argv.extend(bwrap_args(&confinement.bwrap, root, &confinement.build_path, inside, limits));
            argv.push("--".into());
        }
        Isolation::None => {
            if confinement.isolate_network {
                argv.extend(["unshare".into(), "--net".into(), "--".into()]);
            }
        }
    }
    // The recipe's variables reach the build only, through `env` at the end of the chain:
    // the host-side programs before it (prlimit, setpriv, bwrap, unshare) run with the base
    // environment alone, or `LD_PRELOAD=./evil.so` from the archive would run on the host.
    argv.push("env".into());
    argv.extend(recipe_env.iter().map(|(name, value)| format!("{name}={value}")));
    argv.extend(["sh".into(), "-c".into(), "umask 022; exec \"$@\"".into(), "sh".into()]);
    argv.extend(recipe.argv.iter().cloned());
    if !workdir.is_dir() {
        return fail(format!("working directory {:?} is not in the source", recipe.workdir), vec![]);
    }
    if confinement.isolation == Isolation::Bubblewrap && running_as_root() {
        if let Err(e) = chown_tree(root, BUILD_HOST_UID) {
            return trouble(format!("preparing the build: {e}"), vec![]);
        }
    }
    // Unconfined builds start in their working directory; a sandbox's host side starts in
    // the job (never in a directory the archive shaped).
    let host_dir = if confinement.isolation == Isolation::None { workdir.clone() } else { job.to_path_buf() };
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .process_group(0)
        .current_dir(&host_dir)
        .env_clear()
        .envs(base.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(group) = &group {
        let fds = group.procs_fds();
        // SAFETY: the hook only writes to descriptors this function keeps open (in `group`)
        // until the child has exec'd; `cgroup::enter` allocates nothing.
        unsafe { command.pre_exec(move || crate::cgroup::enter(&fds)) };
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return trouble(format!("cannot start {:?}: {e}", argv[0]), vec![]),
    };
    let pid = child.id();
    // Whatever the build left running in its group dies with it, also when the request is
    // abandoned mid-build (the sandbox's pid namespace does that too; unconfined builds
    // have only this).
    let _process_group = pid.map(ProcessGroup);
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
    // What the build's cgroup saw it run into, for the release manager reading the reason.
    let reached = |reason: String| match group.as_ref().map(|g| g.limits_reached()).unwrap_or_default() {
        reached if reached.is_empty() => reason,
        reached => {
            let what: Vec<String> = reached
                .iter()
                .map(|&limit| match limit {
                    "processes" => format!("its limit of {} processes", limits.max_processes),
                    _ => format!("its memory limit of {} bytes", limits.max_memory_bytes),
                })
                .collect();
            format!("{reason}; the build reached {}", what.join(" and "))
        }
    };
    match waited {
        Err(_) => {
            if let Some(pid) = pid {
                // The build runs in its own session: kill the whole group.
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
            trouble(format!("the build exceeded its time limit of {} s", limits.time_limit.as_secs()), vec![])
        }
        Ok((log, Err(e))) => trouble(format!("waiting for the build: {e}"), log),
        Ok((log, Ok(status))) if status.code().is_some_and(|c| c != 0) => {
            trouble(reached(format!("the build command failed ({status})")), log)
        }
        Ok((log, Ok(status))) if !status.success() => {
            trouble(reached(format!("the build command was killed ({status}); a limit may have been reached")), log)
        }
        Ok((log, Ok(_))) => match directory_size(root) {
            Ok(size) if size > limits.max_output_bytes => {
                fail(format!("the build wrote {size} bytes, more than the limit of {}", limits.max_output_bytes), log)
            }
            Err(e) => trouble(format!("measuring the build output: {e}"), log),
            Ok(_) => RunReport { result: Ok(()), log, took: started.elapsed() },
        },
    }
}

/// A build's process group (its leader's pid), killed whole when dropped.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0) {
            // SAFETY: kill has no memory effects; a group that is gone answers ESRCH.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
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
                // Saturating: a build can make sparse files of any length.
                total = u64::saturating_add(total, meta.len());
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
        let got = hash_inside(&root, &artifact.path);
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

/// The content hash and size of the file at `relative` under `root` (canonical), if it is a
/// regular file inside it: what artifacts are compared by.
pub(crate) fn hash_inside(root: &Path, relative: &str) -> Option<([u8; 32], u64)> {
    read_inside(root, relative).map(|bytes| (content_hash(&bytes), bytes.len() as u64))
}

/// The file at `relative` under `root` (canonical), if it is a regular file inside it.
pub(crate) fn read_inside(root: &Path, relative: &str) -> Option<Vec<u8>> {
    if !is_safe_relative(relative) {
        return None;
    }
    let path: PathBuf = root.join(relative).canonicalize().ok()?;
    if !path.starts_with(root) || !path.is_file() {
        return None;
    }
    std::fs::read(path).ok()
}
