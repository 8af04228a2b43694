//! `registry`: the same binary under distribution's command name (a symlink or copy called
//! `registry`, as the container image and the release archive provide) takes distribution's
//! command line, so `registry serve CONFIG`, `registry garbage-collect [-d] [-m] [-q] CONFIG`,
//! `registry --version` and the cron jobs and `docker exec` lines written for them work
//! unchanged. The flags are distribution's (v3.1; v2.8 has the same without `-q`), spelled
//! as its command library accepts them: short or long, in any order around the config path,
//! and `--flag=true|false`.
//!
//! `registry garbage-collect` runs as [`crate::gc::Mode::AsDistribution`]: offline when the
//! configuration makes the storage read-only, online with the grace period otherwise.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};

/// The command name that selects this command line.
const NAME: &str = "registry";

#[derive(Parser)]
#[command(
    name = "registry",
    about = "`registry`: Berth under distribution's command line",
    disable_version_flag = true
)]
struct Registry {
    /// show the version and exit
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Each boolean flag is parsed as distribution's command library does: `-d`, `--dry-run`,
/// `--dry-run=true`, `--dry-run=false`.
#[derive(Subcommand)]
enum Command {
    /// `serve` stores and distributes Docker images
    Serve {
        /// The configuration file (default: $REGISTRY_CONFIGURATION_PATH, then Berth's search).
        #[arg(value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
    /// `garbage-collect` deletes layers not referenced by any manifests
    GarbageCollect {
        /// The configuration file (default: as for serve).
        #[arg(value_name = "CONFIG")]
        config: Option<PathBuf>,
        /// do everything except remove the blobs
        #[arg(short = 'd', long, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false",
              value_parser = BoolishValueParser::new())]
        dry_run: bool,
        /// delete manifests that are not currently referenced via tag
        #[arg(short = 'm', long, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false",
              value_parser = BoolishValueParser::new())]
        delete_untagged: bool,
        /// silence output
        #[arg(short = 'q', long, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false",
              value_parser = BoolishValueParser::new())]
        quiet: bool,
    },
}

/// Whether `argv0` names the `registry` command (by its file name, whatever the directory).
fn is_registry(argv0: &OsString) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == NAME || n == "registry.exe")
}

/// What distribution's container image entrypoint does before running `registry`: a first
/// argument that is a YAML file is the configuration to serve (`docker run IMAGE
/// /etc/distribution/config.yml`), so `registry` can be the image's entrypoint with the
/// config as its command, and `docker run IMAGE garbage-collect CONFIG` works too.
fn image_entrypoint(mut args: Vec<OsString>) -> Vec<OsString> {
    let is_yaml = args.get(1).is_some_and(|a| {
        let a = a.to_string_lossy();
        a.ends_with(".yml") || a.ends_with(".yaml")
    });
    if is_yaml {
        args.insert(1, OsString::from("serve"));
    }
    args
}

/// Runs distribution's command line when the binary was started as `registry`; `None`
/// otherwise (Berth's own command line follows).
pub fn run_if_named_registry() -> Option<ExitCode> {
    let argv0 = std::env::args_os().next()?;
    if !is_registry(&argv0) {
        return None;
    }
    let cli = Registry::parse_from(image_entrypoint(std::env::args_os().collect()));
    let result = match cli.command {
        _ if cli.version => {
            // distribution prints its name, its module and its version.
            outln!("registry berth v{}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        None => {
            // As distribution: no command prints the usage and succeeds.
            use clap::CommandFactory as _;
            outln!("{}", Registry::command().render_help());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve { config }) => crate::serve::serve(config.as_deref()),
        Some(Command::GarbageCollect {
            config,
            dry_run,
            delete_untagged,
            quiet,
        }) => crate::gc::garbage_collect(crate::gc::Args {
            config: config.as_deref(),
            dry_run,
            delete_untagged,
            mode: crate::gc::Mode::AsDistribution,
            quiet,
            grace: None,
            short_grace: false,
            progress_every: std::time::Duration::from_secs(2),
        }),
    };
    Some(crate::exit_code(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Registry {
        Registry::try_parse_from(std::iter::once("registry").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn gc_flags(args: &[&str]) -> (Option<PathBuf>, bool, bool, bool) {
        match parse(args).command {
            Some(Command::GarbageCollect {
                config,
                dry_run,
                delete_untagged,
                quiet,
            }) => (config, dry_run, delete_untagged, quiet),
            _ => panic!("{args:?}: not garbage-collect"),
        }
    }

    #[test]
    fn garbage_collect_takes_distributions_flags() {
        let cfg = Some(PathBuf::from("/etc/distribution/config.yml"));
        let c = "/etc/distribution/config.yml";
        assert_eq!(
            gc_flags(&["garbage-collect", c]),
            (cfg.clone(), false, false, false)
        );
        for args in [
            &["garbage-collect", "-d", "-m", "-q", c][..],
            &["garbage-collect", "-dmq", c],
            &[
                "garbage-collect",
                c,
                "--dry-run",
                "--delete-untagged",
                "--quiet",
            ],
            &["garbage-collect", "--dry-run=true", c, "-m", "--quiet=1"],
        ] {
            assert_eq!(gc_flags(args), (cfg.clone(), true, true, true), "{args:?}");
        }
        assert_eq!(
            gc_flags(&["garbage-collect", "--dry-run=false", "-m", c]),
            (cfg.clone(), false, true, false)
        );
        assert!(
            Registry::try_parse_from(["registry", "garbage-collect", "--offline", c]).is_err(),
            "Berth's own flags are not distribution's"
        );
    }

    #[test]
    fn version_serve_and_names() {
        assert!(parse(&["-v"]).version && parse(&["--version"]).version);
        assert!(matches!(
            parse(&["serve", "/c.yml"]).command,
            Some(Command::Serve { config: Some(p) }) if p == Path::new("/c.yml")
        ));
        assert!(parse(&[]).command.is_none());
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            image_entrypoint(args(&["registry", "/etc/distribution/config.yml"])),
            args(&["registry", "serve", "/etc/distribution/config.yml"])
        );
        for unchanged in [
            &["registry", "garbage-collect", "/c.yaml"][..],
            &["registry", "serve", "/c.yml"],
            &["registry", "-v"],
            &["registry"],
        ] {
            assert_eq!(image_entrypoint(args(unchanged)), args(unchanged));
        }
        for (name, yes) in [
            ("registry", true),
            ("/usr/local/bin/registry", true),
            ("./registry", true),
            ("berth", false),
            ("/bin/registry-tool", false),
        ] {
            assert_eq!(is_registry(&OsString::from(name)), yes, "{name}");
        }
    }
}
