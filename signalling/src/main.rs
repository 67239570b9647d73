//! `consult`: runs the signalling server and administers clinics, staff and invites.
//! The admin commands write to the same store as the server (SQLite file or Redis), so
//! they work whether or not the server is running.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use axum_server::tls_rustls::RustlsConfig;
use clap::{Parser, Subcommand};
use protocol::{ClinicId, CreateClinic, CreateStaff, IssueInvite, Role, StaffId};
use rand::distr::{Alphanumeric, SampleString};
use signalling::config::{Config, Overrides};
use signalling::server::{self, AppState};
use signalling::service::Service;
use tracing_subscriber::EnvFilter;

/// The actor recorded in the audit log for command-line changes.
fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

#[derive(Debug, Parser)]
#[command(
    name = "consult",
    version,
    about = "Virtual clinics: waiting rooms and video consultations"
)]
struct Cli {
    /// A config file (see infra/consult.toml); CONSULT_* environment variables win over it.
    #[arg(long, global = true, env = "CONSULT_CONFIG")]
    config: Option<PathBuf>,
    /// Redis URL: use the Redis store (several instances). Absent: single node.
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// Where the single-node mode keeps its database.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the signalling server.
    Serve {
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The address people use, for links.
        #[arg(long)]
        public_url: Option<String>,
        /// Create (or reuse) a demo clinic with a receptionist, a clinician and an admin,
        /// give them fresh passwords, and print the links and sign-ins.
        #[arg(long)]
        demo: bool,
    },
    /// Clinics: `clinic add`, `clinic list`.
    #[command(subcommand)]
    Clinic(ClinicCmd),
    /// Staff: `staff add`, `staff list`.
    #[command(subcommand)]
    Staff(StaffCmd),
    /// Issue a personal invite link for one patient to one clinic.
    Invite {
        clinic: ClinicId,
        /// An appointment reference shown to staff.
        #[arg(long)]
        appointment: Option<String>,
        /// How long the link stays valid, in hours.
        #[arg(long, default_value_t = 24)]
        valid_hours: u64,
    },
    /// Print the newest entries of the audit log.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ClinicCmd {
    /// Create or update a clinic.
    Add {
        id: ClinicId,
        #[arg(long)]
        name: String,
        /// Let anyone with the clinic's link enter (otherwise invites only).
        #[arg(long)]
        open_link: bool,
    },
    List,
}

