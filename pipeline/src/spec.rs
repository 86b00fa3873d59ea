//! The pipeline file, `leanloop.yml`: what it may say, and its validation.
//!
//! ```yaml
//! registry: 127.0.0.1:5000          # optional; the server's default otherwise
//! timeout: 30m                      # whole run
//! environments:                     # first match wins; GitFlow when absent
//!   - { branch: "feature/*", name: preview }
//!   - { tag: "v*", name: production }
//! services:
//!   - { name: db, image: postgres:16, env: { POSTGRES_PASSWORD: x } }
//! steps:
//!   - name: test
//!     image: leanloop/busybox:latest
//!     commands: [sh test.sh]
//!     secrets: [API_TOKEN]          # from the control plane, masked in logs
//!     when: { branch: [main, "feature/*"], event: [push, manual] }
//!     cache: [/root/.cache]         # a volume per repository and branch
//!     failure: ignore               # recorded, but the run goes on
//!   - name: notify
//!     image: leanloop/busybox:latest
//!     commands: [echo failed]
//!     when: { status: [failure] }   # only once something failed
//!   - name: image
//!     build: { service: web, dockerfile: Dockerfile, context: ., args: { A: b } }
//!   - name: deploy
//!     deploy: { service: web, replicas: 2, port: 8080, health: /health,
//!               strategy: canary, weights: [10, 50, 100] }
//! ```
//!
//! Without any `depends_on`, steps run one after another in file order; once
//! one step names `depends_on`, the file is a DAG and steps without it start
//! at once. Structural mistakes carry the parser's line; semantic ones (an
//! unknown dependency, a cycle) the line of the step they concern.

use crate::PipelineError;
use globset::Glob;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

pub const FILE_NAME: &str = "leanloop.yml";
const MAX_STEPS: usize = 100;
/// The YAML parser's cost per token grows with the nesting depth, so a
/// file of brackets costs time in the square of its size: 32 KB (many
/// times any real pipeline) bounds it to about a second.
pub const MAX_FILE_BYTES: usize = 32 * 1024;
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    registry: Option<String>,
    timeout: Option<Timeout>,
    environments: Option<Vec<EnvironmentRule>>,
    #[serde(default)]
    services: Vec<Service>,
    steps: Vec<RawStep>,
    /// A place for YAML anchors that steps take by alias (`env: *common`),
    /// as in Woodpecker; nothing reads it otherwise.
    #[serde(default, rename = "variables")]
    _variables: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    image: Option<String>,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    when: When,
    depends_on: Option<Vec<String>>,
    timeout: Option<Timeout>,
    #[serde(default)]
    cache: Vec<String>,
    #[serde(default)]
    failure: OnFailure,
    build: Option<Build>,
    deploy: Option<Deploy>,
}

/// A duration written as seconds or as `90s`, `10m`, `2h`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Timeout {
    Seconds(u64),
    Text(String),
}

impl Timeout {
    fn duration(&self) -> Result<Duration, String> {
        let secs = match self {
            Timeout::Seconds(s) => *s,
            Timeout::Text(t) => {
                let t = t.trim();
                let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
                let n: u64 = number.parse().map_err(|_| format!("`{t}` is not a duration like 90s, 10m or 2h"))?;
                let scale = match unit {
                    "" | "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    _ => return Err(format!("`{t}` is not a duration like 90s, 10m or 2h")),
                };
                // Past u64 is past the 24 h bound too, not a wrapped short timeout.
                n.saturating_mul(scale)
            }
        };
        if secs == 0 || secs > 24 * 3600 {
            return Err("timeout must be between 1 second and 24 hours".into());
        }
        Ok(Duration::from_secs(secs))
    }
}

/// A side container reachable from every step by its name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// When a step runs; every given list must match, an empty list matches all
/// (except `status`: empty means only while the run is passing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default, deserialize_with = "one_or_many")]
    pub branch: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub tag: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub event: Vec<Event>,
    /// `[failure]` for steps that run only once something failed (a
    /// notification, a cleanup); `[success, failure]` for always.
    #[serde(default, deserialize_with = "one_or_many")]
    pub status: Vec<RunState>,
}

/// A list, or one item for a list of one (`branch: main`), as Woodpecker
/// takes both.
fn one_or_many<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "one value or a list of them")]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(items) => items,
        OneOrMany::One(item) => vec![item],
    })
}

/// How the run stands when a step's turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Success,
    Failure,
}

/// What a step's failure does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails and later steps are skipped.
    #[default]
    Fail,
    /// Recorded, but the run and the steps after it go on as if it passed.
    Ignore,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Push,
    Tag,
    Manual,
    Poll,
    Restart,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::Tag => "tag",
            Event::Manual => "manual",
            Event::Poll => "poll",
            Event::Restart => "restart",
        }
    }

    pub fn parse(text: &str) -> Option<Event> {
        [Event::Push, Event::Tag, Event::Manual, Event::Poll, Event::Restart].into_iter().find(|e| e.as_str() == text)
    }
}

/// Builds the repository's Dockerfile into `<registry>/<service>:<short sha>`
/// and `:<branch>`, then pushes both.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub service: String,
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    #[serde(default = "default_context")]
    pub context: String,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Push to the registry (default true when one is configured).
    #[serde(default = "yes")]
    pub push: bool,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}
