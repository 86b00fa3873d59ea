//! Sources: a bare mirror per repository, kept with the `git` program, from
//! which a run reads its pipeline file and its tree at the exact commit.
//!
//! The tree leaves the mirror as a tar stream (`git archive`), which the
//! runner unpacks into the run's workspace volume on whichever Docker host
//! runs it, so no host needs the repository on its disk.

use crate::PipelineError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// What a run is asked to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Branch(String),
    Tag(String),
    /// A full or abbreviated commit id, with the branch or tag it belongs to if known.
    Commit {
        sha: String,
        branch: Option<String>,
        tag: Option<String>,
    },
}

impl Target {
    pub fn branch(&self) -> Option<&str> {
        match self {
            Target::Branch(b) => Some(b),
            Target::Commit { branch, .. } => branch.as_deref(),
            Target::Tag(_) => None,
        }
    }

    pub fn tag(&self) -> Option<&str> {
        match self {
            Target::Tag(t) => Some(t),
            Target::Commit { tag, .. } => tag.as_deref(),
            Target::Branch(_) => None,
        }
    }
}

/// A source as it may be shown: a URL's credentials masked (a password,
/// or over http(s) a user name alone, which is how tokens are given there:
/// `https://TOKEN@host/…`; ssh's user is no secret). Clones use the source
/// as stored.
pub fn redacted(source: &str) -> String {
    const MASK: &str = "********";
    match url::Url::parse(source) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(MASK));
            u.into()
        }
        Ok(mut u) if !u.username().is_empty() && matches!(u.scheme(), "http" | "https") => {
            let _ = u.set_username(MASK);
            u.into()
        }
        Ok(_) => source.to_owned(),
        // Not a URL this parser takes (a bad port, say) yet with `//…@`:
        // what stands between them goes.
        Err(_) => match (source.find("://"), source.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}{MASK}{}", &source[..scheme + 3], &source[at..]),
            _ => source.to_owned(),
        },
    }
}

/// [`redacted`] for `#[serde(serialize_with)]`.
pub fn serialize_redacted<S: serde::Serializer>(source: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted(source))
}

/// A ref name as git accepts it, and never an option.
pub fn check_ref_name(field: &str, name: &str) -> Result<(), PipelineError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with(['-', '/', '.'])
        || name.ends_with(['/', '.'])
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
        || name.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(PipelineError::invalid(field, format!("`{name}` is not a valid git ref name")));
    }
    Ok(())
}

pub fn check_sha(field: &str, sha: &str) -> Result<(), PipelineError> {
    if (4..=64).contains(&sha.len()) && sha.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(PipelineError::invalid(field, format!("`{sha}` is not a commit id")))
    }
}

pub struct Mirror {
    dir: PathBuf,
}

/// A source as git is given it: over http(s), the URL without its user
/// name and password, which go on git's command line and into the
/// mirror's config (a command line is readable by every user of the
/// machine), and those credentials apart, which reach git through its
/// environment (readable only by this user) and a credential helper.
struct Remote {
    url: String,
    /// Decoded user name and password, as git's credential protocol takes them.
    credentials: Option<(String, Option<String>)>,
}

impl Remote {
    fn new(source: &str) -> Remote {
        let plain = || Remote { url: source.to_owned(), credentials: None };
        let Ok(mut url) = url::Url::parse(source) else { return plain() };
        if !matches!(url.scheme(), "http" | "https") || (url.username().is_empty() && url.password().is_none()) {
            return plain();
        }
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|s| s.into_owned());
        let (Some(user), password) = (decode(url.username()), url.password().map(decode)) else { return plain() };
        let password = match password {
            None => None,
            Some(Some(p)) => Some(p),
            Some(None) => return plain(),
        };
        // The credential protocol is line-based: a line break or a NUL in a
        // value would forge its lines. git refuses such URLs itself.
        if [Some(&user), password.as_ref()].into_iter().flatten().any(|v| v.contains(['\n', '\r', '\0'])) {
            return plain();
        }
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Remote { url: url.into(), credentials: Some((user, password)) }
    }
}

/// Answers git's `get` with the credentials in the environment, after
/// emptying the list of helpers so no other one is asked or told.
const CREDENTIAL_HELPER: &str = r#"!f() { test "$1" = get || return 0; printf 'username=%s\n' "$LEANLOOP_GIT_USERNAME"; test -z "${LEANLOOP_GIT_PASSWORD+set}" || printf 'password=%s\n' "$LEANLOOP_GIT_PASSWORD"; }; f"#;

async fn git(dir: Option<&Path>, args: &[&str]) -> Result<Vec<u8>, PipelineError> {
    git_to(None, dir, args).await
}

/// The longest a clone or fetch may take before git is stopped: a server
/// that stalls must not hold the repository's mirror (and its runs) for good.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(600);

