//! The few Docker Engine operations the runner and deployer are made of,
//! each a thin layer over `bollard` that adds what every caller needs:
//! labels, log lines, cancellation, timing, and cleanup by label.

use crate::logs::{Lines, RunLog};
use crate::PipelineError;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{Stream, StreamExt};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every object the pipeline creates carries this label.
pub const MANAGED: &str = "leanloop.managed";
/// And this one names the installation (several may share an engine).
pub const INSTANCE: &str = "leanloop.instance";
/// Objects that live only as long as one run carry `<instance>-<run id>` here.
pub const RUN: &str = "leanloop.run";
pub const WORKSPACE: &str = "/workspace";

pub type Labels = HashMap<String, String>;

/// A run, repository or release id made unique on an engine several
/// installations share: the value of the run, cache and release labels.
pub fn scoped(instance: &str, id: i64) -> String {
    format!("{instance}-{id}")
}

/// Makes sure `image` is on the host: present, or pulled from its registry.
pub async fn ensure_image(docker: &Docker, image: &str) -> Result<(), String> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let options = CreateImageOptionsBuilder::new().from_image(image).build();
    let mut pull = Box::pin(docker.create_image(Some(options), None, None));
    while let Some(item) = pull.next().await {
        item.map_err(|e| format!("image `{image}` is not on the host and could not be pulled: {e}"))?;
    }
    docker.inspect_image(image).await.map(|_| ()).map_err(|e| format!("image `{image}`: {e}"))
}

pub async fn create_volume(docker: &Docker, name: &str, labels: &Labels) -> Result<(), PipelineError> {
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await?;
    Ok(())
}

pub async fn create_network(docker: &Docker, name: &str, labels: &Labels) -> Result<(), PipelineError> {
    docker
        .create_network(NetworkCreateRequest { name: name.into(), labels: Some(labels.clone()), ..Default::default() })
        .await?;
    Ok(())
}

pub fn volume_mount(volume: &str, target: &str) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(volume.into()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }
}

/// Removes every container, then network, then volume carrying `key=value`.
/// Errors are logged, not returned: cleanup must go as far as it can.
pub async fn remove_labelled(docker: &Docker, key: &str, value: &str, volumes: bool) {
    let filter = HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])]);
    if let Ok(containers) =
        docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filter).build())).await
    {
        for c in containers.into_iter().filter_map(|c| c.id) {
            remove_container(docker, &c).await;
        }
    }
    if let Ok(networks) = docker.list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filter).build())).await {
        for n in networks.into_iter().filter_map(|n| n.id) {
            if let Err(e) = docker.remove_network(&n).await {
                tracing::warn!(network = %n, error = %e, "removing network failed");
            }
        }
    }
    if volumes {
        if let Ok(list) = docker.list_volumes(Some(ListVolumesOptionsBuilder::new().filters(&filter).build())).await {
            for v in list.volumes.unwrap_or_default() {
                if let Err(e) =
                    docker.remove_volume(&v.name, Some(RemoveVolumeOptionsBuilder::new().force(true).build())).await
                {
                    tracing::warn!(volume = %v.name, error = %e, "removing volume failed");
                }
            }
        }
    }
}

/// Whether the container is gone (it was removed, or was not there).
pub async fn remove_container(docker: &Docker, id: &str) -> bool {
    let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => true,
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "removing container failed");
            false
        }
    }
}

/// The `leanloop.run` values of installation `instance`'s containers,
/// networks and volumes on the host.
pub async fn run_labels(docker: &Docker, instance: &str) -> BTreeSet<String> {
    let filter = HashMap::from([("label".to_owned(), vec![format!("{INSTANCE}={instance}"), RUN.to_owned()])]);
    let mut found: Vec<Option<HashMap<String, String>>> = Vec::new();
    if let Ok(list) =
        docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filter).build())).await
    {
        found.extend(list.into_iter().map(|c| c.labels));
    }
    if let Ok(list) = docker.list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filter).build())).await {
        found.extend(list.into_iter().map(|n| n.labels));
    }
    if let Ok(list) = docker.list_volumes(Some(ListVolumesOptionsBuilder::new().filters(&filter).build())).await {
        found.extend(list.volumes.unwrap_or_default().into_iter().map(|v| Some(v.labels)));
    }
    found.into_iter().flatten().filter_map(|mut labels| labels.remove(RUN)).collect()
}