fn default_context() -> String {
    ".".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old containers, then start the new ones.
    Recreate,
    /// Replace one replica at a time, each healthy before the next.
    Rolling,
    /// Start the whole new set, switch when all are healthy.
    BlueGreen,
    /// Start beside the old set with traffic weights; the split itself is the
    /// gateway's, so the weights are recorded and the new set is promoted.
    Canary,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Recreate => "recreate",
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub service: String,
    #[serde(default = "one")]
    pub replicas: u32,
    /// The port the container listens on; published on an ephemeral host port.
    pub port: u16,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// HTTP path that answers 2xx when a replica is ready.
    #[serde(default = "default_health")]
    pub health: String,
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// Canary traffic weights in percent, ascending, ending at 100.
    #[serde(default)]
    pub weights: Vec<u8>,
    /// Longest wait for a replica to become healthy, in seconds.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: u64,
}

fn one() -> u32 {
    1
}
fn default_health() -> String {
    "/".into()
}
fn default_strategy() -> Strategy {
    Strategy::Recreate
}
fn default_health_timeout() -> u64 {
    60
}

/// Maps a branch or tag to a deploy environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentRule {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub name: String,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    Commands { image: String, commands: Vec<String> },
    Build(Build),
    Deploy(Deploy),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub action: Action,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub when: When,
    pub depends_on: Vec<String>,
    pub timeout: Duration,
    pub cache: Vec<String>,
    pub on_failure: OnFailure,
}

/// A validated pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub registry: Option<String>,
    pub timeout: Duration,
    pub environments: Vec<EnvironmentRule>,
    pub services: Vec<Service>,
    pub steps: Vec<Step>,
}

/// The facts about a run that `when` and environments are matched on.
#[derive(Debug, Clone)]
pub struct RunFacts<'a> {
    pub branch: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub event: Event,
}

fn glob_matches(pattern: &str, value: &str) -> bool {
    Glob::new(pattern).map(|g| g.compile_matcher().is_match(value)).unwrap_or(false)
}

impl When {
    /// Whether the step runs given how the run stands (`failed`: a step
    /// before it failed).
    pub fn runs_when(&self, failed: bool) -> bool {
        match (self.status.is_empty(), failed) {
            (true, failed) => !failed,
            (false, true) => self.status.contains(&RunState::Failure),
            (false, false) => self.status.contains(&RunState::Success),
        }
    }

    pub fn matches(&self, facts: &RunFacts) -> bool {
        let list = |patterns: &[String], value: Option<&str>| {
            patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob_matches(p, v)))
        };
        // A restart or poll counts as the event it re-runs for `when`.
        let event = match facts.event {
            Event::Restart | Event::Poll => {
                if facts.tag.is_some() {
                    Event::Tag
                } else {
                    Event::Push
                }
            }
            e => e,
        };
        list(&self.branch, facts.branch)
            && list(&self.tag, facts.tag)
            && (self.event.is_empty() || self.event.contains(&event) || self.event.contains(&facts.event))
    }
}

/// Reads the file's YAML. Anchors and aliases work as in any YAML file;
/// merge keys (`<<`) are refused with a hint: expanding them goes through
/// YAML's value model, which rewrites unquoted scalars (`1.10` becomes
/// `1.1`, `True` becomes `true`) in the whole file.
fn read_file(text: &str) -> Result<RawFile, PipelineError> {
    if let Some((line, c)) = control_character(text) {
        return Err(PipelineError::InvalidFile {
            line: Some(line),
            message: format!("control character U+{:04X} is not allowed in YAML; quote it as an escape", c as u32),
        });
    }
    if let Some(line) = too_deep_line(text) {
        return Err(PipelineError::InvalidFile {
            line: Some(line),
            message: format!("flow collections (`[`, `{{`) are nested over {MAX_FLOW_DEPTH} deep"),
        });
    }
    if let Some(line) = merge_key_line(text) {
        return Err(PipelineError::InvalidFile {
            line: Some(line),
            message: "merge keys (`<<`) are not supported: give a whole value by alias instead (`env: *common`)".into(),
        });
    }
    serde_norway::from_str(text).map_err(|e| PipelineError::InvalidFile {
        line: e.location().map(|l| l.line()),
        message: strip_location(&e.to_string()),
    })
}

