//! `canary-analyzer`: serve the analyzer (`serve`), ask a running one (`status`,
//! `list`, `report`, `register`, `override`, `wait`), or check a policy offline
//! (`validate`).

use anyhow::Context;
use canary_analyzer::api::{self, AppState};
use canary_analyzer::auth::{self, Authenticator, ReloadTrigger};
use canary_analyzer::cli::{self, Client};
use canary_analyzer::engine::{self, Engine, SourceSettings, now_ms};
use canary_analyzer::ladder::Actor;
use canary_analyzer::notify::{Notifier, WebhookTarget};
use canary_analyzer::policy::RolloutPolicy;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "canary-analyzer",
    version,
    about = "Compares canary with control and walks the rollout ladder",
    after_help = format!("{EXAMPLES}\n\n{}", cli::exit::HELP)
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The examples `--help` shows before the exit codes ([`cli::exit::HELP`]).
const EXAMPLES: &str = "Examples:
  canary-analyzer serve --envoy-admin http://127.0.0.1:9901 --tokens-file tokens.csv
  canary-analyzer validate policy.yaml                 # offline, e.g. in a pull request
  canary-analyzer register policy.yaml --dry-run       # checked against the analyzer's source
  canary-analyzer register policy.yaml --start-held    # share 0 until `deployed`
  canary-analyzer deployed checkout                    # after the canary image is rolled out
  canary-analyzer approve checkout --reason \"dashboards look fine\"
  canary-analyzer wait checkout --timeout 3600         # blocks until promoted or rolled back
  canary-analyzer list                                 # one line per rollout
  canary-analyzer status checkout --watch
  canary-analyzer override checkout pause --reason \"looking at a dashboard\"
  canary-analyzer override checkout set-share --share 10 --reason \"more traffic\"

Client commands take --server from CANARY_ANALYZER_URL and --token from CANARY_ANALYZER_TOKEN.";

#[derive(Subcommand)]
enum Command {
    /// Run the analyzer: check rollouts, decide, serve the API and the filter's config.
    Serve(ServeArgs),
    /// Show one rollout (or all) with its latest comparison.
    Status {
        deployment: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        /// Print the API's JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every 2 s (ladder, requests per cohort, worst rows, last decisions)
        /// until Ctrl-C or the rollout ends (all rollouts, without DEPLOYMENT).
        #[arg(long)]
        watch: bool,
    },
    /// One line per rollout: deployment, phase, share, step and what comes next.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a policy file offline (no analyzer needed): exit 0 valid, 2 invalid.
    #[command(after_help = "Example:\n  canary-analyzer validate policy.yaml && echo valid")]
    Validate { policy: PathBuf },
    /// Print the latest comparison table of a rollout.
    Report {
        deployment: String,
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Register a rollout from a policy file (YAML).
    Register {
        policy: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
        /// Check the policy and the analyzer's metric source without registering:
        /// warns about metrics the source cannot read (PromQL ones without --prometheus).
        #[arg(long)]
        dry_run: bool,
        /// Who you say you are: kept in the audit log as a note beside the identity
        /// your token names (that identity, not this, is who registered).
        #[arg(long)]
        actor: Option<String>,
        /// Start held at share 0 (phase `pending`, every user on stable) until
        /// `canary-analyzer deployed DEPLOYMENT`: register, deploy the canary image,
        /// then mark it deployed, so no user reaches an image rejected earlier.
        #[arg(long)]
        start_held: bool,
    },
    /// Start a rollout registered with --start-held: the canary's image is deployed.
    /// Needs a pipeline or admin token, like register.
    #[command(after_help = "Example:
  canary-analyzer register policy.yaml --start-held
  kubectl set image deployment/checkout-canary app=\"$IMAGE\" && kubectl rollout status deployment/checkout-canary
  canary-analyzer deployed checkout && canary-analyzer wait checkout")]
    Deployed {
        deployment: String,
        /// Recorded in the audit log.
        #[arg(long, default_value = "canary image deployed")]
        reason: String,
        /// Who you say you are: kept in the audit log as a note beside your token's identity.
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve the promotion of a step whose policy says `approval: required`; the
    /// next clean check promotes. Needs an operator or admin token.
    #[command(after_help = "Example:
  canary-analyzer approve checkout --reason \"latency dashboards look fine\"")]
    Approve {
        deployment: String,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Who you say you are: kept in the audit log as a note beside your token's identity.
        #[arg(long, env = "USER")]
        actor: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Override a rollout: promote, rollback, pause, resume or set-share, with a reason.
    #[command(after_help = "Examples:
  canary-analyzer override checkout pause --reason \"looking at a dashboard\"
  canary-analyzer override checkout set-share --share 12.5 --reason \"more traffic\"
  canary-analyzer override checkout rollback --reason \"error budget\"")]
    Override {
        deployment: String,
        #[arg(value_enum)]
        action: OverrideKind,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Who you say you are: kept in the audit log as a note beside the identity
        /// your token names (that identity, not this, is who acted).
        #[arg(long, env = "USER")]
        actor: Option<String>,
        /// For set-share (and only for it): the canary share in percent, 0 to 100.
        #[arg(long)]
        share: Option<f64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Block until the rollout ends: exit 0 promoted, 1 rolled back, 3 --timeout
    /// passed, 4 analyzer unreachable or failing until then, 2 refused.
    ///
    /// Prints a line when the rollout moves (phase, step, share) and ends with the
    /// decision and its reason. Asks again after a transport error or a 5xx; an unknown
    /// deployment (404), a missing or wrong token (401) or another refusal exits 2 at once.
    #[command(after_help = "Example:
  canary-analyzer wait checkout --timeout 3600; case $? in 0) promote;; 1) echo rolled back;; *) page;; esac")]
    Wait {
        deployment: String,
        #[command(flatten)]
        server: ServerArgs,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3_600)]
        timeout: u64,
    },
}

