//! The `--metrics` endpoint: `/metrics` in the Prometheus text format, rendered from the
//! latest snapshot at each scrape.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};

use crate::{
    report::{
        RunInfo,
        metrics::{self, Cardinality},
    },
    snapshot::Snapshot,
};

/// What the run loop publishes after each poll.
#[derive(Clone, Debug)]
pub(crate) struct Published {
    pub snapshot: Snapshot,
    pub run: RunInfo,
}

pub(crate) type Shared = Arc<Mutex<Published>>;

/// Binds `addr` (before privileges are dropped) and serves it in the background.
pub(crate) async fn start(addr: SocketAddr, shared: Shared) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not listen on {addr} for --metrics"))?;
    let bound = listener.local_addr().context("metrics listener address")?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "netwatch: metrics at /metrics\n" }))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            log::warn!("metrics endpoint stopped: {err}");
        }
    });
    Ok(bound)
}

async fn scrape(State(shared): State<Shared>) -> impl IntoResponse {
    let published = shared
        .lock()
        .map_or_else(|poisoned| poisoned.into_inner().clone(), |p| p.clone());
    let body = metrics::render(&published.snapshot, &published.run, &Cardinality::default());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body)
}
