//! Downloads from hosts nobody has to trust (`chainiac fetch`) and a small static host for
//! LANs and demos (`chainiac serve`). A download is checked against the artifact's hash
//! and size in the newest release the client verified: it is hashed as it streams into a
//! temporary file beside the output, which is renamed into place only when both match; a
//! source that serves other bytes is named and the next one is tried.

use crate::client_cmd::{parse_chain, StateArg, TrustArgs};
use crate::UsageError;
use anyhow::{Context, Result};
use chainiac_client::Client;
use chainiac_release::{Artifact, ContentHasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where one download comes from, as given to `--from`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `http://…` or `https://…` (a plain `host[:port]/path` is taken as http).
    Http(String),
    /// `file:///path`.
    File(PathBuf),
}

impl Source {
    fn parse(text: &str) -> Result<Source> {
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(UsageError(format!("{text}: a file URL names an absolute path (file:///…)")).into());
            }
            return Ok(Source::File(PathBuf::from(path)));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Source::Http(text.to_string()));
        }
        if text.contains("://") {
            return Err(UsageError(format!("{text}: only http://, https:// and file:// sources are read")).into());
        }
        // A LAN host without a scheme: `192.168.1.5:8080/hello`.
        Ok(Source::Http(format!("http://{text}")))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http(url) => write!(f, "{url}"),
            Source::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

/// What one source gave.
enum Got {
    /// The expected bytes, in the temporary file.
    Match,
    /// Other bytes: their hash and size (or that there were more than expected).
    Wrong(String),
}

/// `chainiac fetch`: artifact `path` of the newest verified release of `chain` (or of
/// release `version`, any up to the verified head) from the first of `sources` that serves
/// the right bytes, into `out`.
#[allow(clippy::too_many_arguments)]
pub fn fetch(
    state: &StateArg,
    chain: &str,
    version: Option<&str>,
    path: &str,
    sources: &[String],
    out: &Path,
    trust: &TrustArgs,
    json: bool,
) -> Result<()> {
    let chain = parse_chain(chain)?;
    if sources.is_empty() {
        return Err(UsageError("name at least one --from source".into()).into());
    }
    let sources = sources.iter().map(|s| Source::parse(s)).collect::<Result<Vec<_>>>()?;
    let client = Client::open(&state.state, trust.level()?)?;
    let (artifact, version) = match version {
        None => client.expected_artifact(chain, path)?,
        Some(version) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(client.expected_artifact_of(chain, version, path))?
        }
    };
    let yank = client.yank_of(chain, &version)?;
    if let Some(yank) = &yank {
        eprintln!("WARNING: release {version} is YANKED: {} (accepted: --allow-yanked)", yank.reason);
    }
    crate::client_cmd::warn_if_stale(&client, chain);
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // The file it replaces keeps its mode (an executable stays one); a new file gets what
    // the user's umask leaves of 0666, as any file a program creates.
    // Only the permission bits: a setuid or setgid bit is not handed to downloaded bytes.
    let replaced_mode: Option<std::fs::Permissions> = std::fs::metadata(out).ok().filter(|m| m.is_file()).map(|m| {
        std::os::unix::fs::PermissionsExt::from_mode(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
    });
    let mut refused: Vec<(String, String)> = Vec::new();
    for source in &sources {
        // Beside the output, so that the rename is within one filesystem; removed unless kept.
        let mut staged = tempfile::Builder::new()
            .prefix(".chainiac-fetch-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        match download(source, &artifact, staged.as_file_mut(), json) {
            Ok(Got::Match) => {
                if let Some(mode) = &replaced_mode {
                    staged
                        .as_file()
                        .set_permissions(mode.clone())
                        .context("giving the download the old file's mode")?;
                }
                staged.as_file().sync_all().context("syncing the download")?;
                staged.persist(out).with_context(|| format!("renaming the download to {}", out.display()))?;
                if json {
                    let refused: Vec<_> =
                        refused.iter().map(|(s, why)| serde_json::json!({ "source": s, "why": why })).collect();
                    println!(
                        "{}",
                        serde_json::json!({
                            "chain": chain.to_hex(), "artifact": path, "version": version, "source": source.to_string(),
                            "out": out.display().to_string(), "size": artifact.size, "refused": refused,
                            "yanked": yank.as_ref().map(|y| y.reason.clone()),
                        })
                    );
                } else {
                    println!(
                        "{} is {path} of release {version}, from {source}: verified ({} bytes)",
                        out.display(),
                        artifact.size
                    );
                }
                return Ok(());
            }
            Ok(Got::Wrong(what)) => {
                eprintln!("{source} served wrong bytes for {path} ({what}); trying the next source");
                refused.push((source.to_string(), format!("wrong bytes: {what}")));
            }
            Err(e) => {
                eprintln!("{source}: {e:#}; trying the next source");
                refused.push((source.to_string(), format!("{e:#}")));
            }
        }
    }
    let summary: Vec<String> = refused.iter().map(|(s, why)| format!("{s}: {why}")).collect();
    Err(anyhow::anyhow!(
        "no source served {path} of release {version} ({} bytes, sha3 {}): {}; {} was not written",
        artifact.size,
        hex::encode(artifact.sha3),
        summary.join("; "),
        out.display()
    ))
}