/// The 1-based line of the first character YAML forbids, and the
/// character. The YAML reader reports them on line 1, at a byte position.
fn control_character(text: &str) -> Option<(usize, char)> {
    let forbidden = |c: char| {
        (c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    };
    let (at, c) = text.char_indices().find(|&(_, c)| forbidden(c))?;
    Some((text[..at].matches('\n').count() + 1, c))
}

/// How deep `[` and `{` may nest: far past any pipeline file, and short of
/// the depth at which the YAML reader takes seconds of a core.
const MAX_FLOW_DEPTH: usize = 64;

/// The 1-based line where flow collections first nest over
/// [`MAX_FLOW_DEPTH`], outside quotes and comments. Closely enough: a
/// quote opens a scalar only where a node starts, as YAML reads it (at a
/// line's start outside flow collections, after `[`, `{` or `,`, or after
/// `: `, `- ` or `? ` where those are indicators), never inside a plain
/// scalar (`-'a`, `a - 'b`, or a flow scalar going on from the line
/// before), and is taken to end with its line, so a stray one hides
/// nothing after it; a false alarm needs 64 unbalanced brackets.
fn too_deep_line(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    // Whether the next character that is not a space starts a node.
    let mut node_start = true;
    // Every line break the YAML reader knows, so that a comment ends where
    // it ends there.
    let text = text.replace("\r\n", "\n");
    for (i, line) in text.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']).enumerate() {
        // Outside flow collections each line may start a node; inside one a
        // plain scalar goes on across lines.
        if depth == 0 {
            node_start = true;
        }
        let mut quote: Option<char> = None;
        let mut prev: Option<char> = None;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            let spaced = chars.peek().is_none_or(|n| n.is_whitespace());
            match (quote, c) {
                (Some('"'), '\\') => {
                    chars.next();
                }
                (Some(q), c) if c == q => {
                    quote = None;
                    node_start = false;
                }
                (Some(_), _) => {}
                (None, c) if c.is_whitespace() => {}
                (None, '#') if prev.is_none_or(char::is_whitespace) => break,
                (None, '"' | '\'') if node_start => quote = Some(c),
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(i + 1);
                    }
                    node_start = true;
                }
                (None, ']' | '}') => {
                    depth = depth.saturating_sub(1);
                    node_start = false;
                }
                (None, ',') => node_start = true,
                (None, ':') if spaced => node_start = true,
                // An indicator: a node follows.
                (None, '-' | '?') if node_start && spaced => {}
                (None, _) => node_start = false,
            }
            prev = Some(c);
        }
    }
    None
}

/// The 1-based line of the first merge key: `<<:` as a block key (after
/// indentation or list dashes) or in a flow mapping (after `{` or `,`).
/// Found before the typed read, since in a string map (`env:`) a merge
/// key is an ordinary key whose error would name the anchor's line.
fn merge_key_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.match_indices("<<").any(|(at, _)| {
                let before = line[..at].trim_end();
                let keyed = line[at + 2..].trim_start().starts_with(':');
                let block = before.chars().all(|c| c == '-' || c.is_whitespace());
                keyed && (block || before.ends_with('{') || before.ends_with(','))
            })
        })
        .map(|i| i + 1)
}

/// One file parsed at a time, however many are asked for: a file within
/// the size limit can still take a second or two of a core (thousands of
/// nested brackets), and linting needs no key.
static PARSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

