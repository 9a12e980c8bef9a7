//! Per-build control groups: one process limit and one memory limit over a whole build —
//! every process it starts, whatever user it runs as — where the verifier may create
//! cgroups (as root, or in a delegated cgroup v2 subtree). Without them only the per-process
//! and per-user rlimits hold ([`crate::sandbox`]): `RLIMIT_NPROC` counts every process of
//! the build user on the host, so concurrent builds share it, and `RLIMIT_AS` bounds each
//! process, not their sum.
//!
//! Each build gets a group `chainiac-build-<job>` under the verifier's own cgroup, in both
//! the `pids` and `memory` hierarchies (cgroup v1) or once (cgroup v2, with both controllers
//! enabled below the verifier's cgroup), holding the limits, and runs in its leaf
//! `chainiac-build-<job>/build`: a build that could write to its own group's files (a
//! non-root verifier's build runs as the user that owns them) changes only the leaf's, and
//! the limits above it hold. The build's first process moves itself in before it execs
//! (`cgroup.procs`, written `0` between fork and exec), so everything it starts is counted
//! from the first instruction. When the build ends no process may start in the group any
//! more (`pids.max` 0), what is in it is killed and the groups are removed
//! ([`BuildGroup`]'s drop). Tmpfs pages (a sandbox's `HOME` and `TMPDIR`) count as the
//! build's memory.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// Where this verifier makes its builds' groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v1: the verifier's groups in the `pids` and the `memory` hierarchies.
    V1 { pids: PathBuf, memory: PathBuf },
    /// cgroup v2: the cgroup below which builds' groups go (`pids` and `memory` enabled in
    /// its `cgroup.subtree_control`).
    V2 { parent: PathBuf },
}

impl Cgroups {
    /// The directories builds' groups are made in.
    pub fn parents(&self) -> Vec<&Path> {
        match self {
            Cgroups::V1 { pids, memory } => vec![pids, memory],
            Cgroups::V2 { parent } => vec![parent],
        }
    }

