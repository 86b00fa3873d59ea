//! Deploys on plain Docker: start a release's replicas, health-check them,
//! retire the old ones by the strategy's order, and record the Release.
//!
//! Replicas publish their port on an ephemeral host port (`publish_ip`); the
//! release records where each answers. Deployed containers carry project,
//! service, environment and release labels and no run label, so a run's
//! cleanup never touches them.

use crate::engine::{self, containers_with, remove_container, Labels, INSTANCE, MANAGED};
use crate::hosts::Hosts;
use crate::images;
use crate::records::{NewRelease, Records, Release, ReleaseStatus};
use crate::spec::{Deploy, Strategy};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const PROJECT: &str = "leanloop.project";
pub const SERVICE: &str = "leanloop.service";
pub const ENVIRONMENT: &str = "leanloop.environment";
pub const RELEASE: &str = "leanloop.release";

/// A deploy: the release to record, its spec, and where replicas publish.
pub struct Rollout<'a> {
    pub release: NewRelease<'a>,
    pub spec: &'a Deploy,
    /// The installation's id: replicas of another installation are never touched.
    pub instance: &'a str,
    pub publish_ip: &'a str,
    pub extra_labels: &'a Labels,
}

/// What replicas of this installation are started with, whatever the release.
pub struct Installation<'a> {
    pub instance: &'a str,
    pub publish_ip: &'a str,
    pub extra_labels: &'a Labels,
}

/// Starts the release and retires the one it replaces. On failure, or when
/// `stop` is cancelled first (the run cancelled, its step timed out, the
/// server stopping), the new replicas are removed, the release is recorded
/// as failed, and the one it was replacing gets back the replicas the
/// strategy had already stopped ([`restore`]).
pub async fn roll_out(
    docker: &Docker,
    hosts: &Hosts,
    records: &Records,
    r: Rollout<'_>,
    say: &(dyn Fn(&str) + Sync),
    stop: &CancellationToken,
) -> Result<Release, String> {
    let new = &r.release;
    let replaced = records.live_release(new.project_id, &r.spec.service, new.environment).map_err(|e| e.to_string())?;
    let id = records.create_release(new, r.spec).map_err(|e| e.to_string())?;
    say(&format!(
        "release {id}: {} {} to {} ({} x{}, {})",
        r.spec.service,
        new.version,
        new.environment,
        new.image,
        r.spec.replicas,
        r.spec.strategy.as_str()
    ));
    let started = tokio::select! {
        started = start_release(docker, hosts, &r, id, say) => started,
        _ = stop.cancelled() => Err("stopped before it was live".to_owned()),
    };
    match started {
        Ok(endpoints) => {
            let status = if new.trigger == "rollback" { ReleaseStatus::RolledBack } else { ReleaseStatus::Superseded };
            records.release_live(id, &endpoints, replaced.map(|old| (old.id, status))).map_err(|e| e.to_string())?;
            say(&format!("release {id} is live on {}", endpoints.join(", ")));
            records.release(new.project_id, id).map_err(|e| e.to_string())
        }
        Err(message) => {
            engine::remove_labelled(docker, RELEASE, &engine::scoped(r.instance, id), false).await;
            let _ = records.release_failed(id, &message);
            if let Some(old) = &replaced {
                let here =
                    Installation { instance: r.instance, publish_ip: r.publish_ip, extra_labels: r.extra_labels };
                restore(docker, hosts, records, &here, old, say).await;
            }
            Err(format!("release {id} failed: {message}"))
        }
    }
}