/// Containers carrying every one of `labels`.
pub async fn containers_with(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<bollard::models::ContainerSummary>, PipelineError> {
    let filter =
        HashMap::from([("label".to_owned(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>())]);
    Ok(docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filter).build())).await?)
}

/// A file's bytes, read a piece at a time, for a request's body.
pub fn file_stream(file: std::fs::File) -> impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    const PIECE: usize = 256 * 1024;
    futures::stream::try_unfold(tokio::fs::File::from_std(file), |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut piece = vec![0; PIECE];
        let n = file.read(&mut piece).await?;
        piece.truncate(n);
        Ok((n > 0).then(|| (bytes::Bytes::from(piece), file)))
    })
}

/// Puts a tar stream (a file) into `volume` at its root, through a
/// container that is created but never started.
pub async fn fill_volume(
    docker: &Docker,
    image: &str,
    volume: &str,
    labels: &Labels,
    tar: std::fs::File,
) -> Result<(), PipelineError> {
    let id = helper(docker, image, volume, labels).await?;
    let options = UploadToContainerOptionsBuilder::new().path(WORKSPACE).build();
    let result = docker.upload_to_container(&id, Some(options), bollard::body_try_stream(file_stream(tar))).await;
    remove_container(docker, &id).await;
    Ok(result?)
}

/// A tar stream of `path` inside `volume`, re-rooted so `path` is its root,
/// in a file with no name under `scratch` (a workspace may take gigabytes).
pub async fn read_volume(
    docker: &Docker,
    image: &str,
    volume: &str,
    labels: &Labels,
    path: &str,
    scratch: &std::path::Path,
) -> Result<std::fs::File, PipelineError> {
    // The archive's root entry is named after the path's last component;
    // "." would name it oddly, so the workspace itself is asked for by name.
    let path = match path.trim_start_matches("./").trim_matches('/') {
        "" | "." => WORKSPACE.to_owned(),
        inner => format!("{WORKSPACE}/{inner}"),
    };
    let id = helper(docker, image, volume, labels).await?;
    let options = DownloadFromContainerOptionsBuilder::new().path(&path).build();
    let mut stream = Box::pin(docker.download_from_container(&id, Some(options)));
    let downloaded = async {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::from_std(tempfile::tempfile_in(scratch)?);
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        Ok::<_, PipelineError>(file.into_std().await)
    }
    .await;
    remove_container(docker, &id).await;
    let downloaded = downloaded?;
    let scratch = scratch.to_owned();
    tokio::task::spawn_blocking(move || strip_first_component(downloaded, &scratch))
        .await
        .map_err(|e| PipelineError::Io(std::io::Error::other(e)))?
        .map_err(PipelineError::Io)
}

async fn helper(docker: &Docker, image: &str, volume: &str, labels: &Labels) -> Result<String, PipelineError> {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(vec!["true".into()]),
        labels: Some(labels.clone()),
        host_config: Some(HostConfig { mounts: Some(vec![volume_mount(volume, WORKSPACE)]), ..Default::default() }),
        ..Default::default()
    };
    Ok(docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await?.id)
}

/// The engine's archive of a directory holds it under its own name; a build
/// context wants its contents at the root. Read from a file, written to
/// another with no name under `scratch`, ready to be read from its start.
fn strip_first_component(tar: std::fs::File, scratch: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    let mut tar = std::io::BufReader::new(tar);
    tar.seek(SeekFrom::Start(0))?;
    let mut archive = tar::Archive::new(tar);
    let mut out = tar::Builder::new(std::io::BufWriter::new(tempfile::tempfile_in(scratch)?));
    out.follow_symlinks(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let rest: std::path::PathBuf = path.components().skip(1).collect();
        if rest.as_os_str().is_empty() {
            continue;
        }
        let mut header = entry.header().clone();
        match entry.header().entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name()?.map(|t| t.into_owned()).unwrap_or_default();
                out.append_link(&mut header, &rest, target)?;
            }
            _ => out.append_data(&mut header, &rest, &mut entry)?,
        }
    }
    let mut stripped = out.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    stripped.seek(SeekFrom::Start(0))?;
    Ok(stripped)
}

/// A container to run to completion.
pub struct Job<'a> {
    pub name: String,
    pub image: &'a str,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: Labels,
    pub mounts: Vec<Mount>,
    pub network: Option<&'a str>,
    pub aliases: Vec<String>,
}

/// How a job ended.
pub struct Exit {
    /// `None` when it was stopped (cancel or timeout) before finishing.
    pub code: Option<i64>,
    /// Time the container ran, from the engine's own clock.
    pub container_ms: Option<i64>,
}