impl Pipeline {
    /// [`Pipeline::parse`] off the threads that serve requests, one file
    /// at a time.
    pub async fn parse_apart(text: String) -> Result<Pipeline, PipelineError> {
        let _turn = PARSING.acquire().await.map_err(|_| PipelineError::conflict("shutting_down", "shutting down"))?;
        tokio::task::spawn_blocking(move || Pipeline::parse(&text))
            .await
            .map_err(|e| PipelineError::Io(std::io::Error::other(format!("parsing stopped: {e}"))))?
    }

    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(PipelineError::InvalidFile {
                line: None,
                message: format!("the file is {} bytes; at most {MAX_FILE_BYTES}", text.len()),
            });
        }
        let raw = read_file(text)?;
        let fail = |section: &str, name: Option<&str>, message: String| PipelineError::InvalidFile {
            line: line_of(text, section, name),
            message,
        };
        if raw.steps.is_empty() {
            return Err(PipelineError::InvalidFile {
                line: line_of(text, "steps", None),
                message: "steps: at least one step is needed".into(),
            });
        }
        if raw.steps.len() > MAX_STEPS {
            return Err(fail("steps", None, format!("steps: at most {MAX_STEPS} steps")));
        }
        let run_timeout = match &raw.timeout {
            Some(t) => t.duration().map_err(|m| fail("timeout", None, format!("timeout: {m}")))?,
            None => DEFAULT_RUN_TIMEOUT,
        };
        let mut names = HashSet::new();
        if let Some(registry) = &raw.registry {
            check_registry(registry).map_err(|e| fail("registry", None, format!("registry: {e}")))?;
        }
        for service in &raw.services {
            check_name(&service.name).map_err(|m| fail("services", Some(&service.name), m))?;
            let here = |m: String| fail("services", Some(&service.name), format!("service `{}`: {m}", service.name));
            check_image(&service.image).map_err(&here)?;
            no_nul("commands", &service.commands).map_err(&here)?;
            no_nul("env", service.env.values()).map_err(&here)?;
            if !names.insert(service.name.clone()) {
                return Err(fail(
                    "services",
                    Some(&service.name),
                    format!("service `{}` is named twice", service.name),
                ));
            }
        }
        let dag = raw.steps.iter().any(|s| s.depends_on.is_some());
        let mut steps = Vec::with_capacity(raw.steps.len());
        let mut step_names: HashSet<String> = HashSet::new();
        for (index, s) in raw.steps.iter().enumerate() {
            let here = |m: String| fail("steps", Some(&s.name), format!("step `{}`: {m}", s.name));
            check_name(&s.name).map_err(&here)?;
            if !step_names.insert(s.name.clone()) || names.contains(&s.name) {
                return Err(here("the name is used twice".into()));
            }
            let action = match (&s.image, &s.build, &s.deploy) {
                (Some(image), None, None) => {
                    if s.commands.is_empty() {
                        return Err(here("`commands` is empty".into()));
                    }
                    check_image(image).map_err(&here)?;
                    no_nul("commands", &s.commands).map_err(&here)?;
                    Action::Commands { image: image.clone(), commands: s.commands.clone() }
                }
                (None, Some(build), None) => {
                    check_name(&build.service).map_err(|m| here(format!("build.service: {m}")))?;
                    no_nul("build.args", build.args.values()).map_err(&here)?;
                    for (field, path) in [("context", &build.context), ("dockerfile", &build.dockerfile)] {
                        if !inside_repository(path) {
                            return Err(here(format!("build.{field} must be a path inside the repository")));
                        }
                    }
                    Action::Build(build.clone())
                }
                (None, None, Some(deploy)) => {
                    validate_deploy(deploy).map_err(&here)?;
                    Action::Deploy(deploy.clone())
                }
                _ => return Err(here("needs exactly one of `image` with `commands`, `build` or `deploy`".into())),
            };
            if !matches!(action, Action::Commands { .. }) && !s.commands.is_empty() {
                return Err(here("`commands` belong to steps with an `image`".into()));
            }
            for secret in &s.secrets {
                check_env_name(secret).map_err(|m| here(format!("secrets: {m}")))?;
            }
            for key in s.env.keys() {
                check_env_name(key).map_err(|m| here(format!("env: {m}")))?;
            }
            no_nul("env", s.env.values()).map_err(&here)?;
            for pattern in s.when.branch.iter().chain(&s.when.tag) {
                Glob::new(pattern).map_err(|e| here(format!("when: `{pattern}` is not a pattern: {e}")))?;
            }
            let mut cached = HashSet::new();
            for path in &s.cache {
                // Docker takes mount points as written: `..` or `//` would
                // reach /workspace, or mount one path twice, under another name.
                let trimmed = path.trim_end_matches('/');
                let parts: Vec<&str> = trimmed.split('/').skip(1).collect();
                if !path.starts_with('/')
                    || parts.is_empty()
                    || parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..")
                    || parts.first() == Some(&"workspace")
                {
                    return Err(here(format!(
                        "cache: `{path}` must be an absolute path outside /workspace, without `.`, `..` or `//`"
                    )));
                }
                // The container's own kernel file systems: a volume cannot
                // be mounted there.
                if matches!(parts.first(), Some(&("proc" | "sys" | "dev"))) {
                    return Err(here(format!("cache: `{path}` is under /proc, /sys or /dev, which cannot be cached")));
                }
                if !cached.insert(trimmed) {
                    return Err(here(format!("cache: `{path}` is listed twice")));
                }
            }
            let depends_on = match &s.depends_on {
                Some(d) => d.clone(),
                None if !dag && index > 0 => vec![raw.steps[index - 1].name.clone()],
                None => Vec::new(),
            };
            let timeout = match &s.timeout {
                Some(t) => t.duration().map_err(|m| here(format!("timeout: {m}")))?,
                None => DEFAULT_STEP_TIMEOUT,
            };
            steps.push(Step {
                name: s.name.clone(),
                action,
                env: s.env.clone(),
                secrets: s.secrets.clone(),
                when: s.when.clone(),
                depends_on,
                timeout,
                cache: s.cache.clone(),
                on_failure: s.failure,
            });
        }
        for step in &steps {
            for dep in &step.depends_on {
                if !step_names.contains(dep) {
                    return Err(fail(
                        "steps",
                        Some(&step.name),
                        format!("step `{}`: depends_on names no step `{dep}`", step.name),
                    ));
                }
                if dep == &step.name {
                    return Err(fail("steps", Some(&step.name), format!("step `{}` depends on itself", step.name)));
                }
            }
        }
        if let Some(name) = find_cycle(&steps) {
            return Err(fail("steps", Some(&name), format!("step `{name}` is part of a dependency cycle")));
        }
        let environments = raw.environments.clone().unwrap_or_else(gitflow);
        for rule in &environments {
            let pattern = match (&rule.branch, &rule.tag) {
                (Some(p), None) | (None, Some(p)) => p,
                _ => {
                    return Err(fail(
                        "environments",
                        None,
                        format!("environment `{}`: give exactly one of `branch` or `tag`", rule.name),
                    ))
                }
            };
            Glob::new(pattern).map_err(|e| fail("environments", None, format!("environments: `{pattern}`: {e}")))?;
            check_name(&rule.name).map_err(|m| fail("environments", None, format!("environments: {m}")))?;
        }
        Ok(Pipeline { registry: raw.registry, timeout: run_timeout, environments, services: raw.services, steps })
    }

    /// The deploy environment for a branch or tag, if any rule matches.
    pub fn environment(&self, facts: &RunFacts) -> Option<String> {
        self.environments.iter().find_map(|rule| {
            let hit = match (&rule.branch, &rule.tag, facts.branch, facts.tag) {
                (Some(p), _, Some(b), None) => glob_matches(p, b),
                (_, Some(p), _, Some(t)) => glob_matches(p, t),
                _ => false,
            };
            hit.then(|| rule.name.clone())
        })
    }

    /// Steps in an order where every step comes after what it depends on.
    pub fn topological(&self) -> Vec<&Step> {
        let mut done: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        while out.len() < self.steps.len() {
            for step in &self.steps {
                if !done.contains(step.name.as_str()) && step.depends_on.iter().all(|d| done.contains(d.as_str())) {
                    done.insert(&step.name);
                    out.push(step);
                }
            }
        }
        out
    }

    /// `from` and every step that depends on it, directly or not.
    pub fn downstream_of(&self, from: &str) -> HashSet<String> {
        let mut set: HashSet<String> = HashSet::from([from.to_owned()]);
        for step in self.topological() {
            if step.depends_on.iter().any(|d| set.contains(d)) {
                set.insert(step.name.clone());
            }
        }
        set
    }
}