/// Gives a live release back the replicas a failed or interrupted deploy
/// stopped (`rolling` stops one as each new replica turns healthy,
/// `recreate` all of them first): each missing one is started again from
/// the release's own image and spec and health-checked, and its endpoints
/// are recorded anew. A release with no replica running afterwards is
/// retired: it must not read as live.
pub async fn restore(
    docker: &Docker,
    hosts: &Hosts,
    records: &Records,
    base: &Installation<'_>,
    old: &Release,
    say: &(dyn Fn(&str) + Sync),
) {
    let spec = serde_json::from_str::<Deploy>(&old.spec).ok();
    let port = spec.as_ref().map(|s| format!("{}/tcp", s.port)).unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut running = Vec::new();
    let scoped = engine::scoped(base.instance, old.id);
    let reachable = hosts.reachable().await;
    // A host out of reach may hold replicas that still serve: the release
    // is not retired for want of any it could see.
    let mut blind = reachable.len() < hosts.all().len();
    for (_, host) in reachable {
        let wanted = [(INSTANCE, base.instance), (RELEASE, scoped.as_str())];
        let Ok(found) = containers_with(&host, &wanted).await else {
            blind = true;
            continue;
        };
        for c in found {
            if c.state.as_ref().map(|s| s.to_string()).as_deref() != Some("running") {
                // A replica that stopped or keeps crashing holds its name:
                // it goes, and is started afresh below.
                if let Some(id) = &c.id {
                    remove_container(&host, id).await;
                }
                continue;
            }
            running.extend(c.names.unwrap_or_default().into_iter().map(|n| n.trim_start_matches('/').to_owned()));
            if let Some(id) = c.id {
                endpoints.extend(endpoint_of(&host, &id, &port, base.publish_ip).await.ok());
            }
        }
    }
    if let Some(spec) = &spec {
        let r = Rollout {
            release: NewRelease {
                project_id: old.project_id,
                repo_id: old.repo_id,
                run_id: old.run_id,
                environment: &old.environment,
                version: &old.version,
                commit: &old.commit,
                branch: old.branch.as_deref(),
                image: &old.image,
                digest: old.digest.as_deref(),
                trigger: &old.trigger,
                rollback_of: old.rollback_of,
            },
            spec,
            instance: base.instance,
            publish_ip: base.publish_ip,
            extra_labels: base.extra_labels,
        };
        for index in 0..spec.replicas as usize {
            if running.contains(&replica_name(&r, old.id, index)) {
                continue;
            }
            let started = match start_replica(docker, &r, old.id, index).await {
                Ok(replica) => match wait_healthy(docker, &r, &replica, say).await {
                    Ok(()) => Ok(replica.endpoint),
                    Err(e) => {
                        remove_container(docker, &replica.container).await;
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match started {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(e) => say(&format!("release {}: replica {} not restarted: {e}", old.id, index + 1)),
            }
        }
    }
    let unchanged = {
        let (mut now, mut before) = (endpoints.clone(), old.endpoints.clone());
        now.sort();
        before.sort();
        now == before
    };
    if endpoints.is_empty() && running.is_empty() && blind {
        say(&format!(
            "release {}: a Docker host does not answer, so its replicas are not known; it stays live",
            old.id
        ));
    } else if endpoints.is_empty() && running.is_empty() {
        let _ = records.release_retired(old.id);
        say(&format!("release {} no longer runs and is retired", old.id));
    } else if !unchanged {
        let _ = records.release_endpoints(old.id, &endpoints);
        say(&format!("release {} runs again on {}", old.id, endpoints.join(", ")));
    }
}

fn labels(r: &Rollout, release: i64) -> Labels {
    let mut labels = r.extra_labels.clone();
    labels.insert(MANAGED.into(), "true".into());
    labels.insert(PROJECT.into(), r.release.project_id.to_string());
    labels.insert(SERVICE.into(), r.spec.service.clone());
    labels.insert(ENVIRONMENT.into(), r.release.environment.into());
    labels.insert(INSTANCE.into(), r.instance.into());
    labels.insert(RELEASE.into(), engine::scoped(r.instance, release));
    labels
}

/// Containers of this service and environment from other releases, on every host.
async fn old_replicas(hosts: &Hosts, r: &Rollout<'_>, release: i64) -> Vec<(Docker, String)> {
    let project = r.release.project_id.to_string();
    let mut out = Vec::new();
    for (_, docker) in hosts.reachable().await {
        let wanted = [
            (INSTANCE, r.instance),
            (PROJECT, project.as_str()),
            (SERVICE, r.spec.service.as_str()),
            (ENVIRONMENT, r.release.environment),
        ];
        for c in containers_with(&docker, &wanted).await.unwrap_or_default() {
            let theirs = c.labels.as_ref().and_then(|l| l.get(RELEASE)).cloned().unwrap_or_default();
            if theirs != engine::scoped(r.instance, release) {
                if let Some(id) = c.id {
                    out.push((docker.clone(), id));
                }
            }
        }
    }
    out
}

async fn start_release(
    docker: &Docker,
    hosts: &Hosts,
    r: &Rollout<'_>,
    release: i64,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<String>, String> {
    engine::ensure_image(docker, &images::pinned(r.release.image, r.release.digest)).await?;
    let mut old = old_replicas(hosts, r, release).await;
    let mut started: Vec<Replica> = Vec::new();
    let replicas = r.spec.replicas as usize;
    match r.spec.strategy {
        Strategy::Recreate => {
            for (d, id) in old.drain(..) {
                remove_container(&d, &id).await;
            }
            say(&format!("stopped the previous replicas; starting {replicas}"));
            for i in 0..replicas {
                started.push(start_replica(docker, r, release, i).await?);
            }
            for replica in &started {
                wait_healthy(docker, r, replica, say).await?;
            }
        }
        Strategy::Rolling => {
            for i in 0..replicas {
                let replica = start_replica(docker, r, release, i).await?;
                wait_healthy(docker, r, &replica, say).await?;
                started.push(replica);
                if let Some((d, id)) = (!old.is_empty()).then(|| old.remove(0)) {
                    remove_container(&d, &id).await;
                    say(&format!("replica {} replaced", i + 1));
                }
            }
        }
        Strategy::BlueGreen | Strategy::Canary => {
            for i in 0..replicas {
                started.push(start_replica(docker, r, release, i).await?);
            }
            for replica in &started {
                wait_healthy(docker, r, replica, say).await?;
            }
            if r.spec.strategy == Strategy::Canary {
                // The traffic split belongs to the gateway; the weights are
                // recorded on the release for it to follow.
                say(&format!("canary weights recorded: {:?} (percent of traffic per step)", r.spec.weights));
            }
            say("new replicas healthy; switching over");
        }
    }
    for (d, id) in old {
        remove_container(&d, &id).await;
    }
    Ok(started.into_iter().map(|r| r.endpoint).collect())
}

/// A started replica: its container and the `ip:port` it answers on.
struct Replica {
    container: String,
    endpoint: String,
}

fn replica_name(r: &Rollout<'_>, release: i64, index: usize) -> String {
    format!(
        "ll-{}-{}-{}-{}-r{release}-{index}",
        r.instance, r.release.project_id, r.spec.service, r.release.environment
    )
}

async fn start_replica(docker: &Docker, r: &Rollout<'_>, release: i64, index: usize) -> Result<Replica, String> {
    let port = format!("{}/tcp", r.spec.port);
    let name = replica_name(r, release, index);
    let mut env: Vec<String> = r.spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("LEANLOOP_RELEASE={}", r.release.version));
    env.push(format!("LEANLOOP_ENVIRONMENT={}", r.release.environment));
    let body = ContainerCreateBody {
        image: Some(images::pinned(r.release.image, r.release.digest)),
        env: Some(env),
        labels: Some(labels(r, release)),
        exposed_ports: Some(vec![port.clone()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                port.clone(),
                Some(vec![PortBinding { host_ip: Some(r.publish_ip.into()), host_port: Some(String::new()) }]),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let id = docker.create_container(Some(options), body).await.map_err(|e| format!("creating {name}: {e}"))?.id;
    docker
        .start_container(&id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(|e| format!("starting {name}: {e}"))?;
    let endpoint = endpoint_of(docker, &id, &port, r.publish_ip).await.map_err(|e| format!("{name}: {e}"))?;
    Ok(Replica { container: id, endpoint })
}

/// `ip:port` where a replica's `port` (`8080/tcp`) is published.
async fn endpoint_of(docker: &Docker, container: &str, port: &str, publish_ip: &str) -> Result<String, String> {
    let inspect = docker
        .inspect_container(container, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .map_err(|e| e.to_string())?;
    let host_port = inspect
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get(port).cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port.filter(|p| !p.is_empty())))
        .ok_or_else(|| format!("the engine published no host port for {port}"))?;
    Ok(format!("{publish_ip}:{host_port}"))
}

/// Polls the health path until it answers 2xx, the replica exits, or the
/// deadline passes.
async fn wait_healthy(
    docker: &Docker,
    r: &Rollout<'_>,
    replica: &Replica,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| e.to_string())?;
    let url = format!("http://{}{}", replica.endpoint, r.spec.health);
    let deadline = Instant::now() + Duration::from_secs(r.spec.health_timeout);
    let mut pause = Duration::from_millis(20);
    loop {
        let last = match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                say(&format!("{url} answered {}", resp.status().as_u16()));
                return Ok(());
            }
            Ok(resp) => format!("answered {}", resp.status().as_u16()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("{url} not healthy within {} s: {last}", r.spec.health_timeout));
        }
        if let Some(code) = replica_exited(docker, &replica.container).await {
            return Err(format!("replica behind {} exited with code {code} before it was healthy", replica.endpoint));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The exit code of a replica that stopped, if it did.
async fn replica_exited(docker: &Docker, container: &str) -> Option<i64> {
    let inspect =
        docker.inspect_container(container, None::<bollard::query_parameters::InspectContainerOptions>).await.ok()?;
    let state = inspect.state?;
    if state.running == Some(false) {
        Some(state.exit_code.unwrap_or(-1))
    } else {
        None
    }
}