#[derive(Debug, Subcommand)]
enum StaffCmd {
    /// Create or update a member of staff. Prints a generated password unless
    /// --password-stdin is given.
    Add {
        username: StaffId,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A clinic they work in (repeat for several).
        #[arg(long = "clinic")]
        clinics: Vec<ClinicId>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    List,
    /// End every sign-in of a member of staff (their open pages are signed out within
    /// seconds).
    SignOut {
        username: StaffId,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "admin" => Ok(Role::Admin),
        "reception" => Ok(Role::Reception),
        "clinician" => Ok(Role::Clinician),
        _ => Err("one of: admin, reception, clinician".into()),
    }
}

fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 16)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (listen, public_url) = match &cli.command {
        Cmd::Serve {
            listen, public_url, ..
        } => (*listen, public_url.clone()),
        _ => (None, None),
    };
    let overrides = Overrides {
        listen,
        redis_url: cli.redis_url.clone(),
        data_dir: cli.data_dir.clone(),
        public_url,
    };
    let mut config = Config::load(cli.config.as_deref(), &overrides)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    // The server listens before anything else, so that the links it prints (and a
    // derived public_url) carry the port it really has.
    let listener = match &cli.command {
        Cmd::Serve { .. } => {
            let listener = sfu::server::listen(config.listen)
                .and_then(tokio::net::TcpListener::from_std)
                .with_context(|| format!("listening on {}", config.listen))?;
            config.listening_on(listener.local_addr()?);
            Some(listener)
        }
        _ => None,
    };

    let store = signalling::open_store(&config)
        .await
        .context("opening the store")?;
    let service = signalling::service(&config, store)
        .await
        .context("loading the token secret")?;
    let actor = cli_actor();

    match cli.command {
        Cmd::Serve { demo, .. } => {
            if demo {
                demo_setup(&service, &actor).await?;
            }
            let media = signalling::open_media(&config, service.store().clone())
                .await
                .context("starting the media service")?;
            let listener = listener.context("serve binds its listener first")?;
            serve(config, listener, service.with_media(media)).await?;
        }
        Cmd::Clinic(ClinicCmd::Add {
            id,
            name,
            open_link,
        }) => {
            let c = service
                .create_clinic(
                    &actor,
                    CreateClinic {
                        id,
                        name,
                        open_link,
                    },
                )
                .await?;
            println!(
                "clinic {} \"{}\" (open link {})",
                c.id,
                c.name,
                if c.open_link { "on" } else { "off" }
            );
            if c.open_link {
                println!("patient link: {}", service.clinic_link(&c.id));
            }
        }
        Cmd::Clinic(ClinicCmd::List) => {
            for c in service.store().clinics().await? {
                println!(
                    "{}\t{}\topen link {}",
                    c.id,
                    c.name,
                    if c.open_link { "on" } else { "off" }
                );
            }
        }
        Cmd::Staff(StaffCmd::Add {
            username,
            name,
            role,
            clinics,
            password_stdin,
        }) => {
            let (password, generated) = if password_stdin {
                let mut p = String::new();
                std::io::stdin().read_to_string(&mut p)?;
                (p.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                (new_password(), true)
            };
            let req = CreateStaff {
                username,
                display_name: name,
                role,
                clinics,
                password: password.clone(),
            };
            let s = service.create_staff(&actor, req).await?;
            println!(
                "staff {} ({:?}) in [{}]",
                s.username,
                s.role,
                join(&s.clinics)
            );
            if generated {
                println!("password: {password}");
            }
        }
        Cmd::Staff(StaffCmd::SignOut { username }) => {
            let n = service.end_sessions_of(&actor, &username).await?;
            println!("ended {n} sign-in(s) of {username}");
        }
        Cmd::Staff(StaffCmd::List) => {
            for s in service.store().staff_list().await? {
                println!(
                    "{}\t{}\t{:?}\t[{}]",
                    s.username,
                    s.display_name,
                    s.role,
                    join(&s.clinics)
                );
            }
        }
        Cmd::Invite {
            clinic,
            appointment,
            valid_hours,
        } => {
            if valid_hours == 0 {
                bail!("--valid-hours must be at least 1");
            }
            let req = IssueInvite {
                clinic,
                appointment,
                appointment_at: None,
                valid_for_secs: Some(valid_hours.saturating_mul(3600)),
            };
            let inv = service.issue_invite(&actor, req).await?;
            println!("{}", inv.url);
        }
        Cmd::Audit { limit } => {
            for e in service.store().audit_tail(limit).await? {
                println!("{}", serde_json::to_string(&e)?);
            }
        }
    }
    Ok(())
}