/// GitFlow: feature branches preview, develop stages, main/master and tags
/// go to production.
fn gitflow() -> Vec<EnvironmentRule> {
    let rule = |branch: Option<&str>, tag: Option<&str>, name: &str| EnvironmentRule {
        branch: branch.map(Into::into),
        tag: tag.map(Into::into),
        name: name.into(),
    };
    vec![
        rule(Some("feature/*"), None, "preview"),
        rule(Some("develop"), None, "staging"),
        rule(Some("main"), None, "production"),
        rule(Some("master"), None, "production"),
        rule(None, Some("*"), "production"),
    ]
}

fn validate_deploy(d: &Deploy) -> Result<(), String> {
    check_name(&d.service).map_err(|m| format!("deploy.service: {m}"))?;
    no_nul("deploy.env", d.env.values())?;
    if d.replicas == 0 || d.replicas > 20 {
        return Err("deploy.replicas must be between 1 and 20".into());
    }
    if d.port == 0 {
        return Err("deploy.port must be a port number".into());
    }
    if !d.health.starts_with('/') {
        return Err("deploy.health must be a path starting with /".into());
    }
    if d.health_timeout == 0 || d.health_timeout > 3600 {
        return Err("deploy.health_timeout must be between 1 and 3600 seconds".into());
    }
    for key in d.env.keys() {
        check_env_name(key).map_err(|m| format!("deploy.env: {m}"))?;
    }
    match d.strategy {
        Strategy::Canary
            if d.weights.is_empty()
                || d.weights.last() != Some(&100)
                || d.weights.windows(2).any(|w| w[0] >= w[1])
                || d.weights[0] == 0 =>
        {
            return Err("deploy.weights: canary needs ascending weights in percent ending at 100".into());
        }
        Strategy::Canary => {}
        _ if !d.weights.is_empty() => return Err("deploy.weights are for the canary strategy".into()),
        _ => {}
    }
    Ok(())
}

/// Names become container, volume and image names: keep them to what all accept.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` must be 1-63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"))
    }
}

/// An image reference Docker takes: `[host[:port]/]path[:tag][@digest]`,
/// path components in lowercase; checked here so that a file naming
/// `--privileged` or `Upper/Case` is refused at lint time, not at its run.
pub(crate) fn check_image(image: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("image `{image}`: {why}"));
    let (named, digest) = match image.split_once('@') {
        Some((named, digest)) => (named, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let ok = [("sha256:", 64), ("sha384:", 96), ("sha512:", 128)].iter().any(|(algorithm, digits)| {
            digest
                .strip_prefix(algorithm)
                .is_some_and(|hex| hex.len() == *digits && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if !ok {
            return refuse("a digest is `sha256:` (or sha384, sha512) and its hex digits");
        }
    }
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match named[last_slash..].rfind(':') {
        Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
        None => (named, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return refuse("a tag is up to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return refuse("the name must be 1-255 characters");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // A first part with a `.` or `:`, `localhost`, or any capital is a
    // registry host, as Docker reads it.
    let first = parts[0];
    let host_like =
        first.contains(['.', ':', '[']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase());
    if parts.len() > 1 && host_like {
        let host = parts.remove(0);
        // An IPv6 address is bracketed: `[::1]:5000`.
        let (domain, port, ipv6) = match host.strip_prefix('[').and_then(|h| h.split_once(']')) {
            Some((address, "")) => (address, None, true),
            Some((address, rest)) => (address, Some(rest.strip_prefix(':').unwrap_or("")), true),
            None => {
                let (domain, port) = host.split_once(':').map_or((host, None), |(d, p)| (d, Some(p)));
                (domain, port, false)
            }
        };
        let domain_ok = match ipv6 {
            true => domain.parse::<std::net::Ipv6Addr>().is_ok(),
            false => {
                !domain.is_empty()
                    && !domain.starts_with(['-', '.'])
                    && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            }
        };
        if !domain_ok || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return refuse("the registry host is a name or address with an optional port");
        }
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if !parts.iter().all(|c| component_ok(c)) {
        return refuse("each part of the name is lowercase letters and digits, joined by `.`, `_` or `-`");
    }
    Ok(())
}

/// Where images are pushed: `host[:port][/path]`, as images name it (a
/// trailing `/` is dropped, as [`crate::images::repository`] drops it).
pub(crate) fn check_registry(registry: &str) -> Result<(), String> {
    check_image(&format!("{}/image", registry.trim_end_matches('/')))
        .map_err(|_| format!("`{registry}` is not a registry host[:port][/path]"))
}

/// Text handed to a process (a command, an environment value) cannot hold
/// a NUL: Docker refuses it when the step starts.
fn no_nul<'a>(field: &str, values: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    match values.into_iter().any(|v| v.contains('\0')) {
        true => Err(format!("{field}: a NUL character cannot be passed to a process")),
        false => Ok(()),
    }
}

/// A relative path that stays inside the repository: no `..`, not absolute.
fn inside_repository(path: &str) -> bool {
    !path.starts_with('/') && !path.split('/').any(|p| p == "..")
}

pub(crate) fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an environment variable name (1-255 letters, digits or `_`, not starting with a digit)"
        ))
    }
}

