//! Logging and metrics set-up. The Prometheus recorder is process-global, so
//! it is installed once and its handle shared by every `App` in the process.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Buckets for the store write latency histogram, in seconds.
const WRITE_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), WRITE_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours records nothing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            // Histogram samples accumulate until upkeep folds them into
            // buckets; without it, memory grows while nobody scrapes.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .expect("spawning the metrics upkeep thread");
            // Counters of rare trouble exist at 0 from the start, so that a
            // rate over them sees their first increase.
            for name in [
                "leanloop_log_full_total",
                "leanloop_store_reopened_total",
                "leanloop_log_write_errors_total",
                "leanloop_log_segments_reused_total",
                "leanloop_store_events_written_total",
                "leanloop_store_duplicates_total",
                "leanloop_store_write_errors_total",
                "leanloop_log_read_retries_total",
                "leanloop_log_damaged_bytes_total",
                "leanloop_http_connections_closed_idle_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            for &reason in leanloop_collector::REJECTION_REASONS {
                metrics::counter!("leanloop_ingest_requests_rejected_total", "reason" => reason).increment(0);
                metrics::counter!("leanloop_ingest_events_rejected_total", "reason" => reason).increment(0);
            }
            for source in ["segment", "posthog", "feedback"] {
                metrics::counter!("leanloop_ingest_events_accepted_total", "source" => source).increment(0);
            }
            for name in ["leanloop_log_fsync_seconds", "leanloop_log_group_appends", "leanloop_store_write_seconds"] {
                let _registered = metrics::histogram!(name);
            }
            handle
        })
        .clone()
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `LEANLOOP_LOG=json` for JSON lines.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (stderr closed: its reader went
    // away) is dropped. Reporting that failure would write to stderr
    // again, and `eprintln!` panics there, in whichever thread logged.
    // Colours only for a terminal, and not when NO_COLOR asks for none: a
    // file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    let _ = if std::env::var("LEANLOOP_LOG").is_ok_and(|v| v == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