fn join(clinics: &[ClinicId]) -> String {
    clinics
        .iter()
        .map(ClinicId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    service: Service,
) -> anyhow::Result<()> {
    let mode = if config.redis().is_some() {
        "redis"
    } else {
        "single node"
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mode, public_url = %config.public_url, "serving");
    let service = service
        .with_password_checks(
            config.password_checks,
            std::time::Duration::from_millis(config.password_wait_ms),
        )
        .with_anonymous_audit_per_minute(config.anonymous_audit_per_minute);
    // Sign-in through the identity provider: its redirect URL follows the real
    // public_url. Discovery starts now but is not waited for: consult serves (local
    // sign-in, /readyz) whether or not the provider answers, and asks it again when a
    // sign-in needs it.
    let service = match config.oidc()? {
        Some(oidc) => {
            let oidc = std::sync::Arc::new(oidc);
            let first = oidc.clone();
            tokio::spawn(async move {
                if let Err(e) = first.client().await {
                    tracing::error!(error = %e, "the identity provider is not available yet; staff can sign in with passwords meanwhile");
                }
            });
            service.with_oidc(oidc)
        }
        None => service,
    };
    let mut state = AppState::new(service, config.limits())
        .with_trusted_proxies(config.trusted_proxies.clone())
        .with_metrics_token(&config.metrics_token);
    if let Some(dir) = config.web_root() {
        if !dir.is_dir() {
            bail!(
                "web_root {} is not a directory (leave it empty to serve the pages built into the binary)",
                dir.display()
            );
        }
        tracing::info!(web_root = %dir.display(), "serving the pages from disk");
        state = state.with_web_root(dir.to_owned());
    } else {
        server::prepare_pages();
    }
    match config.tls() {
        None => {
            // For scripts and tests that start the server on port 0.
            println!("consult: listening on {addr}");
            server::run(listener, state, shutdown_signal()).await?;
        }
        Some((cert, key)) => {
            let tls = RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "reading the certificate and key (tls_cert {}, tls_key {})",
                        cert.display(),
                        key.display()
                    )
                })?;
            tokio::spawn(reload_on_sighup(
                tls.clone(),
                cert.to_owned(),
                key.to_owned(),
            ));
            println!("consult: listening on {addr} (https)");
            server::run_tls(listener, state, tls, shutdown_signal()).await?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reads the certificate and key again on every SIGHUP: new connections get the new
/// certificate, open ones go on. A pair that does not load is refused, and the
/// certificate in use kept.
async fn reload_on_sighup(tls: RustlsConfig, cert: PathBuf, key: PathBuf) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: the certificate will not be reloaded");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match tls.reload_from_pem_file(&cert, &key).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "SIGHUP: certificate reloaded");
                println!("consult: certificate reloaded");
            }
            Err(e) => tracing::error!(
                cert = %cert.display(),
                key = %key.display(),
                error = %e,
                "SIGHUP: the certificate and key did not load; still serving the previous one"
            ),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The demo: one open clinic and three accounts with fresh passwords, printed.
async fn demo_setup(service: &Service, actor: &str) -> anyhow::Result<()> {
    let clinic = ClinicId::parse("demo")?;
    service
        .create_clinic(
            actor,
            CreateClinic {
                id: clinic.clone(),
                name: "Demo clinic".into(),
                open_link: true,
            },
        )
        .await?;
    let accounts = [
        ("reception", "Rita Reception", Role::Reception),
        ("clinician", "Dr Chris Clinician", Role::Clinician),
        ("admin", "Ada Admin", Role::Admin),
    ];
    let mut lines = Vec::new();
    for (user, name, role) in accounts {
        let password = new_password();
        let clinics = if role == Role::Admin {
            vec![]
        } else {
            vec![clinic.clone()]
        };
        let req = CreateStaff {
            username: StaffId::parse(user)?,
            display_name: name.into(),
            role,
            clinics,
            password: password.clone(),
        };
        service.create_staff(actor, req).await?;
        lines.push(format!("  {user:<10} password {password}"));
    }
    let invite = service
        .issue_invite(
            actor,
            IssueInvite {
                clinic: clinic.clone(),
                appointment: Some("DEMO-1".into()),
                appointment_at: None,
                valid_for_secs: None,
            },
        )
        .await?;
    let url = service.public_url();
    println!("\nDemo clinic ready.\n");
    println!(
        "Patient link (open clinic):   {}",
        service.clinic_link(&clinic)
    );
    println!("Patient invite (one patient, 24 hours): {}", invite.url);
    println!("Staff sign-in:                {url}/staff");
    println!("Staff accounts (passwords are new on every --demo start):");
    for l in lines {
        println!("{l}");
    }
    println!("\nTry the API:");
    println!("  curl -s {url}/api/clinics/demo");
    println!(
        "  curl -s -XPOST {url}/api/visits -H 'content-type: application/json' -d '{{\"entry\":{{\"kind\":\"open_link\",\"clinic\":\"demo\"}},\"name\":\"Pat Example\"}}'"
    );
    println!();
    Ok(())
}
