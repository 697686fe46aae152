//! `lifecycle run`: wires the rules, the reloader, audit, metrics and the Kubernetes shell
//! into one process, and shuts it down cleanly on SIGTERM / Ctrl-C.

use crate::rules::parse_setting;
use crate::rules::{LoadError, Rules, Sources};
use crate::runtime::audit::{self, AuditSink};
use crate::runtime::k8s::{self, LeaseConfig, Readiness, Settings};
use crate::runtime::metrics::Metrics;
use crate::runtime::reload;
use crate::runtime::secure_metrics;
use crate::runtime::server::{self, Endpoints};
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Settings of `lifecycle run` (flags, or the environment variables named in `--help`).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The rules file; its folder and the templates folder are watched for changes.
    #[arg(long, env = "LIFECYCLE_RULES", default_value = "lifecycle.yaml")]
    pub rules: PathBuf,
    /// Override a setting of the rules (NAME=VALUE); repeatable.
    #[arg(long = "set", value_parser = parse_setting)]
    pub set: Vec<(String, String)>,
    /// Kubeconfig context to use (the kubeconfig comes from KUBECONFIG or ~/.kube/config;
    /// in a pod, the service account is used).
    #[arg(long, env = "LIFECYCLE_CONTEXT")]
    pub context: Option<String>,
    /// Only govern resources in this namespace (default: all namespaces).
    #[arg(long, env = "LIFECYCLE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics (of /metrics alone with --health-address).
    #[arg(
        long,
        env = "LIFECYCLE_METRICS_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_address: SocketAddr,
    /// Serve /metrics over HTTPS, only to callers the API server authenticates (TokenReview)
    /// and authorises to `get` the non-resource URL /metrics (SubjectAccessReview); needs
    /// `create` on tokenreviews and subjectaccessreviews. Without it, plain HTTP for anyone.
    #[arg(long, env = "LIFECYCLE_METRICS_SECURE")]
    pub metrics_secure: bool,
    /// PEM certificate (chain) of the secure metrics endpoint, read at start (default: a
    /// self-signed certificate made at start); with --metrics-key-file.
    #[arg(
        long,
        env = "LIFECYCLE_METRICS_CERT_FILE",
        requires_all = ["metrics_key_file", "metrics_secure"]
    )]
    pub metrics_cert_file: Option<PathBuf>,
    /// PEM private key of --metrics-cert-file.
    #[arg(
        long,
        env = "LIFECYCLE_METRICS_KEY_FILE",
        requires_all = ["metrics_cert_file", "metrics_secure"]
    )]
    pub metrics_key_file: Option<PathBuf>,
    /// Address of /healthz and /readyz over plain HTTP, apart from /metrics (default: served
    /// with /metrics, over HTTPS too with --metrics-secure).
    #[arg(long, env = "LIFECYCLE_HEALTH_ADDRESS")]
    pub health_address: Option<SocketAddr>,
    /// Reconciles running at once.
    #[arg(long, env = "LIFECYCLE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Audit targets: `stdout`, `file:PATH`, or the base URL of an HTTP batch endpoint
    /// (records are POSTed to URL/api/v1/audit/events/batch); repeatable.
    #[arg(long = "audit", env = "LIFECYCLE_AUDIT", value_delimiter = ',')]
    pub audit: Vec<audit::Target>,
    /// No longer used: records are never buffered nor dropped (a transition waits until its
    /// record is accepted, see --audit-wait). Accepted so that old manifests keep working.
    #[arg(long, env = "LIFECYCLE_AUDIT_BUFFER", hide = true)]
    pub audit_buffer: Option<usize>,
    /// How long a transition waits for its audit record to be accepted by every target; past
    /// it the transition is not written and its reconcile is retried (the record is sent
    /// again, with the same id).
    #[arg(long, env = "LIFECYCLE_AUDIT_WAIT", default_value = "5s", value_parser = crate::time::parse_std_duration)]
    pub audit_wait: Duration,
    /// Timeout of one request to an HTTP audit endpoint.
    #[arg(long, env = "LIFECYCLE_AUDIT_TIMEOUT", default_value = "10s", value_parser = crate::time::parse_std_duration)]
    pub audit_timeout: Duration,
    /// Longest wait between two attempts to deliver audit records (a Retry-After may ask for
    /// more).
    #[arg(long, env = "LIFECYCLE_AUDIT_MAX_BACKOFF", default_value = "10s", value_parser = crate::time::parse_std_duration)]
    pub audit_max_backoff: Duration,
    /// PEM bundle of certificate authorities trusted for https:// audit endpoints (besides
    /// the built-in roots), e.g. a private CA.
    #[arg(long, env = "LIFECYCLE_AUDIT_CA_FILE")]
    pub audit_ca_file: Option<PathBuf>,
    /// Timeout of one Kubernetes API request (watches excepted).
    #[arg(long, env = "LIFECYCLE_API_TIMEOUT", default_value = "20s", value_parser = crate::time::parse_std_duration)]
    pub api_timeout: Duration,
    /// Timeout of connecting to the Kubernetes API (TLS handshake included).
    #[arg(long, env = "LIFECYCLE_API_CONNECT_TIMEOUT", default_value = "5s", value_parser = crate::time::parse_std_duration)]
    pub api_connect_timeout: Duration,
    /// Length of one watch (the API server ends it and it is resumed); a watch silent 2 s
    /// longer is dead and restarted.
    #[arg(long, env = "LIFECYCLE_WATCH_TIMEOUT", default_value = "60s", value_parser = crate::time::parse_std_duration)]
    pub watch_timeout: Duration,
    /// How long a reconcile waits for the watch cache of related objects to show the changes
    /// made up to the execution object that lists them; past it they are read from the API
    /// server (`lifecycle_related_reads_total{result="api"}`).
    #[arg(long, env = "LIFECYCLE_CACHE_WAIT", default_value = "1s", value_parser = crate::time::parse_std_duration)]
    pub cache_wait: Duration,
    /// Elect a leader with a Lease; only the leader reconciles.
    #[arg(long, env = "LIFECYCLE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "LIFECYCLE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the Lease (default: the rules' component, plus `-shard-N` when sharded).
    #[arg(long, env = "LIFECYCLE_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// This replica's identity (default: POD_NAME, else host name and process id).
    #[arg(long, env = "LIFECYCLE_IDENTITY")]
    pub identity: Option<String>,
    /// Lease validity without renewal. A standby takes the Lease only after seeing it
    /// unchanged this long, on its own clock.
    #[arg(long, default_value = "15s", value_parser = crate::time::parse_std_duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal; shorter than the lease
    /// (default: two thirds of it). Past it the process stops writing and exits.
    #[arg(long, value_parser = crate::time::parse_std_duration)]
    pub lease_renew_deadline: Option<Duration>,
    /// How often the leader renews and a standby retries (default: a seventh of the lease).
    #[arg(long, value_parser = crate::time::parse_std_duration)]
    pub lease_retry_period: Option<Duration>,
    /// This replica's shard (0-based); with --shard-count.
    #[arg(long, env = "LIFECYCLE_SHARD_INDEX", requires = "shard_count")]
    pub shard_index: Option<u32>,
    /// Number of shards: resources are split by a hash of their lock (the execution object's
    /// name), so every resource of one target lands on one shard.
    #[arg(long, env = "LIFECYCLE_SHARD_COUNT", requires = "shard_index")]
    pub shard_count: Option<u32>,
    /// Namespace of the ConfigMaps that keep every rules revision resources are pinned to
    /// (`rollout`), so that they keep it across restarts and failovers (default: POD_NAMESPACE;
    /// without either, revisions are kept in memory only).
    #[arg(long, env = "LIFECYCLE_REVISIONS_NAMESPACE")]
    pub revisions_namespace: Option<String>,
    /// Quiet time after a rules change before it is loaded.
    #[arg(long, default_value = "300ms", value_parser = crate::time::parse_std_duration)]
    pub reload_debounce: Duration,
    /// Log format.
    #[arg(long, env = "LIFECYCLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// The endpoints' listeners, bound before the controller talks to the cluster, and the TLS