/// The override actions. `pause` is the CLI's one word for stopping automatic
/// promotion (the status then reads `paused`); `hold` and `set_share` stay accepted.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OverrideKind {
    Promote,
    Rollback,
    #[value(alias = "hold")]
    Pause,
    Resume,
    #[value(alias = "set_share")]
    SetShare,
}

impl OverrideKind {
    fn api_name(self) -> &'static str {
        match self {
            OverrideKind::Promote => "promote",
            OverrideKind::Rollback => "rollback",
            OverrideKind::Pause => "pause",
            OverrideKind::Resume => "resume",
            OverrideKind::SetShare => "set_share",
        }
    }
}

#[derive(Args)]
struct ServerArgs {
    /// The analyzer's base URL.
    #[arg(long, env = "CANARY_ANALYZER_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token: your line of the analyzer's tokens file (or its single `--token`).
    /// Register needs a pipeline or admin token, override an operator or admin one,
    /// reads any (only when the analyzer runs with `--require-viewer`).
    #[arg(long, env = "CANARY_ANALYZER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds one request to the analyzer may take, connecting included; `wait`
    /// also cuts a request short at its own `--timeout`.
    #[arg(long, env = "CANARY_ANALYZER_REQUEST_TIMEOUT", default_value_t = cli::DEFAULT_REQUEST_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,
}

