//! `berth`: the command line. Thin by design: parse arguments, load the configuration, start
//! logging, hand over to `berth_server`. Errors are printed with their whole chain and map to
//! exit code 1 (2 for usage errors, from clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod keys;
mod logging;
mod serve;
mod token;

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
enum ConfigCommand {
    /// Report every problem in the configuration and print the effective config with secrets redacted.
    Check(ConfigArg),
}

/// The config file: positional (as `registry serve /etc/distribution/config.yml`) or `--config`.
/// Without either: `$BERTH_CONFIG`, `/etc/distribution/config.yml`, `/etc/docker/registry/config.yml`.
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `berth config check`: every problem at once, then the effective configuration.
fn config_check(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let code = match berth_server::config::load(path, std::env::vars()) {
        Ok(loaded) => {
            println!("# configuration: {}", loaded.source);
            for w in &loaded.warnings {
                println!("# warning: {w}");
            }
            for u in &loaded.unsupported {
                println!("# not supported yet: {u}");
            }
            let yaml = loaded.config.redacted_yaml();
            println!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "berth: the configuration has {} problem(s):",
                e.problems.len()
            );
            for p in &e.problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
    };
    Ok(code)
}
