//! `cargo run -p layercache-example-service`: the example service with its configuration from
//! the environment (see the README), until Ctrl-C or SIGTERM, then a graceful shutdown.

use std::process::ExitCode;

use layercache_example_service::{Config, Service, prometheus_builder};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let mut config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "bad configuration");
            return ExitCode::FAILURE;
        }
    };
    // The one global recorder of the process, installed before any cache is built (the caches
    // register their latency histograms at build): `/metrics` renders it.
    let recorder = prometheus_builder().build_recorder();
    config.prometheus = Some(recorder.handle());
    if let Err(error) = metrics::set_global_recorder(recorder) {
        tracing::warn!(%error, "a metrics recorder was already installed");
    }

    let running = match Service::start(config).await {
        Ok(running) => running,
        Err(error) => {
            tracing::error!(%error, "the service did not start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        url = %running.url(),
        "ready: try `curl {}/products/1`; Ctrl-C stops",
        running.url()
    );
    stopped().await;
    tracing::info!("stopping: finishing requests in flight, draining the caches");
    match running.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "shutdown was not clean");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix (what a container runtime sends).
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
