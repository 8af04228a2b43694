//! `berth`: the command line. Thin by design: parse arguments, load the configuration, start
//! logging, hand over to `berth_server`. Errors are printed with their whole chain and map to
//! exit code 1 (2 for usage errors, from clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` that ends the process quietly when stdout is closed early (`berth config check |
/// head`) instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod compat_cli;
mod gc;

/// How every command reports a configuration it cannot use.
pub(crate) fn print_problems(e: &berth_server::config::ConfigError) {
    eprintln!(
        "berth: the configuration has {} problem(s):",
        e.problems.len()
    );
    for p in &e.problems {
        eprintln!("  {p}");
    }
}
mod keys;
mod logging;
mod serve;
mod token;
mod tokens;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "An OCI distribution registry, compatible with distribution's config and storage layout"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API (with no config file found: filesystem storage in ./berth-data on 127.0.0.1:5000).
    Serve(ConfigArg),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Token signing keys: generate them, or print the JWKS of existing ones.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Bearer tokens: check one offline against the configuration.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Robot tokens: secrets that log in as an account at the issuer's token endpoint,
    /// limited to some scopes, stored hashed in the configured storage.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The built-in issuer's access rules.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Delete blobs no manifest references (and with -m, manifests no tag reaches), as
    /// distribution's `registry garbage-collect`. Safe while the registry serves pushes: content
    /// written or touched within the grace period is kept. Deletions are listed on stdout,
    /// progress and a summary on stderr.
    GarbageCollect(GcArgs),
}