impl ServerArgs {
    fn client(&self) -> Client {
        Client::new(&self.server, self.token.clone()).with_request_timeout(Duration::from_secs(self.request_timeout))
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to serve the API (and the filter's config) on.
    #[arg(long, env = "CANARY_ANALYZER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Where the audit log and rollout state live; survives restarts.
    #[arg(long, env = "CANARY_ANALYZER_STATE_DIR", default_value = "canary-state")]
    state_dir: PathBuf,
    /// Policy files to register at start (skipped if the deployment's rollout is already known).
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// Envoy admin base URLs to scrape and sum (comma-separated or repeated).
    #[arg(long, env = "CANARY_ANALYZER_ENVOY_ADMIN", value_delimiter = ',', default_value = "http://127.0.0.1:9901")]
    envoy_admin: Vec<String>,
    /// Read metrics from this Prometheus server instead of Envoy admin endpoints.
    #[arg(long, env = "CANARY_ANALYZER_PROMETHEUS")]
    prometheus: Option<String>,
    /// Largest scrape or Prometheus answer read, in bytes (default 64 MiB); a bigger
    /// one fails that target or query for the check instead of filling memory.
    #[arg(
        long,
        env = "CANARY_ANALYZER_MAX_SCRAPE_BYTES",
        default_value_t = canary_analyzer::source::DEFAULT_MAX_BODY_BYTES,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_scrape_bytes: u64,
    /// Webhook targets for notifications, repeated (or space-separated in the
    /// environment): `FORMAT:EVENTS:URL`, `FORMAT:URL` or a bare URL (Slack-compatible).
    /// FORMAT: slack, teams, discord, google-chat or json. EVENTS: comma-separated among
    /// step, hold, stall, rollback, promotion, approval, or all (default: all but hold). A policy's
    /// own `notify` wins. Secrets: logged and shown only as `scheme://host/…#xxh3:<fingerprint>`.
    #[arg(long, env = "CANARY_ANALYZER_WEBHOOK", hide_env_values = true, value_delimiter = ' ')]
    webhook: Vec<String>,
    /// The analyzer's URL as people reach it (e.g. https://canary.example.com): notifications link
    /// to the rollout's dashboard page below it.
    #[arg(long, env = "CANARY_ANALYZER_PUBLIC_URL")]
    public_url: Option<String>,
    /// One shared bearer token: an `admin` identity named `token`. Without it or a
    /// tokens file, register and override are disabled. Must not be empty; leading and
    /// trailing whitespace (a newline from a file) is trimmed. Not with --tokens-file.
    #[arg(long, env = "CANARY_ANALYZER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Named identities, one `TOKEN,NAME,ROLE` line each (role viewer, pipeline,
    /// operator or admin); read again on SIGHUP and when the file changes. Not with --token.
    #[arg(long, env = "CANARY_ANALYZER_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Reads (status, report, audit, the dashboard) need a token of any role; the
    /// filter's `/config`, `/healthz` and `/metrics` stay open.
    #[arg(long, env = "CANARY_ANALYZER_REQUIRE_VIEWER")]
    require_viewer: bool,
    #[arg(long, env = "CANARY_ANALYZER_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    // Colour only for a person at a terminal: journald, `kubectl logs` and CI files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// With a tokens file: reload it on SIGHUP and when its content changes (polled
/// every [`auth::FILE_POLL_INTERVAL`]). Without one SIGHUP keeps its default action.
fn reload_tokens_on_change(auth: &Arc<Authenticator>) -> anyhow::Result<()> {
    if auth.file().is_none() {
        return Ok(());
    }
    tokio::spawn(Arc::clone(auth).watch_file(auth::FILE_POLL_INTERVAL));
    #[cfg(unix)]
    {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP (reloads the tokens file)")?;
        let auth = Arc::clone(auth);
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                // Logged and counted by `reload`; a bad file keeps the identities in force.
                let _ = auth.reload(ReloadTrigger::Signal);
            }
        });
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    // Checked before anything else: a blank token would open registration and overrides to anyone.
    let auth = Arc::new(Authenticator::from_settings(
        args.token.as_deref(),
        args.tokens_file.as_deref(),
        args.require_viewer,
    )?);
    reload_tokens_on_change(&auth)?;
    // Parsed here, not by clap: clap's error would print the whole URL.
    let targets = args
        .webhook
        .iter()
        .filter(|text| !text.trim().is_empty())
        .map(|text| WebhookTarget::parse(text, "--webhook / CANARY_ANALYZER_WEBHOOK"))
        .collect::<Result<Vec<_>, _>>()?;
    let webhook_shown = if targets.is_empty() {
        "none".to_string()
    } else {
        targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    };
    if let Some(url) = &args.public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        anyhow::bail!("--public-url / CANARY_ANALYZER_PUBLIC_URL = {url:?}: expected an http:// or https:// URL");
    }
    let source = match args.prometheus {
        Some(url) => SourceSettings::Prometheus { url, max_body_bytes: args.max_scrape_bytes },
        None => SourceSettings::EnvoyAdmin { admin_urls: args.envoy_admin, max_body_bytes: args.max_scrape_bytes },
    };
    let engine = Engine::open(&args.state_dir, source, Notifier::new(targets).with_public_url(args.public_url))
        .with_context(|| format!("opening the state directory {}", args.state_dir.display()))?;
    let engine = Arc::new(engine);
    for path in &args.policies {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))?;
        let policy = RolloutPolicy::from_yaml(&text).with_context(|| format!("policy {}", path.display()))?;
        if engine.config(&policy.deployment).is_some() {
            tracing::info!(deployment = %policy.deployment, "rollout already known; keeping its state");
            continue;
        }
        if engine.is_broken(&policy.deployment) {
            // Registering it would restart a rollout that may stand at any step from the first one.
            tracing::warn!(
                deployment = %policy.deployment, policy = %path.display(),
                "rollout's state file does not read back: not registered again from --policy; fix the file, or \
                 register it through the API"
            );
            continue;
        }
        engine
            .register(policy, Actor::Analyzer, now_ms())
            .await
            .with_context(|| format!("registering {}", path.display()))?;
    }
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %args.listen,
        overrides = auth.has_tokens(),
        identities = auth.identities(),
        tokens_file = %auth.file().map_or("none".into(), |p| p.display().to_string()),
        require_viewer = auth.requires_viewer(),
        webhook = %webhook_shown,
        "analyzer serving"
    );
    if !auth.has_tokens() {
        tracing::warn!(
            "no bearer token (--token / CANARY_ANALYZER_TOKEN or --tokens-file): registration and overrides are \
             refused with 403"
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let checks = tokio::spawn(engine::run_checks(Arc::clone(&engine), {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    }));
    let state = AppState { engine, auth };
    api::run(listener, state, async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    })
    .await
    .context("serving the API")?;
    let _ = checks.await;
    tracing::info!("analyzer stopped");
    Ok(())
}