    /// What the environment description records.
    pub fn name(&self) -> &'static str {
        match self {
            Cgroups::V1 { .. } => "v1",
            Cgroups::V2 { .. } => "v2",
        }
    }

    /// Finds where this process may create groups with both limits, trying cgroup v2 and
    /// then v1, and checks it by creating and removing one. `Err` says why not (a
    /// verifier then builds with rlimits only, and says so).
    pub fn discover() -> Result<Cgroups, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("/proc/self/mounts: {e}"))?;
        let candidates = candidates(&own, &mounts);
        if candidates.is_empty() {
            return Err("no cgroup hierarchy with the pids and memory controllers is mounted".into());
        }
        let mut why = Vec::new();
        for candidate in candidates {
            match candidate.prepare().and_then(|()| candidate.probe()) {
                Ok(()) => return Ok(candidate),
                Err(e) => why.push(format!("{}: {e}", candidate.name())),
            }
        }
        Err(why.join("; "))
    }

    fn prepare(&self) -> Result<(), String> {
        let Cgroups::V2 { parent } = self else { return Ok(()) };
        let control = parent.join("cgroup.subtree_control");
        let enabled = |path: &Path| {
            std::fs::read_to_string(path).is_ok_and(|c| {
                let words: Vec<&str> = c.split_whitespace().collect();
                words.contains(&"pids") && words.contains(&"memory")
            })
        };
        if enabled(&control) {
            return Ok(());
        }
        // A cgroup with processes may not enable controllers for its children (v2's "no
        // internal processes"): a verifier alone in its cgroup (a delegated service's) moves
        // into a leaf of its own first; one that shares it (a login shell's scope) does not
        // move, and builds without cgroups.
        if std::fs::write(&control, "+pids +memory").is_err() {
            let procs = std::fs::read_to_string(parent.join("cgroup.procs")).unwrap_or_default();
            let me = std::process::id().to_string();
            if procs.lines().any(|pid| pid.trim() != me) {
                return Err(format!(
                    "{} holds other processes besides this one; run the verifier in a cgroup of its own with pids and memory delegated (systemd: Delegate=pids memory)",
                    parent.display()
                ));
            }
            let leaf = parent.join("chainiac-verifier");
            create_dir(&leaf)?;
            std::fs::write(leaf.join("cgroup.procs"), &me)
                .map_err(|e| format!("moving the verifier into {}: {e}", leaf.display()))?;
            if let Err(e) = std::fs::write(&control, "+pids +memory") {
                // Back where it was, the leaf gone: nothing left behind.
                let _ = std::fs::write(parent.join("cgroup.procs"), &me);
                let _ = std::fs::remove_dir(&leaf);
                return Err(format!("enabling pids and memory in {}: {e}", control.display()));
            }
        }
        Ok(())
    }

    fn probe(&self) -> Result<(), String> {
        let group = self.create(&format!("probe-{}", std::process::id()), 64, 64 << 20)?;
        drop(group);
        Ok(())
    }

    /// A group for one build (`job`: a name unique among running builds) with at most
    /// `processes` processes and `memory_bytes` of memory (no swap where that can be set).
    pub fn create(&self, job: &str, processes: u64, memory_bytes: u64) -> Result<BuildGroup, String> {
        let name = format!("chainiac-build-{job}");
        let mut group = BuildGroup { dirs: Vec::new(), procs: Vec::new(), version: self.name() };
        let limits: Vec<(PathBuf, Vec<(&str, String)>)> = match self {
            Cgroups::V1 { pids, memory } => vec![
                (pids.join(&name), vec![("pids.max", processes.to_string())]),
                (memory.join(&name), vec![("memory.limit_in_bytes", memory_bytes.to_string())]),
            ],
            Cgroups::V2 { parent } => vec![(
                parent.join(&name),
                vec![
                    ("pids.max", processes.to_string()),
                    ("memory.max", memory_bytes.to_string()),
                    ("memory.swap.max", "0".into()),
                ],
            )],
        };
        for (dir, files) in limits {
            create_dir(&dir)?;
            group.dirs.push(dir.clone());
            for (file, value) in files {
                let path = dir.join(file);
                // Swap may be off in this kernel: its file is then absent.
                if file == "memory.swap.max" && !path.exists() {
                    continue;
                }
                std::fs::write(&path, &value).map_err(|e| format!("setting {}: {e}", path.display()))?;
            }
            let leaf = dir.join("build");
            create_dir(&leaf)?;
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(leaf.join("cgroup.procs"))
                .map_err(|e| format!("opening {}: {e}", leaf.join("cgroup.procs").display()))?;
            group.procs.push(procs);
        }
        Ok(group)
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("creating {}: {e}", dir.display())),
    }
}

/// The hierarchies where this process's own cgroup is (`own`: /proc/self/cgroup) and both
/// controllers are available (`mounts`: /proc/self/mounts), v2 first.
fn candidates(own: &str, mounts: &str) -> Vec<Cgroups> {
    // (hierarchy id, controllers, path) per line of /proc/self/cgroup.
    let own: Vec<(&str, Vec<&str>, &str)> = own
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((id, controllers.split(',').filter(|c| !c.is_empty()).collect(), path))
        })
        .collect();
    let path_of = |controller: &str| own.iter().find(|(_, c, _)| c.contains(&controller)).map(|(_, _, p)| *p);
    let v1_mount = |controller: &str| {
        mounts.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (point, kind, options) = (*fields.get(1)?, *fields.get(2)?, *fields.get(3)?);
            (kind == "cgroup" && options.split(',').any(|o| o == controller)).then(|| PathBuf::from(point))
        })
    };
    let mut found = Vec::new();
    let unified = own.iter().find(|(id, c, _)| *id == "0" && c.is_empty()).map(|(_, _, p)| *p);
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let (Some(point), Some(&"cgroup2"), Some(path)) = (fields.get(1), fields.get(2), unified) {
            let parent = under(Path::new(point), path);
            let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
            let words: Vec<&str> = available.split_whitespace().collect();
            if words.contains(&"pids") && words.contains(&"memory") {
                found.push(Cgroups::V2 { parent });
            }
        }
    }
    if let (Some(pids_mount), Some(memory_mount), Some(pids_path), Some(memory_path)) =
        (v1_mount("pids"), v1_mount("memory"), path_of("pids"), path_of("memory"))
    {
        found.push(Cgroups::V1 { pids: under(&pids_mount, pids_path), memory: under(&memory_mount, memory_path) });
    }
    found
}

