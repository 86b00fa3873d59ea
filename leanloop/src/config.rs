//! The one typed configuration: a TOML file (optional), then environment
//! variables, then command-line flags, validated once at start-up.
//!
//! `RawConfig` mirrors the file (unknown keys are refused); `Config` is what
//! the rest of the program receives, already checked.

use anyhow::{bail, Context, Result};
use leanloop_collector::CollectorConfig;
use leanloop_pipeline::{HostSpec, PipelineConfig};
use leanloop_store::clickhouse::ClickHouseOptions;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./leanloop-data";
/// Upper bounds far above any use, below what overflows or exhausts the
/// machine when used (a time added to now, a thread per unit).
const MAX_TIMEOUT_SECS: u64 = 86_400;
const MAX_THREADS: usize = 1024;
const MAX_DEDUP_WINDOW_HOURS: u64 = 8_760;
const MIN_MEMORY_BYTES: u64 = 16_000_000;
const MAX_RETENTION_DAYS: u32 = 36_500;
const MAX_MEMORY_BYTES: u64 = 1_000_000_000_000_000; // 1000TB: DuckDB reads no larger unit

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Write-ahead log directory (default: `log` in the data directory).
    pub log_dir: Option<PathBuf>,
    #[serde(default)]
    pub collector: CollectorConfig,
    #[serde(default)]
    pub store: RawStoreConfig,
    /// Longest wait for the queue to drain on shutdown, in seconds.
    pub shutdown_timeout_secs: Option<u64>,
    /// How long requests are still taken after a stop signal, while
    /// `/readyz` answers 503, in seconds (default 0).
    pub shutdown_delay_secs: Option<u64>,
    /// Longest a request may take, in seconds.
    pub request_timeout_secs: Option<u64>,
    #[serde(default)]
    pub pipeline: PipelineConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreConfig {
    /// DuckDB's memory limit while questions are answered, e.g. "256MB".
    pub duckdb_memory_limit: Option<String>,
    /// DuckDB's memory limit while only events are written, e.g. "128MB".
    pub duckdb_ingest_memory_limit: Option<String>,
    /// DuckDB's threads while questions are answered (default: the cores).
    pub duckdb_threads: Option<usize>,
    /// DuckDB's threads otherwise, while only events are written (default 1).
    pub duckdb_ingest_threads: Option<usize>,
    /// Use ClickHouse instead of the embedded DuckDB store, e.g.
    /// `http://127.0.0.1:8123/?database=leanloop`.
    pub clickhouse_url: Option<String>,
    /// How long a uuid is remembered for dedup on ClickHouse, in hours.
    pub clickhouse_dedup_window_hours: Option<u64>,
    /// Drop ClickHouse events older than this many days (servers 19.6+).
    pub clickhouse_retention_days: Option<u32>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    pub collector: CollectorConfig,
    pub duckdb: leanloop_store::duckdb::DuckDbOptions,
    /// When set, events go to ClickHouse instead of DuckDB.
    pub clickhouse: Option<ClickHouseOptions>,
    pub shutdown_timeout: std::time::Duration,
    /// Requests still taken after a stop signal while `/readyz` says 503.
    pub shutdown_delay: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub pipeline: PipelineConfig,
}