#[derive(clap::Args)]
struct GcArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// List what would be deleted; delete nothing.
    #[arg(short = 'd', long)]
    dry_run: bool,
    /// Also delete manifests that no tag points at, unless a kept index lists them or they
    /// refer (subject) to a kept manifest.
    #[arg(short = 'm', long)]
    delete_untagged: bool,
    /// Print only warnings and errors (not the deletions, progress or summary).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The registry is stopped or read-only: no grace period, everything unreferenced goes.
    #[arg(long, conflicts_with = "grace")]
    offline: bool,
    /// Keep what was written or touched this recently (default: storage.maintenance.gc.grace,
    /// else 1h; at least 15m).
    #[arg(long, value_name = "DURATION")]
    grace: Option<String>,
    /// Tests only: allow a grace period shorter than 15 minutes.
    #[arg(long, hide = true)]
    unsafe_short_grace: bool,
    /// Seconds between progress lines on stderr.
    #[arg(long, hide = true, default_value_t = 2.0)]
    progress_every: f64,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a signing key (token.key, mode 0600), its self-signed certificate (token.crt, for
    /// a registry's auth.token.rootcertbundle) and jwks.json to a directory.
    Generate {
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// ES256 (P-256) or RS256 (RSA-2048).
        #[arg(long, default_value = "ES256")]
        algorithm: String,
        /// The certificate's common name.
        #[arg(long, default_value = "berth token signer")]
        cn: String,
        /// The certificate's validity.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Print a JWKS (kid = libtrust key ID, with x5c) for certificates, public or private keys,
    /// and each key's IDs on stderr.
    Jwks {
        /// PEM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Verify a token as the registry would and say why it is or is not accepted.
    Verify {
        /// The configuration (as for serve).
        #[arg(long, value_name = "CONFIG")]
        config: Option<PathBuf>,
        /// Scopes the token must grant, e.g. repository:team/app:pull,push (repeatable).
        #[arg(long = "needs", value_name = "SCOPE")]
        needs: Vec<String>,
        /// The token, or - to read it from stdin (keeps it out of the process list).
        token: String,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token; its secret is printed once, on stdout.
    Create {
        /// The configuration (as for serve).
        #[arg(long, value_name = "CONFIG")]
        config: Option<PathBuf>,
        /// The account the token logs in as (the ACL decides what it may do).
        #[arg(long, value_name = "NAME")]
        account: String,
        /// What the token may be granted at most, e.g. 'repository:app/*:push,pull' (repeatable).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Lifetime: 90d, 12h, 30m; without it the token does not expire.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List the tokens (id, account, scopes, expiry): never their secrets.
    List {
        #[arg(long, value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
    /// Revoke a token: every replica refuses it within seconds.
    Revoke {
        #[arg(long, value_name = "CONFIG")]
        config: Option<PathBuf>,
        /// The token's id (berth tokens list).
        id: String,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Which rule of auth.issuer.acl decides each scope for an account, and what it grants.
    /// Exit 0 when every action asked for is granted, 1 otherwise.
    Explain {
        /// The configuration (as for serve).
        #[arg(long, value_name = "CONFIG")]
        config: Option<PathBuf>,
        /// The account; without it, an anonymous request.
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// The identity source the account comes from: password (the issuer's accounts),
        /// robot_token, ldap, or a federated issuer's name.
        #[arg(long, value_name = "SOURCE", default_value = "password")]
        source: String,
        /// A variable of the identity, e.g. namespace=build or claims.repository=octo/app
        /// (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// A group the account is a member of (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// A federated issuer's token (the token, a file such as a pod's projected token, or -
        /// for standard input): verified as the token endpoint would, and the identity it
        /// proves explained instead of --account.
        #[arg(long, value_name = "TOKEN", conflicts_with = "account")]
        token: Option<String>,
        /// Scopes as clients ask for them, e.g. repository:team/app:pull,push (repeatable).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every problem in the configuration and print the effective config with secrets redacted.
    Check(ConfigArg),
}

/// The config file: positional (as `registry serve /etc/distribution/config.yml`) or `--config`.
/// Without either: `$BERTH_CONFIG`, `$REGISTRY_CONFIGURATION_PATH`, `/etc/distribution/config.yml`,
/// `/etc/docker/registry/config.yml`.
#[derive(clap::Args)]
struct ConfigArg {
    /// Path of the configuration file.
    #[arg(value_name = "CONFIG")]
    path: Option<PathBuf>,
    /// Path of the configuration file (same as the positional argument).
    #[arg(long = "config", value_name = "CONFIG", conflicts_with = "path")]
    flag: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref().or(self.flag.as_deref())
    }
}

fn main() -> ExitCode {
    if let Some(code) = compat_cli::run_if_named_registry() {
        return code;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(arg) => serve::serve(arg.path()),
        Command::Config {
            command: ConfigCommand::Check(arg),
        } => config_check(arg.path()),
        Command::Keys {
            command:
                KeysCommand::Generate {
                    out,
                    algorithm,
                    cn,
                    days,
                },
        } => keys::generate_cmd(&out, &algorithm, &cn, days).map(|()| ExitCode::SUCCESS),
        Command::Keys {
            command: KeysCommand::Jwks { files },
        } => keys::jwks_cmd(&files).map(|()| ExitCode::SUCCESS),
        Command::Token {
            command:
                TokenCommand::Verify {
                    config,
                    needs,
                    token,
                },
        } => token::verify_cmd(config.as_deref(), &token, &needs),
        Command::Tokens {
            command:
                TokensCommand::Create {
                    config,
                    account,
                    scopes,
                    expires,
                },
        } => tokens::create_cmd(config.as_deref(), &account, &scopes, expires.as_deref()),
        Command::Tokens {
            command: TokensCommand::List { config },
        } => tokens::list_cmd(config.as_deref()),
        Command::Tokens {
            command: TokensCommand::Revoke { config, id },
        } => tokens::revoke_cmd(config.as_deref(), &id),
        Command::Auth {
            command:
                AuthCommand::Explain {
                    config,
                    account,
                    source,
                    vars,
                    groups,
                    token: external,
                    scopes,
                },
        } => token::explain_cmd(
            config.as_deref(),
            account.map(|a| (a, source, vars, groups)),
            external.as_deref(),
            &scopes,
        ),
        Command::GarbageCollect(a) => gc::garbage_collect(gc::Args {
            config: a.config.path(),
            dry_run: a.dry_run,
            delete_untagged: a.delete_untagged,
            mode: if a.offline {
                gc::Mode::Offline
            } else {
                gc::Mode::Online
            },
            quiet: a.quiet,
            grace: a.grace.as_deref(),
            short_grace: a.unsafe_short_grace,
            progress_every: std::time::Duration::from_secs_f64(
                a.progress_every.clamp(0.05, 3600.0),
            ),
        }),
    };
    exit_code(result)
}

/// The exit code of a command's result, with the whole error chain printed.
pub(crate) fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `berth config check`: every problem at once, then the effective configuration. Keys
/// neither distribution 2.8 nor 3.x knows do not stop `berth serve` (distribution ignores them
/// too) but fail the check, so a typo does not go unnoticed.
fn config_check(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let code = match berth_server::config::load(path, std::env::vars()) {
        Ok(loaded) => {
            outln!("# configuration: {}", loaded.source);
            for w in &loaded.warnings {
                outln!("# warning: {w}");
            }
            for u in &loaded.unsupported {
                outln!("# not supported yet: {u}");
            }
            let yaml = loaded.config.redacted_yaml();
            outln!("{yaml}");
            if loaded.unknown.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "berth: the configuration has {} unknown key(s); `berth serve` starts and ignores them, as distribution does:",
                    loaded.unknown.len()
                );
                for u in &loaded.unknown {
                    eprintln!("  {u}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            crate::print_problems(&e);
            ExitCode::FAILURE
        }
    };
    Ok(code)
}