/// The bytes of `expected` (its hash and size) from the first of `sources` that serves
/// them: what a rebuilder does with a release's source archive. The liars are named in the
/// error when none did.
pub(crate) fn fetch_bytes(sources: &[String], expected: &Artifact) -> Result<Vec<u8>> {
    let mut refused = Vec::new();
    for text in sources {
        let source = Source::parse(text)?;
        let mut staged = tempfile::tempfile().context("creating a temporary file")?;
        match download(&source, expected, &mut staged, true) {
            Ok(Got::Match) => {
                use std::io::Seek;
                let mut bytes = Vec::with_capacity(expected.size as usize);
                staged.rewind().context("reading the download back")?;
                staged.read_to_end(&mut bytes).context("reading the download back")?;
                return Ok(bytes);
            }
            Ok(Got::Wrong(what)) => refused.push(format!("{source} served wrong bytes ({what})")),
            Err(e) => refused.push(format!("{source}: {e:#}")),
        }
    }
    anyhow::bail!("no source served {}: {}", expected.path, refused.join("; "))
}

/// Streams `source` into `into`, hashing as it goes, and stops at one byte past the size
/// expected (a source cannot fill the disk).
fn download(source: &Source, artifact: &Artifact, into: &mut std::fs::File, quiet: bool) -> Result<Got> {
    // Where the bytes came from when a redirect took the request elsewhere: the host that
    // lied is named, not only the one the user gave.
    let mut redirected = None;
    let (mut reader, length): (Box<dyn Read>, Option<u64>) = match source {
        Source::File(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let length = file.metadata().ok().map(|m| m.len());
            (Box::new(file), length)
        }
        Source::Http(url) => {
            // Deadlines on connecting and on each read (a stalled source); the whole
            // download's is below (a trickling one). hyper bounds what a hostile server can
            // make it buffer (chunk sizes and extensions, headers).
            let client = reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::limited(5))
                .build()
                .context("making the HTTP client")?;
            let response = client.get(url).send().map_err(|e| anyhow::anyhow!("{e}"))?;
            let reached = response.url().as_str();
            if reached != url && reached != format!("{url}/") {
                redirected = Some(format!(", redirected to {reached}"));
            }
            let status = response.status();
            if !status.is_success() {
                anyhow::bail!("HTTP status {}{}", status.as_u16(), redirected.unwrap_or_default());
            }
            let length = response.content_length();
            (Box::new(response), length)
        }
    };
    // At least 64 KiB/s on average after the first minute, or the next source is tried.
    let deadline = Duration::from_secs(60) + Duration::from_secs(artifact.size / (64 << 10));
    let started = std::time::Instant::now();
    let redirected = redirected.unwrap_or_default();
    let progress = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(artifact.size) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec}")
            .expect("a valid template"),
    );
    let mut hasher = ContentHasher::new();
    let mut buffer = vec![0u8; 1 << 16];
    let limit = artifact.size.saturating_add(1);
    let mut taken = 0u64;
    loop {
        let room = usize::try_from(limit - taken).unwrap_or(usize::MAX).min(buffer.len());
        if room == 0 {
            break;
        }
        if started.elapsed() > deadline {
            anyhow::bail!("{} s and only {taken} of {} bytes: too slow{redirected}", deadline.as_secs(), artifact.size);
        }
        let n = reader.read(&mut buffer[..room]).with_context(|| format!("reading the download{redirected}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        into.write_all(&buffer[..n]).context("writing the download")?;
        taken += n as u64;
        progress.inc(n as u64);
    }
    progress.finish_and_clear();
    let (sha3, size) = hasher.finish();
    if size > artifact.size {
        let said = length.map_or(String::new(), |l| format!(", {l} announced"));
        return Ok(Got::Wrong(format!("more than the release's {} bytes{said}{redirected}", artifact.size)));
    }
    if (sha3, size) != (artifact.sha3, artifact.size) {
        return Ok(Got::Wrong(format!(
            "sha3 {}…, {size} bytes; the release's is {}…, {} bytes{redirected}",
            &hex::encode(sha3)[..16],
            &hex::encode(artifact.sha3)[..16],
            artifact.size
        )));
    }
    Ok(Got::Match)
}

/// `chainiac serve`: the files under `dir` over plain HTTP at `listen`, until interrupted.
/// Nobody has to trust it: `fetch` checks what it serves.
pub fn serve(dir: &Path, listen: std::net::SocketAddr) -> Result<()> {
    if !dir.is_dir() {
        return Err(UsageError(format!("{} is not a directory", dir.display())).into());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
        eprintln!("serving {} at http://{}/", dir.display(), listener.local_addr()?);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_http_https_file_or_a_lan_host() {
        assert_eq!(Source::parse("https://m.example/a").unwrap(), Source::Http("https://m.example/a".into()));
        assert_eq!(Source::parse("10.0.0.5:8080/hello").unwrap(), Source::Http("http://10.0.0.5:8080/hello".into()));
        assert_eq!(Source::parse("file:///srv/hello").unwrap(), Source::File("/srv/hello".into()));
        assert!(Source::parse("file://relative").is_err());
        assert!(Source::parse("ftp://m.example/a").unwrap_err().to_string().contains("only http://"));
    }
}