/// Values from the command line; `None` leaves the file or environment in force.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    pub clickhouse_url: Option<String>,
}

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<RawConfig> {
        use std::io::Read;
        // Bounded: a config is a few KB, and a path such as /dev/zero has no end.
        const MAX_CONFIG_BYTES: u64 = 1 << 20;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("reading config file {}", path.display()))?;
        anyhow::ensure!(
            text.len() as u64 <= MAX_CONFIG_BYTES,
            "config file {}: larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        );
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// The variables [`RawConfig::apply_env`] reads, with the key each sets.
    const FROM_ENV: [(&'static str, &'static str); 8] = [
        ("LEANLOOP_LISTEN", "listen"),
        ("LEANLOOP_DATA_DIR", "data_dir"),
        ("LEANLOOP_DUCKDB_MEMORY_LIMIT", "store.duckdb_memory_limit"),
        ("LEANLOOP_DUCKDB_INGEST_MEMORY_LIMIT", "store.duckdb_ingest_memory_limit"),
        ("LEANLOOP_LOG_DIR", "log_dir"),
        ("LEANLOOP_CLICKHOUSE_URL", "store.clickhouse_url"),
        ("LEANLOOP_PIPELINE_REGISTRY", "pipeline.registry"),
        ("LEANLOOP_DOCKER_HOSTS", "pipeline.hosts"),
    ];

    /// Applies `LEANLOOP_*` variables ([`RawConfig::FROM_ENV`]) from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        for (var, key) in RawConfig::FROM_ENV {
            let Some(v) = env(var) else { continue };
            match key {
                "listen" => self.listen = Some(v),
                "data_dir" => self.data_dir = Some(v.into()),
                "store.duckdb_memory_limit" => self.store.duckdb_memory_limit = Some(v),
                "store.duckdb_ingest_memory_limit" => self.store.duckdb_ingest_memory_limit = Some(v),
                "log_dir" => self.log_dir = Some(v.into()),
                "store.clickhouse_url" => self.store.clickhouse_url = Some(v),
                "pipeline.registry" => self.pipeline.registry = Some(v),
                // Comma-separated engine URLs, each with the default capacity.
                "pipeline.hosts" => {
                    self.pipeline.hosts = v
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(|url| HostSpec { url: url.to_owned(), ..HostSpec::local() })
                        .collect()
                }
                other => unreachable!("FROM_ENV names `{other}`, which apply_env does not set"),
            }
        }
    }

    pub fn build_and_validate(self) -> Result<Config> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr =
            listen.parse().with_context(|| format!("listen: `{listen}` is not an address like 127.0.0.1:8080"))?;
        self.collector.validate().map_err(anyhow::Error::msg)?;
        let defaults = leanloop_store::duckdb::DuckDbOptions::default();
        let memory_limit = self.store.duckdb_memory_limit.unwrap_or(defaults.memory_limit.clone());
        let query_bytes = memory_bytes("store.duckdb_memory_limit", &memory_limit)?;
        let ingest_memory_limit = match self.store.duckdb_ingest_memory_limit {
            Some(limit) => {
                if memory_bytes("store.duckdb_ingest_memory_limit", &limit)? > query_bytes {
                    bail!("store.duckdb_ingest_memory_limit: `{limit}` is above store.duckdb_memory_limit (`{memory_limit}`)");
                }
                limit
            }
            // The default, unless the whole limit is smaller.
            None if memory_bytes("", &defaults.ingest_memory_limit)? <= query_bytes => {
                defaults.ingest_memory_limit.clone()
            }
            None => memory_limit.clone(),
        };
        let threads = self
            .store
            .duckdb_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        if threads == 0 {
            bail!("store.duckdb_threads must be at least 1");
        }
        if threads > MAX_THREADS {
            bail!("store.duckdb_threads: {threads} is above the most it may be, {MAX_THREADS}");
        }
        let ingest_threads = match self.store.duckdb_ingest_threads {
            Some(0) => bail!("store.duckdb_ingest_threads must be at least 1"),
            Some(n) if n > threads => {
                bail!("store.duckdb_ingest_threads: {n} is above store.duckdb_threads ({threads})")
            }
            Some(n) => n,
            None => defaults.ingest_threads.min(threads),
        };
        if let Some(days) = self.store.clickhouse_retention_days {
            // 0 would delete every event as it is stored.
            if days == 0 || days > MAX_RETENTION_DAYS {
                bail!("store.clickhouse_retention_days must be 1 to {MAX_RETENTION_DAYS} (a century)");
            }
        }
        let clickhouse = match self.store.clickhouse_url {
            Some(url) => {
                let mut options = ClickHouseOptions::new(url);
                if let Some(hours) = self.store.clickhouse_dedup_window_hours {
                    if hours == 0 || hours > MAX_DEDUP_WINDOW_HOURS {
                        bail!("store.clickhouse_dedup_window_hours must be 1 to {MAX_DEDUP_WINDOW_HOURS} (a year)");
                    }
                    options.dedup_window = std::time::Duration::from_secs(hours * 3600);
                }
                options.retention_days = self.store.clickhouse_retention_days;
                options.check().map_err(|e| anyhow::anyhow!("store.clickhouse_url: {e}"))?;
                Some(options)
            }
            None => None,
        };
        self.pipeline.validate().map_err(anyhow::Error::msg)?;
        let seconds = |name: &str, value: Option<u64>| -> Result<std::time::Duration> {
            match value.unwrap_or(30) {
                0 => bail!("{name} must be at least 1"),
                s if s > MAX_TIMEOUT_SECS => {
                    bail!("{name}: {s} is above the most it may be, {MAX_TIMEOUT_SECS} (a day)")
                }
                s => Ok(std::time::Duration::from_secs(s)),
            }
        };
        let shutdown_timeout = seconds("shutdown_timeout_secs", self.shutdown_timeout_secs)?;
        let request_timeout = seconds("request_timeout_secs", self.request_timeout_secs)?;
        let shutdown_delay = match self.shutdown_delay_secs.unwrap_or(0) {
            s if s > MAX_TIMEOUT_SECS => {
                bail!("shutdown_delay_secs: {s} is above the most it may be, {MAX_TIMEOUT_SECS} (a day)")
            }
            s => std::time::Duration::from_secs(s),
        };
        if self.log_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            bail!("log_dir must not be empty");
        }
        if self.data_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            bail!("data_dir must not be empty");
        }
        let data_dir: PathBuf = self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        Ok(Config {
            listen,
            log_dir: self.log_dir.unwrap_or_else(|| data_dir.join("log")),
            data_dir,
            collector: self.collector,
            duckdb: leanloop_store::duckdb::DuckDbOptions {
                memory_limit,
                ingest_memory_limit,
                threads,
                ingest_threads,
                ..defaults
            },
            clickhouse,
            shutdown_timeout,
            shutdown_delay,
            request_timeout,
            pipeline: self.pipeline,
        })
    }
}

