//! The `build` step: a Dockerfile built on the engine into
//! `<registry>/project-<id>/<service>:<short sha>` plus a branch (or tag)
//! tag, then pushed. Each project's images live under a name of its own, so
//! no project can tag over another's.

use crate::engine::Labels;
use crate::logs::Lines;
use crate::spec::Build;
use bollard::models::{BuildInfo, PushImageInfo};
use bollard::query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// An image built and (when a registry is set) pushed.
#[derive(Debug, Clone)]
pub struct Built {
    /// The commit-tagged reference deploys use.
    pub image: String,
    pub digest: Option<String>,
}

/// `<registry>/project-<id>/<service>`, or `local/project-<id>/<service>`
/// without a registry.
pub fn repository(registry: Option<&str>, project_id: i64, service: &str) -> String {
    let registry = registry.map_or("local", |r| r.trim_end_matches('/'));
    format!("{registry}/project-{project_id}/{service}")
}

/// The image a deploy runs: by digest when the push recorded one, so that a
/// tag moved since (a later build of a branch named like a commit) cannot
/// change what a release, or a rollback to it, runs.
pub fn pinned(image: &str, digest: Option<&str>) -> String {
    match digest {
        Some(digest) => format!("{}@{digest}", without_tag(image)),
        None => image.to_owned(),
    }
}

/// `host:5000/project-1/web:abc` → `host:5000/project-1/web`.
fn without_tag(image: &str) -> &str {
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    image[name_start..].find(':').map_or(image, |i| &image[..name_start + i])
}

/// What the engine knows of an image an earlier run built (a restart from
/// the deploy step), read in one look so both facts are of one image: the
/// commit it was built from (its label) and the digest the registry gave it
/// when pushed (`RepoDigests`; `None` for an image never pushed), which pins
/// its release like any other.
pub struct EarlierBuild {
    pub commit: Option<String>,
    pub digest: Option<String>,
}

pub async fn earlier_build(docker: &Docker, image: &str) -> Option<EarlierBuild> {
    let inspect = docker.inspect_image(image).await.ok()?;
    let prefix = format!("{}@", without_tag(image));
    let digest = inspect.repo_digests.iter().flatten().find_map(|d| d.strip_prefix(&prefix).map(str::to_owned));
    let commit = inspect.config.and_then(|c| c.labels).and_then(|mut labels| labels.remove(COMMIT_LABEL));
    Some(EarlierBuild { commit, digest })
}

/// Put on every image a run builds: the commit it was built from.
pub const COMMIT_LABEL: &str = "leanloop.commit";

pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// A branch or tag name as an image tag: `[A-Za-z0-9_.-]`, at most 128,
/// not starting with `.` or `-`.
pub fn tag_for(name: &str) -> String {
    let mut tag: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' { c } else { '-' })
        .collect();
    tag.truncate(128);
    if tag.starts_with(['.', '-']) {
        tag.replace_range(..1, "_");
    }
    tag
}

pub struct BuildJob<'a> {
    pub build: &'a Build,
    pub project_id: i64,
    pub registry: Option<&'a str>,
    pub sha: &'a str,
    /// The branch or tag name, tagged beside the commit.
    pub reference: Option<&'a str>,
    pub labels: &'a Labels,
    /// The context as a tar stream in a file (see `engine::read_volume`).
    pub context: std::fs::File,
}