/// The views of one `--watch` frame, and whether every rollout shown has ended.
async fn watch_views(client: &Client, deployment: Option<&str>) -> anyhow::Result<(Vec<String>, bool)> {
    let statuses = match deployment {
        Some(d) => vec![client.status(d).await?],
        None => client.list().await?,
    };
    let mut views = Vec::with_capacity(statuses.len());
    for status in &statuses {
        let audit = client.audit(&status.deployment).await?;
        views.push(cli::watch_view(status, &audit));
    }
    let finished = !statuses.is_empty() && statuses.iter().all(|s| s.state.is_finished());
    Ok((views, finished))
}

/// `status --watch`: redraws until Ctrl-C, the end of the rollout(s) or a closed
/// output. An analyzer that cannot be reached is shown in the frame and asked again
/// on the next tick.
async fn watch(client: &Client, deployment: Option<&str>) -> anyhow::Result<()> {
    let every = Duration::from_millis(u64::from(canary_analyzer::dashboard::REFRESH_MS));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let (views, finished) = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            answer = watch_views(client, deployment) => answer.unwrap_or_else(|e| (vec![format!("{e:#}")], false)),
        };
        cli::print_out(&cli::watch_frame(&views, now_ms()))?;
        if finished {
            return Ok(());
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => serve(args).await.map(|()| 0),
        Command::Status { deployment, server, watch: true, .. } => {
            watch(&server.client(), deployment.as_deref()).await.map(|()| 0)
        }
        Command::Status { deployment, server, json, watch: false } => {
            let client = server.client();
            let statuses = match deployment {
                Some(d) => vec![client.status(&d).await?],
                None => client.list().await?,
            };
            if json {
                cli::print_out(&format!("{}\n", serde_json::to_string_pretty(&statuses)?))?;
            } else if statuses.is_empty() {
                cli::print_out("no rollouts\n")?;
            } else {
                let texts: Vec<String> = statuses.iter().map(cli::status_text).collect();
                cli::print_out(&format!("{}\n", texts.join("\n\n")))?;
            }
            Ok(0)
        }
        Command::Report { deployment, server, json } => {
            let status = server.client().status(&deployment).await?;
            if json {
                cli::print_out(&format!("{}\n", serde_json::to_string_pretty(&status.rows)?))?;
            } else {
                cli::print_out(&cli::report_table(&status.rows, &status.row_rules))?;
            }
            Ok(0)
        }
        Command::List { server, json } => {
            let statuses = server.client().list().await?;
            if json {
                cli::print_out(&format!("{}\n", serde_json::to_string_pretty(&statuses)?))?;
            } else {
                cli::print_out(&cli::list_table(&statuses))?;
            }
            Ok(0)
        }
        Command::Validate { policy } => {
            let policy_text = read_policy(&policy)?;
            let policy = RolloutPolicy::from_yaml(&policy_text).with_context(|| format!("{}", policy.display()))?;
            cli::print_out(&format!("{}\n", cli::policy_summary(&policy)))?;
            Ok(0)
        }
        Command::Register { policy, server, dry_run: true, .. } => {
            let text = read_policy(&policy)?;
            let checked = RolloutPolicy::from_yaml(&text).with_context(|| format!("{}", policy.display()))?;
            let source = server.client().source().await?;
            for warning in cli::source_warnings(&checked, source) {
                cli::note(&format!("warning: {warning}"));
            }
            cli::print_out(&format!("{} (dry run: not registered)\n", cli::policy_summary(&checked)))?;
            Ok(0)
        }
        Command::Register { policy, server, actor, dry_run: false, start_held } => {
            let text = read_policy(&policy)?;
            print_recorded(server.client().register(text, actor.as_deref(), start_held)).await
        }
        Command::Override { deployment, action, reason, actor, share, server } => {
            check_share(action, share)?;
            let client = server.client();
            print_recorded(client.override_rollout(&deployment, action.api_name(), &reason, actor.as_deref(), share))
                .await
        }
        Command::Deployed { deployment, reason, actor, server } => {
            let client = server.client();
            print_recorded(client.override_rollout(&deployment, "deployed", &reason, actor.as_deref(), None)).await
        }
        Command::Approve { deployment, reason, actor, server } => {
            let client = server.client();
            print_recorded(client.override_rollout(&deployment, "approve", &reason, actor.as_deref(), None)).await
        }
        Command::Wait { deployment, server, timeout } => {
            // A closed output loses the progress, not the verdict (the exit code).
            let mut print = |line: &str| {
                let _ = cli::print_out(&format!("{line}\n"));
            };
            // Poll every 2 s: a pipeline gate needs seconds, not milliseconds.
            let every = Duration::from_secs(2);
            let end = server.client().wait(&deployment, Duration::from_secs(timeout), every, &mut print).await;
            if end.code != cli::exit::PROMOTED && end.code != cli::exit::ROLLED_BACK {
                cli::note(&format!("canary-analyzer: {}", end.message));
            }
            Ok(end.code)
        }
    }
}