/// identity of a secure /metrics.
struct Listeners {
    /// `/metrics`, and the probes unless they have their own.
    metrics: tokio::net::TcpListener,
    /// The probes' own (`--health-address`).
    health: Option<tokio::net::TcpListener>,
    /// With `--metrics-secure`.
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// Log format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn,tower=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the controller; returns the process exit code.
pub fn main(args: RunArgs) -> ExitCode {
    init_logging(args.log_format);
    let loaded =
        Sources::read(&args.rules).and_then(|s| Rules::compile(&s, &args.set).map(|r| (r, s)));
    let (rules, sources) = match loaded {
        Ok((r, s)) => (Arc::new(r), Arc::new(s)),
        Err(e) => {
            eprintln!("{e}");
            return match e {
                LoadError::Unusable { .. } => ExitCode::from(2),
                LoadError::Invalid(_) => ExitCode::from(1),
            };
        }
    };
    if let (Some(i), Some(n)) = (args.shard_index, args.shard_count)
        && (n == 0 || i >= n)
    {
        eprintln!("--shard-index must be below --shard-count (got {i} of {n})");
        return ExitCode::from(2);
    }
    let tls = if args.metrics_secure {
        let files = args
            .metrics_cert_file
            .as_deref()
            .zip(args.metrics_key_file.as_deref());
        match crate::runtime::secure_metrics::tls_config(files) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("--metrics-secure: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Bound before anything talks to the API server: a controller that cannot serve its probes
    // and metrics would be restarted blind, or run unobserved, so it does not start at all.
    let metrics_endpoints = if args.health_address.is_some() {
        Endpoints::Metrics
    } else {
        Endpoints::All
    };
    let bound = runtime.block_on(async {
        let metrics = server::bind(args.metrics_address, metrics_endpoints).await?;
        let health = match args.health_address {
            Some(address) => Some(server::bind(address, Endpoints::Probes).await?),
            None => None,
        };
        Ok::<_, server::BindError>(Listeners {
            metrics,
            health,
            tls,
        })
    });
    let listeners = match bound {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %e.address, error = %e.source, "cannot serve {}", e.endpoints);
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args, (rules, sources), listeners)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the controller stopped");
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(
    args: RunArgs,
    (rules, sources): (Arc<Rules>, Arc<Sources>),
    listeners: Listeners,
) -> Result<(), k8s::Error> {
    tracing::info!(rules = %rules.file.display(), revision = %rules.revision, "rules loaded");
    let metrics = Arc::new(Metrics::new());
    let fence = if args.leader_elect {
        k8s::Fence::closed()
    } else {
        k8s::Fence::open()
    };
    let timeouts = k8s::Timeouts {
        connect: args.api_connect_timeout,
        request: args.api_timeout,
        watch: args.watch_timeout,
    };
    let clients = k8s::connect(args.context.as_deref(), &timeouts, fence, metrics.clone()).await?;
    // the status the rules write must survive the API server's pruning, now and on reloads
    let crd = k8s::governed_schema(&clients.control, &rules).await;
    if let Some(crd) = &crd {
        rules
            .check_schema(crd)
            .map_err(|e| k8s::Error::RulesDoNotFitCrd(e.to_string()))?;
        tracing::info!(crd = %crd.crd, "rules checked against the governed kind's CRD");
    }
    metrics.declare(&rules);
    let (handle, reload_errors) = reload::start(
        rules.clone(),
        Some(sources),
        reload::Config {
            file: args.rules.clone(),
            overrides: args.set.clone(),
            debounce: args.reload_debounce,
            poll: Duration::from_secs(30),
            crd,
        },
        metrics.clone(),
    );
    if args.audit_buffer.is_some() {
        tracing::warn!(
            "--audit-buffer is no longer used: transitions wait for their audit records instead of buffering them"
        );
    }
    let audit = AuditSink::start(
        audit::Config {
            targets: args.audit.clone(),
            wait: args.audit_wait,
            request_timeout: args.audit_timeout,
            max_backoff: args.audit_max_backoff,
            ca_file: args.audit_ca_file.clone(),
            ..audit::Config::default()
        },
        metrics.clone(),
    )
    .map_err(|e| k8s::Error::Settings(e.to_string()))?;
    let readiness = Arc::new(Readiness::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let server_state = server::ServerState {
        metrics: metrics.clone(),
        rules: handle.clone(),
        readiness: readiness.clone(),
    };
    let addr = args.metrics_address;
    let Listeners {
        metrics: listener,
        health,
        tls,
    } = listeners;
    let separate_probes = health.is_some();
    if let Some(health) = health {
        let (state, stop) = (server_state.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move {
            if let Err(e) = server::serve_plain(health, state, Endpoints::Probes, stop).await {
                tracing::error!(error = %e, "serving /healthz, /readyz failed");
            }
        });
    }
    let server_stop = stopped(stop_rx.clone());
    let auth = tls.map(|tls| {
        (
            tls,
            secure_metrics::Authorizer::new(clients.control.clone()),
        )
    });
    tokio::spawn(async move {
        let served = match auth {
            Some((tls, auth)) => {
                let probes = !separate_probes;
                secure_metrics::serve(listener, server_state, tls, auth, probes, server_stop).await
            }
            None => {
                let endpoints = if separate_probes {
                    Endpoints::Metrics
                } else {
                    Endpoints::All
                };
                server::serve_plain(listener, server_state, endpoints, server_stop).await
            }
        };
        if let Err(e) = served {
            tracing::error!(address = %addr, error = %e, "serving the endpoints failed");
        }
    });
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "lifecycle".into()),
                std::process::id()
            )
        });
    k8s::report_reload_errors(
        clients.control.clone(),
        reload_errors,
        rules.resource.component.clone(),
        identity.clone(),
    );
    let shard = args.shard_index.zip(args.shard_count);
    let (renew_deadline, retry_period) = LeaseConfig::defaults(args.lease_duration);
    let lease = args.leader_elect.then(|| LeaseConfig {
        namespace: args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into()),
        name: args.lease_name.clone().unwrap_or_else(|| match shard {
            Some((i, _)) => format!("{}-shard-{i}", rules.resource.component),
            None => rules.resource.component.clone(),
        }),
        identity: identity.clone(),
        duration: args.lease_duration,
        renew_deadline: args.lease_renew_deadline.unwrap_or(renew_deadline),
        retry_period: args.lease_retry_period.unwrap_or(retry_period),
    });
    if let Some(lease) = &lease {
        lease.validate().map_err(k8s::Error::Settings)?;
    }
    let revisions_namespace = args
        .revisions_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|ns| !ns.is_empty());
    if revisions_namespace.is_none() {
        tracing::info!(
            "no --revisions-namespace (nor POD_NAMESPACE): rules revisions are kept in memory only, and resources pinned to an older revision follow the latest rules after a restart"
        );
    }
    let settings = Settings {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency.max(1),
        shard,
        instance: Some(identity),
        lease,
        watch_timeout: args.watch_timeout,
        cache_wait: args.cache_wait,
        audit_drain: args.audit_wait + Duration::from_secs(1),
        revisions: revisions_namespace.map(|namespace| k8s::revision_store::Config {
            namespace,
            rules_file: args.rules.clone(),
            overrides: args.set.clone(),
        }),
    };
    k8s::run(
        clients,
        handle,
        settings,
        metrics,
        audit,
        readiness,
        stopped(stop_rx),
    )
    .await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