/// Builds, tags and pushes; each output line goes to `say`.
pub async fn build_and_push(
    docker: &Docker,
    job: BuildJob<'_>,
    say: &(dyn Fn(&str) + Sync),
    stop: &CancellationToken,
) -> Result<Built, String> {
    let repo = repository(job.registry, job.project_id, &job.build.service);
    let sha_tag = short_sha(job.sha).to_owned();
    let image = format!("{repo}:{sha_tag}");
    let args: std::collections::HashMap<String, String> = job.build.args.clone().into_iter().collect();
    let options = BuildImageOptionsBuilder::new()
        .dockerfile(&job.build.dockerfile)
        .t(&image)
        .rm(true)
        .forcerm(true)
        .buildargs(&args)
        .labels(job.labels)
        .build();
    say(&format!("building {image} from {}/{}", job.build.context, job.build.dockerfile));
    let build =
        docker.build_image(options, None, Some(bollard::body_try_stream(crate::engine::file_stream(job.context))));
    // The engine splits output where it pleases: lines are joined across
    // its messages, so that a secret printed in two writes is masked whole.
    let mut lines = Lines::default();
    let say_line = |line: &str| {
        if !line.trim().is_empty() {
            say(line);
        }
    };
    let built = follow(build, stop, "image build", |info: BuildInfo| {
        if let Some(stream) = &info.stream {
            lines.push(stream.as_bytes(), say_line);
        }
        info.error_detail.and_then(|d| d.message)
    })
    .await;
    lines.finish(say_line);
    built?;
    docker.inspect_image(&image).await.map_err(|e| format!("the build produced no image {image}: {e}"))?;
    let mut tags = vec![sha_tag];
    if let Some(reference) = job.reference {
        let extra = tag_for(reference);
        docker
            .tag_image(&image, Some(TagImageOptionsBuilder::new().repo(&repo).tag(&extra).build()))
            .await
            .map_err(|e| format!("tagging {repo}:{extra}: {e}"))?;
        say(&format!("tagged {repo}:{extra}"));
        tags.push(extra);
    }
    if job.registry.is_none() || !job.build.push {
        say("not pushed: no registry configured or push: false");
        return Ok(Built { image, digest: None });
    }
    let mut digest = None;
    for tag in &tags {
        say(&format!("pushing {repo}:{tag}"));
        let push = docker.push_image(&repo, Some(PushImageOptionsBuilder::new().tag(tag).build()), None);
        follow(push, stop, &format!("push of {repo}:{tag}"), |info: PushImageInfo| {
            if let Some(status) = info.status.filter(|s| s.contains("digest:")) {
                digest = digest.take().or_else(|| parse_digest(&status));
                say(&status);
            }
            info.error_detail.and_then(|d| d.message)
        })
        .await?;
    }
    Ok(Built { image, digest })
}

/// Reads an engine progress stream to its end; `on_item` reports each item
/// and returns the engine's error message, if the item carries one.
async fn follow<T>(
    stream: impl futures::Stream<Item = Result<T, bollard::errors::Error>>,
    stop: &CancellationToken,
    what: &str,
    mut on_item: impl FnMut(T) -> Option<String>,
) -> Result<(), String> {
    let mut stream = Box::pin(stream);
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = stop.cancelled() => return Err("stopped".into()),
        };
        match item {
            None => return Ok(()),
            Some(Err(e)) => return Err(format!("{what} failed: {e}")),
            Some(Ok(item)) => {
                if let Some(message) = on_item(item) {
                    return Err(format!("{what} failed: {message}"));
                }
            }
        }
    }
}

/// `main: digest: sha256:abc… size: 527` → `sha256:abc…`.
fn parse_digest(status: &str) -> Option<String> {
    let start = status.find("sha256:")?;
    let digest: String = status[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == ':').collect();
    (digest.len() == "sha256:".len() + 64).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_digests() {
        assert_eq!(repository(Some("127.0.0.1:5000/"), 7, "web"), "127.0.0.1:5000/project-7/web");
        assert_eq!(repository(None, 7, "web"), "local/project-7/web");
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            pinned("127.0.0.1:5000/project-7/web:a1b2c3d", Some(&digest)),
            format!("127.0.0.1:5000/project-7/web@{digest}")
        );
        assert_eq!(pinned("local/project-7/web:a1b2c3d", None), "local/project-7/web:a1b2c3d");
        assert_eq!(tag_for("feature/login-v2"), "feature-login-v2");
        assert_eq!(tag_for("-x"), "_x");
        let d = format!("main: digest: sha256:{} size: 527", "a".repeat(64));
        assert_eq!(parse_digest(&d), Some(format!("sha256:{}", "a".repeat(64))));
        assert_eq!(parse_digest("digest: sha256:short"), None);
    }
}