/// A write's answer for people: who it was recorded as (stderr), then the rollout's line.
async fn print_recorded(
    write: impl std::future::Future<Output = anyhow::Result<cli::Recorded>>,
) -> anyhow::Result<i32> {
    let recorded = write.await?;
    cli::note(&recorded.identity_line());
    cli::print_out(&format!("{}\n", cli::progress_line(&recorded.status)))?;
    Ok(0)
}

/// The text of the policy file at `path`, or an error naming it.
fn read_policy(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the policy file {}", path.display()))
}

/// `--share` goes with `set-share` and nothing else, as a percentage: refused here,
/// by its flag, before anything is sent.
fn check_share(action: OverrideKind, share: Option<f64>) -> anyhow::Result<()> {
    match (action, share) {
        (OverrideKind::SetShare, Some(percent)) if !(0.0..=100.0).contains(&percent) => {
            anyhow::bail!("--share {percent}: expected a percentage from 0 to 100, e.g. --share 12.5")
        }
        (OverrideKind::SetShare, None) => anyhow::bail!("set-share needs --share PERCENT, e.g. --share 12.5"),
        (OverrideKind::SetShare, Some(_)) | (_, None) => Ok(()),
        (other, Some(_)) => anyhow::bail!("--share is for set-share only, not {}", other.api_name()),
    }
}