fn find_cycle(steps: &[Step]) -> Option<String> {
    let index: HashMap<&str, &Step> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
    // 0 unvisited, 1 on the current path, 2 done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        name: &'a str,
        index: &HashMap<&'a str, &'a Step>,
        state: &mut HashMap<&'a str, u8>,
    ) -> Option<String> {
        match state.get(name) {
            Some(1) => return Some(name.to_owned()),
            Some(2) => return None,
            _ => {}
        }
        state.insert(name, 1);
        for dep in &index[name].depends_on {
            if let Some(found) = visit(dep, index, state) {
                return Some(found);
            }
        }
        state.insert(name, 2);
        None
    }
    steps.iter().find_map(|s| visit(&s.name, &index, &mut state))
}

/// serde's message ends with " at line L column C"; the line is reported
/// separately.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The line of a top-level `section:` or, with a name, of the list item
/// `- name: <name>` inside it: semantic errors point where the fix goes.
fn line_of(text: &str, section: &str, name: Option<&str>) -> Option<usize> {
    let mut in_section = false;
    let mut section_line = None;
    for (i, line) in text.lines().enumerate() {
        let top_level = !line.starts_with([' ', '\t', '-', '#']) && !line.trim().is_empty();
        if top_level {
            in_section = line.split(':').next().map(str::trim_end) == Some(section);
            if in_section {
                section_line = Some(i + 1);
                if name.is_none() {
                    return section_line;
                }
            }
            continue;
        }
        if in_section {
            let item = line.trim_start().trim_start_matches('-').trim_start();
            let item = item.trim_start_matches('{').trim_start();
            if let Some(value) = item.strip_prefix("name:") {
                let value = value.split([',', '}', '#']).next().unwrap_or("").trim().trim_matches(['"', '\'']);
                if Some(value) == name {
                    return Some(i + 1);
                }
            }
        }
    }
    section_line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
steps:
  - name: test
    image: leanloop/busybox:latest
    commands: [sh test.sh]
  - name: image
    build: { service: web }
  - name: deploy
    deploy: { service: web, port: 8080, health: /health, strategy: canary, weights: [10, 50, 100] }
";

    #[test]
    fn sequential_without_depends_on_and_gitflow_environments() {
        let p = Pipeline::parse(GOOD).unwrap();
        assert_eq!(p.steps[0].depends_on, Vec::<String>::new());
        assert_eq!(p.steps[1].depends_on, vec!["test"]);
        assert_eq!(p.steps[2].depends_on, vec!["image"]);
        let env =
            |branch: Option<&str>, tag: Option<&str>| p.environment(&RunFacts { branch, tag, event: Event::Push });
        assert_eq!(env(Some("feature/login"), None).as_deref(), Some("preview"));
        assert_eq!(env(Some("develop"), None).as_deref(), Some("staging"));
        assert_eq!(env(Some("main"), None).as_deref(), Some("production"));
        assert_eq!(env(None, Some("v1.2")).as_deref(), Some("production"));
        assert_eq!(env(Some("bugfix/x"), None), None);
        assert_eq!(p.downstream_of("image"), HashSet::from(["image".to_owned(), "deploy".to_owned()]));
    }

    #[test]
    fn dag_steps_without_depends_on_start_at_once() {
        let text = "steps:\n  - name: a\n    image: x\n    commands: [true]\n  - name: b\n    image: x\n    commands: [true]\n  - name: c\n    image: x\n    commands: [true]\n    depends_on: [a, b]\n";
        let p = Pipeline::parse(text).unwrap();
        assert!(p.steps[1].depends_on.is_empty());
        assert_eq!(p.topological().last().unwrap().name, "c");
    }

    #[test]
    fn anchors_in_a_variables_section_are_read_and_merge_keys_refused() {
        let text = "\
variables:
  - &env { MODE: ci, VERSION: 1.10 }
  - &commands [sh test.sh, 'true']
steps:
  - name: a
    image: leanloop/busybox:latest
    env: *env
    commands: *commands
";
        let p = Pipeline::parse(text).unwrap();
        assert_eq!(p.steps[0].env.get("VERSION").map(String::as_str), Some("1.10"), "scalars as written");
        for (merged, at) in [
            (text.replace("    env: *env\n", "    <<: { env: *env }\n"), 7),
            (text.replace("    env: *env\n", "    env:\n      <<: *env\n      B: 2\n"), 8),
            (text.replace("    env: *env\n", "    env: { B: 2, <<: *env }\n"), 7),
        ] {
            let Err(PipelineError::InvalidFile { line, message }) = Pipeline::parse(&merged) else {
                panic!("a merge key is refused: {merged}")
            };
            assert_eq!(line, Some(at), "{message}");
            assert!(message.contains("merge keys (`<<`) are not supported"), "{message}");
        }
        let heredoc = text.replace("[sh test.sh, 'true']", "['cat <<EOF', 'true']");
        assert!(Pipeline::parse(&heredoc).is_ok(), "a here-document in a command is no merge key");
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_the_yaml_reader() {
        let deep = format!("steps:\n  - name: a\n    commands: {}\n", "[".repeat(30_000));
        // The message names the check that runs before the YAML reader.
        let Err(PipelineError::InvalidFile { line, message }) = Pipeline::parse(&deep) else { panic!("refused") };
        assert_eq!(line, Some(3), "{message}");
        assert!(message.contains("nested over 64 deep"), "{message}");
        // Brackets in quotes and comments are not nesting; a quote inside
        // a plain scalar opens nothing.
        let many = "[".repeat(100);
        for fine in [format!("a: '{many}'"), format!("a: \"{many}\""), format!("a: 1 # {many}")] {
            assert_eq!(too_deep_line(&fine), None, "{fine}");
        }
        assert_eq!(too_deep_line(&format!("a: [x', {many}")), Some(1));
        // A stray quote in plain text or a block scalar hides nothing after it.
        assert_eq!(too_deep_line(&format!("x: a '\nb: {many}")), Some(2));
        assert_eq!(too_deep_line(&format!("x: |\n  'open\nb: {many}")), Some(3));
        assert_eq!(too_deep_line(&format!("x: rock 'n roll {many}")), Some(1));
        assert_eq!(too_deep_line(&format!("steps: [-'a, {many}")), Some(1));
        assert_eq!(too_deep_line(&format!("steps: [a - 'b, {many}")), Some(1));
        assert_eq!(too_deep_line(&format!("steps: [a ? 'b, {many}")), Some(1));
        assert_eq!(too_deep_line(&format!("a:'b {many}")), Some(1));
        // A comment ends at any line break the YAML reader knows.
        for brk in ["\r", "\u{85}", "\u{2028}", "\u{2029}"] {
            assert_eq!(too_deep_line(&format!("steps: [x, #'{brk}{many}")), Some(2), "{brk:?}");
        }
        // A plain scalar inside a flow collection goes on across lines.
        assert_eq!(too_deep_line(&format!("steps: [a\n  'b, {many}")), Some(2));
        assert_eq!(too_deep_line(&format!("steps: [\n  '{many}' ]")), None);
        assert_eq!(too_deep_line(&format!("- '{many}'\n? \"{many}\"\n[ '{many}' ]")), None);
    }

    #[test]
    fn errors_name_their_line() {
        let err = |text: &str| match Pipeline::parse(text).unwrap_err() {
            PipelineError::InvalidFile { line, message } => (line, message),
            other => panic!("{other}"),
        };
        let (line, message) = err("steps:\n  - name: a\n    image: x\n    comands: [true]\n");
        assert_eq!(line, Some(4), "{message}");
        assert!(message.contains("comands"), "{message}");
        let (line, message) = err("steps:\n  - name: a\n    image: x\n    commands: [true]\n  - name: b\n    image: x\n    commands: [true]\n    depends_on: [nope]\n");
        assert_eq!(line, Some(5));
        assert!(message.contains("nope"), "{message}");
        let (line, message) = err("steps:\n  - name: a\n    image: x\n    commands: [true]\n    depends_on: [b]\n  - name: b\n    image: x\n    commands: [true]\n    depends_on: [a]\n");
        assert!(line == Some(2) || line == Some(6), "{line:?}");
        assert!(message.contains("cycle"), "{message}");
        let (line, message) =
            err("steps:\n  - name: d\n    deploy: { service: web, port: 80, strategy: canary, weights: [50, 20] }\n");
        assert_eq!(line, Some(2));
        assert!(message.contains("weights"), "{message}");
        let (line, message) = err("steps:\n  - name: a\n    image: x\n    commands: [true]\n  - name: \"\"\n    image: x\n    commands: [true]\n");
        assert_eq!(line, Some(5), "{message}");
        let (_, message) = err("steps:\n  - name: a\n    image: x\n    build: { service: web }\n");
        assert!(message.contains("exactly one"), "{message}");
        let (line, message) = err("steps:\n  - name: a\n    image: x\n    commands: [\"echo \u{1}\"]\n");
        assert_eq!(line, Some(4), "{message}");
        assert!(message.contains("U+0001"), "{message}");
        let (line, message) = err("timeout: 5 weeks\nsteps:\n  - name: a\n    image: x\n    commands: [true]\n");
        assert_eq!(line, Some(1));
        assert!(message.contains("timeout"), "{message}");
        // Units that overflow a u64 of seconds are over the bound, not wrapped.
        for huge in ["307445734561825861m", "5124095576030432h"] {
            let text = format!("timeout: {huge}\nsteps:\n  - name: a\n    image: x\n    commands: [true]\n");
            assert!(err(&text).1.contains("24 hours"), "{huge}");
            let text = format!("steps:\n  - name: a\n    image: x\n    commands: [true]\n    timeout: {huge}\n");
            assert!(err(&text).1.contains("24 hours"), "step {huge}");
        }
        let (line, _) = err("steps: [\n");
        assert!(line.is_some());
    }

    #[test]
    fn paths_stay_where_they_belong() {
        let cache = |paths: &str| {
            Pipeline::parse(&format!("steps:\n  - name: a\n    image: x\n    commands: [true]\n    cache: {paths}\n"))
        };
        assert!(cache("[/root/.cache, /usr/local/cargo/registry/]").is_ok());
        for bad in [
            "[/tmp/../workspace]",
            "[/a/../../workspace]",
            "[/workspace/x]",
            "[//workspace]",
            "[/a/./b]",
            "[/]",
            "[relative]",
            "[/a, /a/]",
            "[/proc]",
            "[/dev/shm]",
            "[/sys/]",
        ] {
            assert!(cache(bad).is_err(), "{bad}");
        }
        let build =
            |fields: &str| Pipeline::parse(&format!("steps:\n  - name: a\n    build: {{ service: web, {fields} }}\n"));
        assert!(build("dockerfile: docker/Dockerfile, context: app").is_ok());
        for bad in ["dockerfile: ../../../etc/passwd", "dockerfile: /etc/passwd", "context: ..", "context: /"] {
            assert!(build(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_conditions_and_failure_policy() {
        let text = "steps:\n  - name: a\n    image: x\n    commands: [true]\n    failure: ignore\n  - name: b\n    image: x\n    commands: [true]\n    when: { status: [failure] }\n";
        let p = Pipeline::parse(text).unwrap();
        assert_eq!(p.steps[0].on_failure, OnFailure::Ignore);
        assert!(p.steps[0].when.runs_when(false) && !p.steps[0].when.runs_when(true));
        assert!(p.steps[1].when.runs_when(true) && !p.steps[1].when.runs_when(false));
        let always = When { status: vec![RunState::Success, RunState::Failure], ..When::default() };
        assert!(always.runs_when(true) && always.runs_when(false));
        assert!(
            Pipeline::parse("steps:\n  - name: a\n    image: x\n    commands: [true]\n    failure: maybe\n").is_err()
        );
    }

    #[test]
    fn when_takes_one_value_for_a_list_of_one() {
        let one: When = serde_norway::from_str("{branch: main, event: push, status: failure}").unwrap();
        let many: When = serde_norway::from_str("{branch: [main], event: [push], status: [failure]}").unwrap();
        assert_eq!(format!("{one:?}"), format!("{many:?}"));
        let wrong = serde_norway::from_str::<When>("{branch: {a: 1}}").unwrap_err().to_string();
        assert!(wrong.contains("one value or a list"), "{wrong}");
    }

    #[test]
    fn when_matches_branch_patterns_tags_and_events() {
        let when =
            When { branch: vec!["main".into(), "feature/*".into()], event: vec![Event::Push], ..When::default() };
        let facts = |branch, event| RunFacts { branch: Some(branch), tag: None, event };
        assert!(when.matches(&facts("feature/x", Event::Push)));
        assert!(when.matches(&facts("main", Event::Restart)));
        assert!(!when.matches(&facts("develop", Event::Push)));
        assert!(!when.matches(&facts("main", Event::Manual)));
        let tags = When { tag: vec!["v*".into()], ..When::default() };
        assert!(tags.matches(&RunFacts { branch: None, tag: Some("v1.0"), event: Event::Tag }));
        assert!(!tags.matches(&facts("main", Event::Push)));
    }

    #[test]
    fn images_are_references_docker_takes_and_nothing_passed_holds_a_nul() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for good in [
            "x".to_owned(),
            "leanloop/busybox:latest".into(),
            "postgres:16".into(),
            "127.0.0.1:5000/project-7/web:a1b2c3d".into(),
            "registry.example.com/team/app_v2.1:v1.0-rc_1".into(),
            "localhost/app".into(),
            "localhost:5000/app".into(),
            "docker.io/library/alpine:3.19".into(),
            "Registry.Example.COM/app".into(),
            "MyReg/app".into(),
            "[::1]:5000/app".into(),
            format!("alpine@{digest}"),
            format!("ghcr.io/org/repo:tag@{digest}"),
            format!("alpine@sha512:{}", "b".repeat(128)),
            format!("{}:tag@{digest}", "a".repeat(250)),
        ] {
            assert_eq!(check_image(&good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "--privileged",
            "app/Case:tag",
            "app:",
            "app:-x",
            "a b",
            "app@sha256:12",
            "/app",
            "app/",
            "a:1:2/b",
            "[zz]:5000/app",
            "UPPER",
        ] {
            assert!(check_image(bad).is_err(), "{bad:?}");
        }
        let step = |extra: &str| format!("steps:\n  - name: a\n    image: x\n    commands: [\"echo a\\0b\"]\n{extra}");
        let refused = |text: &str| match Pipeline::parse(text) {
            Err(PipelineError::InvalidFile { message, .. }) => message,
            other => panic!("{text}: {other:?}"),
        };
        assert!(refused(&step("")).contains("commands: a NUL"), "{}", refused(&step("")));
        let env = "steps:\n  - name: a\n    image: x\n    commands: [true]\n    env: { A: \"x\\0y\" }\n";
        assert!(refused(env).contains("env: a NUL"), "{}", refused(env));
        let image = "steps:\n  - name: a\n    image: \"--privileged\"\n    commands: [true]\n";
        assert!(refused(image).contains("image `--privileged`"), "{}", refused(image));
        let registry = "registry: \"--evil\"\nsteps:\n  - name: a\n    image: x\n    commands: [true]\n";
        assert!(refused(registry).contains("registry: `--evil`"), "{}", refused(registry));
    }
}