/// `path` (absolute within its hierarchy) under the hierarchy's mount point.
fn under(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// One build's group. Dropping it kills what is left in it and removes it.
#[derive(Debug)]
pub struct BuildGroup {
    dirs: Vec<PathBuf>,
    /// Each hierarchy's `cgroup.procs`, opened for the build's first process to move
    /// itself in between fork and exec (no allocation there: only `write(fd, "0")`).
    procs: Vec<std::fs::File>,
    version: &'static str,
}

impl BuildGroup {
    /// The descriptors [`enter`] writes to.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Which limits the build ran into, from the groups' event counters: what a failed
    /// build's reason adds ("its limit of 64 processes").
    pub fn limits_reached(&self) -> Vec<&'static str> {
        let mut reached = Vec::new();
        let count = |dir: &Path, file: &str, key: &str| -> u64 {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|text| {
                    text.lines().find_map(|line| {
                        let mut words = line.split_whitespace();
                        (words.next() == Some(key)).then(|| words.next()?.parse().ok()).flatten()
                    })
                })
                .unwrap_or(0)
        };
        // Kernels count a hit where the limit is or where the process forked: both, summed.
        let total = |file: &str, key: &str| -> u64 {
            self.dirs.iter().flat_map(|dir| tree_of(dir)).map(|group| count(&group, file, key)).sum()
        };
        if total("pids.events", "max") > 0 {
            reached.push("processes");
        }
        let oom = match self.version {
            "v1" => total("memory.oom_control", "oom_kill"),
            _ => total("memory.events", "oom_kill"),
        };
        if oom > 0 {
            reached.push("memory");
        }
        reached
    }
}

/// Moves the calling process into each group: for `pre_exec`, between fork and exec.
/// Async-signal-safe (one `write` per descriptor, nothing allocated).
pub fn enter(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: `fd` is an open descriptor the parent keeps open until the child execs;
        // the buffer is a static byte string.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Drop for BuildGroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Nothing may start in the group any more (in the pids hierarchy; v2's one).
            let _ = std::fs::write(dir.join("pids.max"), "0");
            if self.version == "v2" && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            // v1, or a kernel without cgroup.kill: kill what is listed, in the group and any
            // group below it, until nothing is.
            for _ in 0..100 {
                let mut pids: Vec<i32> = Vec::new();
                for group in tree_of(dir) {
                    let listed = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
                    pids.extend(listed.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill has no memory effects; a pid that is gone answers ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        for dir in &self.dirs {
            // Deepest first; emptied processes leave their group a moment after they die.
            for group in tree_of(dir).into_iter().rev() {
                for _ in 0..100 {
                    match std::fs::remove_dir(&group) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                    }
                }
            }
        }
    }
}

/// `dir` and every cgroup below it, parents before children.
fn tree_of(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    let mut next = 0;
    while next < found.len() {
        if let Ok(entries) = std::fs::read_dir(&found[next]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(entry.path());
                }
            }
        }
        next += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kind of layout (cgroup v1 with a v2 mount beside it) and a pure v2
    /// one: the groups go under the process's own path in each hierarchy.
    #[test]
    fn groups_go_under_the_processs_own_cgroup() {
        let own = "9:name=systemd:/\n8:pids:/\n4:memory:/svc/abc\n0::/\n";
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n";
        assert_eq!(
            candidates(own, mounts),
            vec![Cgroups::V1 {
                pids: PathBuf::from("/sys/fs/cgroup/pids"),
                memory: PathBuf::from("/sys/fs/cgroup/memory/svc/abc")
            }]
        );
        assert_eq!(candidates(own, "proc /proc proc rw 0 0\n"), vec![], "nothing mounted");
        assert_eq!(
            under(Path::new("/sys/fs/cgroup"), "/system.slice/v.service"),
            PathBuf::from("/sys/fs/cgroup/system.slice/v.service")
        );
    }
}