#[tokio::main]
async fn main() {
    let code = match run(Cli::parse()).await {
        Ok(code) => code,
        // Nobody reads the rest (`status | head`): a normal end, like any Unix filter's.
        Err(e) if e.downcast_ref::<cli::StdoutClosed>().is_some() => 0,
        Err(e) => {
            cli::note(&format!("canary-analyzer: {e:#}"));
            cli::exit::for_error(&e)
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action_of(args: &[&str]) -> Result<OverrideKind, clap::Error> {
        let args = ["canary-analyzer", "override", "checkout"].iter().chain(args).chain(&["--reason", "r"]);
        match Cli::try_parse_from(args)?.command {
            Command::Override { action, .. } => Ok(action),
            _ => unreachable!("parsed as override"),
        }
    }

    /// What `--help` prints for `args`.
    fn help_of(args: &[&str]) -> String {
        match Cli::try_parse_from(["canary-analyzer"].iter().chain(args)) {
            Err(help) => help.to_string(),
            Ok(_) => panic!("{args:?} printed no help"),
        }
    }

    #[test]
    fn pause_is_the_one_word_and_hold_still_works() {
        assert!(action_of(&["pause"]).is_ok_and(|a| a == OverrideKind::Pause));
        assert!(action_of(&["hold"]).is_ok_and(|a| a == OverrideKind::Pause), "hold is an alias");
        assert!(action_of(&["set_share"]).is_ok_and(|a| a == OverrideKind::SetShare), "set_share is an alias");
        assert_eq!(OverrideKind::Pause.api_name(), "pause");
        let help = help_of(&["override", "--help"]);
        assert!(help.contains("pause") && !help.contains("hold"), "{help}");
    }

    #[test]
    fn share_is_checked_by_its_flag() {
        let refusal = |action, share| check_share(action, share).unwrap_err().to_string();
        assert_eq!(refusal(OverrideKind::SetShare, None), "set-share needs --share PERCENT, e.g. --share 12.5");
        assert_eq!(
            refusal(OverrideKind::SetShare, Some(150.0)),
            "--share 150: expected a percentage from 0 to 100, e.g. --share 12.5"
        );
        assert_eq!(refusal(OverrideKind::Pause, Some(5.0)), "--share is for set-share only, not pause");
        assert!(check_share(OverrideKind::SetShare, Some(12.5)).is_ok());
        assert!(check_share(OverrideKind::Rollback, None).is_ok());
    }

    #[test]
    fn help_ends_with_examples_and_exit_codes() {
        let help = help_of(&["--help"]);
        assert!(help.contains("Examples:\n  canary-analyzer serve"), "{help}");
        assert!(help.contains("canary-analyzer validate policy.yaml"), "{help}");
        assert!(help.ends_with(&format!("{}\n", cli::exit::HELP)), "{help}");
        for command in ["list", "validate", "wait", "register", "override"] {
            assert!(help.contains(&format!("  {command} ")), "{command} listed: {help}");
        }
    }
}
