//! The connection to the coordinator: the channel (TLS optional), the
//! bearer token on every request, and calls retried with backoff while the
//! coordinator is unreachable.

use std::future::Future;
use std::time::{Duration, Instant};

use shardprep_core::auth::{AUTH_HEADER, bearer};
use shardprep_core::proto::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::{WorkerConfig, WorkerError};

/// TLS settings of a client.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// PEM of the CA (or self-signed certificate) the coordinator's certificate chains to.
    pub ca_pem: Vec<u8>,
    /// Name to check in the certificate (default: the URL's host).
    pub domain: Option<String>,
}

pub(super) type Client = CoordinatorClient<InterceptedService<Channel, AuthInterceptor>>;

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct AuthInterceptor(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(AUTH_HEADER, self.0.clone());
        Ok(req)
    }
}

/// Connects lazily to a coordinator with the token attached to every call.
pub fn client(url: &str, token: &str, tls: Option<&ClientTls>) -> Result<Client, WorkerError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|_| WorkerError::Url(url.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true);
    if let Some(t) = tls {
        let mut cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem));
        if let Some(d) = &t.domain {
            cfg = cfg.domain_name(d.clone());
        }
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| WorkerError::Tls(e.to_string()))?;
    }
    let value = bearer(token)
        .parse()
        .map_err(|_| WorkerError::Url(url.to_string()))?;
    Ok(CoordinatorClient::with_interceptor(
        endpoint.connect_lazy(),
        AuthInterceptor(value),
    ))
}

/// Whether a failed call may succeed if retried: the server is busy or
/// gone for now, or the connection broke (an HTTP/2 GOAWAY or reset, a
/// broken pipe, which tonic reports as `Internal` or `Unknown`).
fn transient(s: &Status) -> bool {
    let msg = s.message().to_ascii_lowercase();
    let broken_connection = s.code() == Code::Internal
        && [
            "goaway",
            "go away",
            "connection",
            "broken pipe",
            "reset",
            "h2 protocol error",
        ]
        .iter()
        .any(|w| msg.contains(w));
    broken_connection
        || matches!(
            s.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Aborted
        )
}

/// What every step of the loop talks to the coordinator with.
pub(super) struct Ctx {
    pub(super) config: WorkerConfig,
    pub(super) client: Client,
    /// Turns `true` when the worker is asked to shut down.
    pub(super) shutdown: tokio::sync::watch::Receiver<bool>,
    /// The background writeback of `data/`, shared by every shard this
    /// worker runs.
    pub(super) writeback: crate::extract::writeback::Writeback,
}

impl Ctx {
    pub(super) fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Calls `f` until it succeeds, retrying transient failures with
    /// backoff for up to `connect_timeout`.
    pub(super) async fn call<T, F, Fut>(
        &mut self,
        name: &'static str,
        mut f: F,
    ) -> Result<T, WorkerError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let first_failure = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match f(self.client.clone()).await {
                Ok(r) => {
                    if warned {
                        tracing::info!(url = %self.config.coordinator, "reconnected to the coordinator");
                    }
                    return Ok(r.into_inner());
                }
                Err(s) if s.code() == Code::Unauthenticated => {
                    return Err(WorkerError::Unauthenticated {
                        url: self.config.coordinator.clone(),
                    });
                }
                Err(s) if transient(&s) => {
                    if first_failure.elapsed() >= self.config.connect_timeout {
                        return Err(WorkerError::Unreachable {
                            url: self.config.coordinator.clone(),
                            waited: first_failure.elapsed(),
                            last: s.message().to_string(),
                        });
                    }
                    if !warned {
                        tracing::warn!(url = %self.config.coordinator, call = name, error = %s.message(), "coordinator unreachable; retrying");
                        warned = true;
                    }
                    let mut stop = self.shutdown.clone();
                    if self.stopping() {
                        return Err(WorkerError::Interrupted);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return Err(WorkerError::Interrupted),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(3));
                }
                Err(s) => {
                    return Err(WorkerError::Rpc {
                        call: name,
                        status: s.to_string(),
                    });
                }
            }
        }
    }
}