/// Bytes in a size as DuckDB reads one: a number and a unit, decimal (KB,
/// MB, GB, TB) or binary (KiB, MiB, GiB, TiB), e.g. `256MB`.
fn memory_bytes(field: &str, size: &str) -> Result<u64> {
    let size = size.trim();
    let split = size.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(size.len());
    let (number, unit) = (&size[..split], size[split..].trim());
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" | "byte" | "bytes" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => bail!("{field}: `{size}` is not a size like 256MB"),
    };
    let bytes = match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => n * scale as f64,
        _ => bail!("{field}: `{size}` is not a size like 256MB"),
    };
    // DuckDB refuses less than it needs to open a database, and more than
    // its own counters hold, with messages naming neither the setting.
    if !(MIN_MEMORY_BYTES as f64..=MAX_MEMORY_BYTES as f64).contains(&bytes) {
        bail!("{field}: `{size}` is outside 16MB to 1000TB");
    }
    Ok(bytes as u64)
}

impl Config {
    /// File, then environment, then flags.
    pub fn load(overrides: &Overrides) -> Result<Config> {
        // The file's path as the system gives it (it need not be UTF-8).
        let mut overrides = overrides.clone();
        if overrides.config_file.is_none() {
            overrides.config_file = std::env::var_os("LEANLOOP_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
        }
        Config::load_with(&overrides, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`Config::load`] with the environment `env` (a variable set empty
    /// is none).
    fn load_with(overrides: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let file = overrides.config_file.clone().or_else(|| env("LEANLOOP_CONFIG").map(PathBuf::from));
        let mut raw = match file {
            Some(path) => RawConfig::from_file(&path)?,
            None => RawConfig::default(),
        };
        raw.apply_env(&env);
        if let Some(listen) = &overrides.listen {
            raw.listen = Some(listen.clone());
        }
        if let Some(dir) = &overrides.data_dir {
            raw.data_dir = Some(dir.clone());
        }
        if let Some(dir) = &overrides.log_dir {
            raw.log_dir = Some(dir.clone());
        }
        if let Some(url) = &overrides.clickhouse_url {
            raw.store.clickhouse_url = Some(url.clone());
        }
        // Errors name the key; a value a variable gave names the variable too.
        let flagged = [
            ("listen", overrides.listen.is_some()),
            ("data_dir", overrides.data_dir.is_some()),
            ("log_dir", overrides.log_dir.is_some()),
            ("store.clickhouse_url", overrides.clickhouse_url.is_some()),
        ];
        raw.build_and_validate().map_err(|e| {
            let message = e.to_string();
            let from_env = RawConfig::FROM_ENV.iter().find(|&&(var, key)| {
                message.starts_with(&format!("{key}:")) && env(var).is_some() && !flagged.contains(&(key, true))
            });
            match from_env {
                Some((var, _)) => e.context(format!("{var} (the environment)")),
                None => e,
            }
        })
    }

    /// Defaults with the given data directory and an ephemeral port: for tests
    /// and benchmarks.
    pub fn for_tests(data_dir: &Path) -> Config {
        RawConfig { listen: Some("127.0.0.1:0".into()), data_dir: Some(data_dir.into()), ..RawConfig::default() }
            .build_and_validate()
            .expect("default configuration is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../leanloop.example.toml");
        let config = RawConfig::from_file(&path).unwrap().build_and_validate().unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.collector, CollectorConfig::default());
    }

    #[test]
    fn values_past_their_bounds_are_refused_by_name() {
        for (toml, name) in [
            ("shutdown_timeout_secs = 18446744073709551615", "shutdown_timeout_secs"),
            ("request_timeout_secs = 0", "request_timeout_secs"),
            ("shutdown_delay_secs = 86401", "shutdown_delay_secs"),
            ("log_dir = \"\"", "log_dir"),
            ("[store]\nduckdb_threads = 100000", "store.duckdb_threads"),
            ("[store]\nduckdb_memory_limit = \"999999999TB\"", "store.duckdb_memory_limit"),
            ("[store]\nduckdb_memory_limit = \"1B\"", "store.duckdb_memory_limit"),
            ("[store]\nduckdb_memory_limit = \"1PB\"", "store.duckdb_memory_limit"),
            ("[store]\nclickhouse_retention_days = 0", "store.clickhouse_retention_days"),
            ("[store]\nclickhouse_url = \"not a url\"", "store.clickhouse_url"),
            ("[store]\nclickhouse_url = \"http://127.0.0.1:8123/db\"", "store.clickhouse_url"),
            (
                "[store]\nclickhouse_url = \"http://127.0.0.1:8123/\"\nclickhouse_dedup_window_hours = 5124095576030433",
                "store.clickhouse_dedup_window_hours",
            ),
            ("[collector]\nlog = false\nqueue_capacity = 9223372036854775807", "collector.queue_capacity"),
            ("[collector]\nuser_agent_cache = 9223372036854775807", "collector.user_agent_cache"),
            ("[pipeline]\nmax_runs = 9223372036854775807", "pipeline.max_runs"),
            ("[collector]\ncountry_header = \"bad header\\n\"", "collector.country_header"),
        ] {
            let raw: RawConfig = toml::from_str(toml).unwrap();
            let err = raw.build_and_validate().unwrap_err().to_string();
            assert!(err.contains(name), "{toml}: {err}");
        }
    }

    #[test]
    fn a_bad_value_from_the_environment_names_its_variable() {
        let env = |name: &str| (name == "LEANLOOP_LISTEN").then(|| "garbage".to_owned());
        let err = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(format!("{err:#}").starts_with("LEANLOOP_LISTEN (the environment): listen:"), "{err:#}");
        // A flag given instead is the flag's value, and named as the key.
        let flagged = Overrides { listen: Some("also garbage".into()), ..Overrides::default() };
        let err = Config::load_with(&flagged, env).unwrap_err();
        assert!(format!("{err:#}").starts_with("listen:"), "{err:#}");
    }

    #[test]
    fn every_variable_sets_its_key() {
        let mut raw = RawConfig::default();
        raw.apply_env(|name| Some(format!("value of {name}")));
        assert_eq!(raw.listen.as_deref(), Some("value of LEANLOOP_LISTEN"));
        assert_eq!(raw.store.clickhouse_url.as_deref(), Some("value of LEANLOOP_CLICKHOUSE_URL"));
        assert_eq!(raw.pipeline.hosts.len(), 1);
    }

    #[test]
    fn a_config_file_is_read_to_a_bound() {
        let err = RawConfig::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{err:#}").contains("larger than"), "{err:#}");
    }

    #[test]
    fn env_overrides_file_and_bad_values_are_named() {
        let mut raw: RawConfig = toml::from_str("listen = \"127.0.0.1:9000\"").unwrap();
        raw.apply_env(|name| (name == "LEANLOOP_LISTEN").then(|| "0.0.0.0:9100".to_owned()));
        assert_eq!(raw.clone().build_and_validate().unwrap().listen.port(), 9100);
        raw.listen = Some("nowhere".into());
        assert!(raw.build_and_validate().unwrap_err().to_string().contains("listen"));
        let err = toml::from_str::<RawConfig>("colour = 1").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let raw: RawConfig = toml::from_str("[collector]\nqueue_capacity = 0").unwrap();
        assert!(raw.build_and_validate().unwrap_err().to_string().contains("queue_capacity"));
    }

    #[test]
    fn duckdb_limits_are_sizes_and_ingest_stays_within_the_whole() {
        let build = |toml: &str| toml::from_str::<RawConfig>(toml).unwrap().build_and_validate();
        let config = build("[store]\nduckdb_memory_limit = \"1 GiB\"").unwrap();
        assert_eq!(
            (config.duckdb.memory_limit.as_str(), config.duckdb.ingest_memory_limit.as_str()),
            ("1 GiB", "128MB")
        );
        // A whole limit below the default ingest limit is both.
        let config = build("[store]\nduckdb_memory_limit = \"100MB\"").unwrap();
        assert_eq!(config.duckdb.ingest_memory_limit, "100MB");
        let err = build("[store]\nduckdb_ingest_memory_limit = \"300MB\"").unwrap_err().to_string();
        assert!(err.contains("duckdb_ingest_memory_limit") && err.contains("above"), "{err}");
        for bad in ["lots", "12", "-5MB", "MB", "1.5.0GB"] {
            let err = build(&format!("[store]\nduckdb_memory_limit = \"{bad}\"")).unwrap_err().to_string();
            assert!(err.contains("store.duckdb_memory_limit"), "{bad}: {err}");
        }
        assert_eq!(memory_bytes("x", "1.5GiB").unwrap(), 3 << 29);
    }

    #[test]
    fn duckdb_ingest_threads_stay_within_the_query_threads() {
        let build = |toml: &str| toml::from_str::<RawConfig>(toml).unwrap().build_and_validate();
        let config = build("[store]\nduckdb_threads = 4").unwrap();
        assert_eq!((config.duckdb.threads, config.duckdb.ingest_threads), (4, 1));
        let config = build("[store]\nduckdb_threads = 4\nduckdb_ingest_threads = 4").unwrap();
        assert_eq!(config.duckdb.ingest_threads, 4);
        for (bad, says) in
            [("duckdb_ingest_threads = 0", "at least 1"), ("duckdb_threads = 2\nduckdb_ingest_threads = 3", "above")]
        {
            let err = build(&format!("[store]\n{bad}")).unwrap_err().to_string();
            assert!(err.contains("store.duckdb_ingest_threads") && err.contains(says), "{bad}: {err}");
        }
    }
}