/// Below this many bytes a second for [`LOW_SPEED_SECS`], an HTTP transfer
/// is given up as stalled (git's `http.lowSpeedLimit`/`lowSpeedTime`).
const LOW_SPEED_BYTES: &str = "1000";
const LOW_SPEED_SECS: &str = "60";

/// git with `args`, in `dir`, killed if dropped.
fn command(dir: Option<&Path>, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    // Never ask for credentials on a terminal; fail instead. Only plain
    // transports: `ext::` runs a command, `fd::` waits on a descriptor.
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .kill_on_drop(true);
    command
}

fn failed(args: &[&str], stderr: &[u8]) -> PipelineError {
    let stderr = String::from_utf8_lossy(stderr);
    PipelineError::Git(format!("git {}: {}", args.first().unwrap_or(&""), stderr.trim()))
}

/// Runs git, with `remote`'s credentials at hand when it talks to it, and
/// [`FETCH_DEADLINE`] to do it in.
async fn git_to(remote: Option<&Remote>, dir: Option<&Path>, args: &[&str]) -> Result<Vec<u8>, PipelineError> {
    let mut command = command(dir, args);
    let mut config: Vec<(&str, &str)> = Vec::new();
    if remote.is_some() {
        config.extend([("http.lowSpeedLimit", LOW_SPEED_BYTES), ("http.lowSpeedTime", LOW_SPEED_SECS)]);
    }
    if let Some((user, password)) = remote.and_then(|r| r.credentials.as_ref()) {
        config.extend([("credential.helper", ""), ("credential.helper", CREDENTIAL_HELPER)]);
        command.env("LEANLOOP_GIT_USERNAME", user);
        if let Some(password) = password {
            command.env("LEANLOOP_GIT_PASSWORD", password);
        }
    }
    // Settings through the environment, not the command line: see `Remote`.
    command.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (key, value)) in config.into_iter().enumerate() {
        command.env(format!("GIT_CONFIG_KEY_{i}"), key).env(format!("GIT_CONFIG_VALUE_{i}"), value);
    }
    let output = match remote {
        // Dropped at the deadline, git is killed (`kill_on_drop`).
        Some(_) => tokio::time::timeout(FETCH_DEADLINE, command.output()).await.map_err(|_| {
            PipelineError::Git(format!(
                "git {} took over {} s; stopped",
                args.first().unwrap_or(&""),
                FETCH_DEADLINE.as_secs()
            ))
        })?,
        None => command.output().await,
    };
    let output = output.map_err(|e| PipelineError::Git(format!("cannot run git: {e}")))?;
    if !output.status.success() {
        return Err(failed(args, &output.stderr));
    }
    Ok(output.stdout)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

impl Mirror {
    pub fn new(dir: PathBuf) -> Mirror {
        Mirror { dir }
    }