impl Job<'_> {
    fn body(&self) -> ContainerCreateBody {
        let endpoints = self.network.map(|n| {
            HashMap::from([(
                n.to_owned(),
                bollard::models::EndpointSettings { aliases: Some(self.aliases.clone()), ..Default::default() },
            )])
        });
        ContainerCreateBody {
            image: Some(self.image.into()),
            cmd: (!self.cmd.is_empty()).then(|| self.cmd.clone()),
            env: Some(self.env.clone()),
            working_dir: Some(WORKSPACE.into()),
            labels: Some(self.labels.clone()),
            host_config: Some(HostConfig {
                mounts: Some(self.mounts.clone()),
                network_mode: self.network.map(Into::into),
                ..Default::default()
            }),
            networking_config: endpoints.map(|e| bollard::models::NetworkingConfig { endpoints_config: Some(e) }),
            ..Default::default()
        }
    }

    /// Creates and starts the container, leaving it running (services).
    pub async fn start(&self, docker: &Docker) -> Result<String, PipelineError> {
        let id = self.create(docker).await?;
        docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await?;
        Ok(id)
    }

    async fn create(&self, docker: &Docker) -> Result<String, PipelineError> {
        let options = CreateContainerOptionsBuilder::new().name(&self.name).build();
        Ok(docker.create_container(Some(options), self.body()).await?.id)
    }

    /// Runs to its end, streaming output lines to `log` under `step`. On
    /// `stop` the container is killed and the exit has no code.
    pub async fn run(
        &self,
        docker: &Docker,
        log: &RunLog,
        step: &str,
        stop: &CancellationToken,
    ) -> Result<Exit, PipelineError> {
        let id = self.create(docker).await?;
        // Attached before it starts, its output comes straight from it to
        // its end: followed through the engine's log files, output is lost
        // or repeated where the log driver rotates them.
        let attach = AttachContainerOptionsBuilder::new().stdout(true).stderr(true).stream(true).build();
        let mut output = docker.attach_container(&id, Some(attach)).await?.output;
        docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await?;
        let mut lines = Lines::default();
        let mut stopped = false;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message })) => {
                        lines.push(&message, |l| log.line(step, l));
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    // The stream ends when the container exits.
                    Some(Err(_)) | None => break,
                },
                _ = stop.cancelled(), if !stopped => {
                    stopped = true;
                    let _ = docker.kill_container(&id, Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build())).await;
                }
            }
        }
        let inspect = wait_for_exit(docker, &id).await?;
        lines.finish(|l| log.line(step, l));
        let state = inspect.state.unwrap_or_default();
        let ms = |t: Option<String>| {
            t.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.timestamp_millis())
        };
        let container_ms = ms(state.started_at).zip(ms(state.finished_at)).map(|(s, f)| (f - s).max(0));
        let code = if stopped || stop.is_cancelled() { None } else { state.exit_code };
        Ok(Exit { code, container_ms })
    }
}

/// The output stream can end a moment before the engine records the exit.
async fn wait_for_exit(docker: &Docker, id: &str) -> Result<bollard::models::ContainerInspectResponse, PipelineError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let inspect = docker.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>).await?;
        let running = inspect.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running || tokio::time::Instant::now() >= deadline {
            return Ok(inspect);
        }
        let mut wait = Box::pin(docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>));
        let _ = tokio::time::timeout(Duration::from_secs(5), wait.next()).await;
    }
}

/// A command list as one POSIX shell script that echoes each command before
/// running it and stops at the first failure.
pub fn script(commands: &[String]) -> String {
    let mut s = String::from("set -e\n");
    for c in commands {
        s.push_str(&format!("printf '+ %s\\n' {}\n{c}\n", shell_quote(c)));
    }
    s
}

pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_rerooted() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "ctx/site/a.txt", &b"hi"[..]).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let mut tar = tempfile::tempfile_in(scratch.path()).unwrap();
        std::io::Write::write_all(&mut tar, &b.into_inner().unwrap()).unwrap();
        let stripped = strip_first_component(tar, scratch.path()).unwrap();
        let mut archive = tar::Archive::new(stripped);
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["site/a.txt"]);
    }

    #[test]
    fn scripts_echo_quoted_commands() {
        let s = script(&["echo 'a b'".into()]);
        assert_eq!(s, "set -e\nprintf '+ %s\\n' 'echo '\\''a b'\\'''\necho 'a b'\n");
    }
}
