//! `berth tokens create|list|revoke`: robot tokens in the configured storage, so every replica
//! sees them, or in the file `auth.issuer.robottokens` names (`berth_server::robots`). The
//! secret is printed once, on stdout; only its hash is stored.

use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_auth::scope::Scope;
use berth_server::robots::Records;

/// `90d`, `12h`, `30m`, `45s`, or a bare number of seconds.
fn duration_secs(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = n.parse().with_context(|| format!("--expires {s:?}"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("--expires {s:?}: unknown unit {other:?} (s, m, h, d)"),
    };
    n.checked_mul(unit)
        .filter(|v| *v > 0)
        .with_context(|| format!("--expires {s:?} is out of range"))
}

/// The configuration, or every problem it has in one error.
pub(crate) fn load(
    config: Option<&std::path::Path>,
) -> anyhow::Result<berth_server::config::Loaded> {
    berth_server::config::load(config, std::env::vars()).map_err(|e| {
        anyhow::anyhow!(
            "the configuration has problems:\n  {}",
            e.problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })
}

/// Where the configuration keeps robot tokens: `auth.issuer.robottokens`, else the storage.
async fn records(config: &berth_server::config::Config) -> anyhow::Result<Records> {
    let file = config
        .auth
        .as_ref()
        .and_then(|a| a.issuer.as_ref())
        .and_then(|i| i.robottokens.clone());
    Ok(match file {
        Some(f) => Records::File(f.into()),
        None => Records::Storage(crate::gc::open_driver(config).await?.0),
    })
}

/// A runtime for one command's storage or network calls.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn create_cmd(
    config: Option<&std::path::Path>,
    account: &str,
    scopes: &[String],
    expires: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let loaded = load(config)?;
    if loaded
        .config
        .auth
        .as_ref()
        .is_none_or(|a| a.issuer.is_none())
    {
        bail!(
            "{} has no auth.issuer section: robot tokens are presented to Berth's token endpoint",
            loaded.source
        );
    }
    if account.is_empty() {
        bail!("--account must name the account the token acts as");
    }
    let scopes: Vec<Scope> = scopes
        .iter()
        .map(|s| {
            s.parse().map_err(|e: berth_auth::scope::ScopeError| {
                anyhow::anyhow!("--scope {s:?}: {}", e.0)
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let now = berth_server::auth::now_secs();
    let expires = expires.map(duration_secs).transpose()?.map(|d| now + d);
    let (token, secret) =
        berth_auth::robot::mint(account, &scopes, expires, now).map_err(anyhow::Error::msg)?;
    runtime()?.block_on(async {
        let records = records(&loaded.config).await?;
        records
            .save(&token)
            .await
            .map_err(|e| anyhow::anyhow!("storing the token in {}: {e}", records.describe()))
    })?;
    eprintln!(
        "token {} for account {account:?}, scopes {}, {}; the secret follows, shown only now:",
        token.id,
        token.scopes.join(" "),
        match expires {
            Some(e) => format!(
                "expires at {e} (Unix seconds, in {} days)",
                (e - now) / 86_400
            ),
            None => "never expires".to_owned(),
        }
    );
    outln!("{secret}");
    Ok(ExitCode::SUCCESS)
}

pub fn list_cmd(config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let loaded = load(config)?;
    let tokens = runtime()?.block_on(async {
        let records = records(&loaded.config).await?;
        records
            .list()
            .await
            .map_err(|e| anyhow::anyhow!("listing the tokens in {}: {e}", records.describe()))
    })?;
    let now = berth_server::auth::now_secs();
    for t in tokens {
        let state = match t.expires {
            Some(e) if e <= now => "expired",
            _ => "valid",
        };
        outln!(
            "{}\t{}\t{}\t{}\t{}",
            t.id,
            t.account,
            t.scopes.join(" "),
            t.expires.map_or("never".to_owned(), |e| e.to_string()),
            state
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn revoke_cmd(config: Option<&std::path::Path>, id: &str) -> anyhow::Result<ExitCode> {
    let loaded = load(config)?;
    let id = id.trim();
    if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{id:?} is not a token id (24 hex digits, as berth tokens list shows)");
    }
    let (found, records) = runtime()?.block_on(async {
        let records = records(&loaded.config).await?;
        let found = records
            .revoke(id)
            .await
            .map_err(|e| anyhow::anyhow!("revoking the token in {}: {e}", records.describe()))?;
        anyhow::Ok((found, records))
    })?;
    if !found {
        bail!("no token {id}");
    }
    match records {
        Records::Storage(_) => eprintln!(
            "token {id} revoked: every replica refuses it within {} s",
            berth_server::robots::RECHECK.as_secs()
        ),
        Records::File(p) => eprintln!(
            "token {id} revoked in {}: a replica reading this file refuses it at once; replicas \
             with their own copy (a Secret, say) refuse it once they see the new version",
            p.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