    /// Removes the mirror from disk, whatever state it is in.
    pub fn remove(&self) {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "a mirror could not be removed");
            }
            _ => {}
        }
    }

    /// Clones on first use, fetches every ref afterwards.
    pub async fn sync(&self, source: &str) -> Result<(), PipelineError> {
        let remote = Remote::new(source);
        if self.dir.join("HEAD").exists() {
            // Also takes credentials out of a mirror cloned with them in its config.
            git(Some(&self.dir), &["config", "remote.origin.url", &remote.url]).await?;
            let fetch = ["fetch", "--prune", "--quiet", "--force", "origin", "+refs/*:refs/*"];
            git_to(Some(&remote), Some(&self.dir), &fetch).await?;
        } else {
            if let Some(parent) = self.dir.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let dir = self.dir.to_string_lossy();
            git_to(Some(&remote), None, &["clone", "--mirror", "--quiet", "--", &remote.url, &dir]).await?;
        }
        Ok(())
    }

    /// The full commit id `target` names now.
    pub async fn resolve(&self, target: &Target) -> Result<String, PipelineError> {
        let spec = match target {
            Target::Branch(b) => format!("refs/heads/{b}^{{commit}}"),
            Target::Tag(t) => format!("refs/tags/{t}^{{commit}}"),
            Target::Commit { sha, .. } => format!("{sha}^{{commit}}"),
        };
        git(Some(&self.dir), &["rev-parse", "--verify", "--quiet", &spec]).await.map(text).map_err(|_| match target {
            Target::Branch(b) => PipelineError::invalid("branch", format!("no branch `{b}` in the repository")),
            Target::Tag(t) => PipelineError::invalid("tag", format!("no tag `{t}` in the repository")),
            Target::Commit { sha, .. } => {
                PipelineError::invalid("commit", format!("no commit `{sha}` in the repository"))
            }
        })
    }

    /// The text of `path` at `sha`, if the commit has it: one over
    /// `max_bytes` is refused by its size, never read.
    pub async fn file(&self, sha: &str, path: &str, max_bytes: usize) -> Result<Option<String>, PipelineError> {
        let object = format!("{sha}:{path}");
        // A blob only: a directory of that name is no file.
        let kind = git(Some(&self.dir), &["cat-file", "-t", &object]).await.map(text);
        if kind.ok().as_deref() != Some("blob") {
            return Ok(None);
        }
        let Ok(size) = git(Some(&self.dir), &["cat-file", "-s", &object]).await else { return Ok(None) };
        let size: u64 = text(size).parse().map_err(|_| PipelineError::Git(format!("no size for {object}")))?;
        if size > max_bytes as u64 {
            return Err(PipelineError::InvalidFile {
                line: None,
                message: format!("the file is {size} bytes; at most {max_bytes}"),
            });
        }
        match git(Some(&self.dir), &["cat-file", "blob", &object]).await {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(_) => Ok(None),
        }
    }

    pub async fn subject(&self, sha: &str) -> Result<String, PipelineError> {
        git(Some(&self.dir), &["log", "-1", "--format=%s", sha]).await.map(text)
    }

    /// A tree (`sha`, or `sha:path`) as an uncompressed tar stream, in a
    /// file beside the mirrors that has no name (gone when closed, crash or
    /// not): on disk, not in memory, as a tree may take gigabytes.
    pub async fn archive(&self, tree: &str) -> Result<std::fs::File, PipelineError> {
        use std::io::{Seek, SeekFrom};
        let mut file = tempfile::tempfile_in(self.scratch())?;
        let args = ["archive", "--format=tar", tree];
        let mut command = command(Some(&self.dir), &args);
        // Spawned, not `output()`, which would take stdout into a pipe.
        command.stdout(file.try_clone()?).stderr(std::process::Stdio::piped());
        let child = command.spawn().map_err(|e| PipelineError::Git(format!("cannot run git: {e}")))?;
        let output = child.wait_with_output().await?;
        if !output.status.success() {
            return Err(failed(&args, &output.stderr));
        }
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }

    /// Where unnamed files of this mirror's trees go: the mirrors' directory.
    pub fn scratch(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Every branch and tag with the commit it points at.
    pub async fn heads(&self) -> Result<Vec<(String, String)>, PipelineError> {
        let out = git(
            Some(&self.dir),
            &["for-each-ref", "--format=%(refname) %(objectname) %(*objectname)", "refs/heads", "refs/tags"],
        )
        .await?;
        Ok(text(out)
            .lines()
            .filter_map(|line| {
                let mut parts = line.split(' ');
                let name = parts.next()?.to_owned();
                let object = parts.next()?;
                // Annotated tags: the commit is the peeled object.
                let commit = parts.next().filter(|p| !p.is_empty()).unwrap_or(object);
                Some((name, commit.to_owned()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{redacted, Remote};

    #[test]
    fn credentials_leave_the_url_git_is_given() {
        let r = Remote::new("https://deployer:p%40ss%3Aw@127.0.0.1:3000/r.git");
        assert_eq!(r.url, "https://127.0.0.1:3000/r.git");
        assert_eq!(r.credentials, Some(("deployer".into(), Some("p@ss:w".into()))));
        let token = Remote::new("https://ghp_token@github.com/o/r.git");
        assert_eq!(token.url, "https://github.com/o/r.git");
        assert_eq!(token.credentials, Some(("ghp_token".into(), None)));
        for kept in ["ssh://git@host/r.git", "git@github.com:o/r.git", "/srv/git/r", "https://github.com/o/r.git"] {
            let r = Remote::new(kept);
            assert_eq!((r.url.as_str(), r.credentials), (kept, None));
        }
        let forged = "https://u:a%0Ahost=evil@host/r.git";
        assert_eq!(Remote::new(forged).url, forged, "a line break stays for git to refuse");
    }

    #[test]
    fn a_source_is_shown_without_its_credentials() {
        assert_eq!(
            redacted("http://deployer:p4ss@127.0.0.1:3000/r.git"),
            "http://deployer:********@127.0.0.1:3000/r.git"
        );
        assert_eq!(redacted("https://ghp_token@github.com/o/r.git"), "https://********@github.com/o/r.git");
        assert_eq!(redacted("https://github.com/o/r.git"), "https://github.com/o/r.git");
        assert_eq!(redacted("/srv/git/r"), "/srv/git/r");
        assert_eq!(redacted("git@github.com:o/r.git"), "git@github.com:o/r.git", "scp-like: the user is not a secret");
        assert_eq!(redacted("ssh://git@host/r.git"), "ssh://git@host/r.git");
        assert_eq!(
            redacted("https://TOKEN@host:99999/r"),
            "https://********@host:99999/r",
            "unparsable, masked all the same"
        );
    }
}
