//! `berth token verify`: the verdict the registry would reach on a token, offline, with the
//! same explanation its WARN line gives. `berth auth explain`: which rule of the issuer's ACL
//! decides a scope for an account.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_auth::scope::{covers, Access};
use berth_server::auth::{now_secs, Mode};

/// A token given on the command line: `-` reads standard input, a path reads the file (a pod's
/// projected token), anything else is the token itself.
fn read_token(arg: &str) -> anyhow::Result<String> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the token from stdin")?;
        s
    } else if std::path::Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_owned()
    };
    Ok(text.trim().to_owned())
}

pub fn verify_cmd(
    config: Option<&std::path::Path>,
    token: &str,
    needs: &[String],
) -> anyhow::Result<ExitCode> {
    let token = read_token(token)?;
    let loaded = crate::tokens::load(config)?;
    let rt = crate::tokens::runtime()?;
    let auth = rt
        .block_on(berth_server::setup::auth(&loaded.config))
        .map_err(anyhow::Error::msg)?;
    let Mode::Token { verifier, jwks, .. } = &auth.mode else {
        bail!(
            "{} has no auth.token section: tokens are not used",
            loaded.source
        );
    };
    let mut verdict = verifier.verify(&token, now_secs());
    if let (Err(r), Some(j)) = (&verdict, jwks) {
        if r.reason == berth_auth::token::Reason::UnknownKey && rt.block_on(j.refresh(verifier)) {
            verdict = verifier.verify(&token, now_secs());
        }
    }
    match verdict {
        Err(r) => {
            outln!("{r}");
            Ok(ExitCode::FAILURE)
        }
        Ok(v) => {
            let access: Vec<String> = v.access.iter().map(|s| s.to_string()).collect();
            outln!(
                "token valid: sub={:?}, expires in {}s, access [{}]",
                v.subject,
                v.expires - now_secs(),
                access.join(" ")
            );
            let mut ok = true;
            for n in needs {
                let scope: berth_auth::scope::Scope =
                    n.parse().map_err(|e| anyhow::anyhow!("--needs {n}: {e}"))?;
                for action in &scope.actions {
                    let a = Access::new(&scope.typ, &scope.name, action);
                    let granted = covers(&v.access, &a);
                    ok &= granted;
                    outln!(
                        "  {}:{}:{} {}",
                        a.typ,
                        a.name,
                        a.action,
                        if granted { "granted" } else { "NOT granted" }
                    );
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The identity `berth auth explain` is asked about.
fn identity(
    (account, source, vars, groups): (String, String, Vec<String>, Vec<String>),
) -> anyhow::Result<berth_auth::identity::Identity> {
    let mut who = berth_auth::identity::Identity::new(account, source);
    for v in &vars {
        let Some((name, value)) = v.split_once('=') else {
            bail!("--var {v:?}: expected NAME=VALUE");
        };
        who.vars.insert(name.to_owned(), value.to_owned());
    }
    who.groups = groups;
    Ok(who)
}

/// `berth auth explain`: for each scope, the rule of `auth.issuer.acl` that decides it (the
/// first that applies) and what it grants, as the token endpoint would.
pub fn explain_cmd(
    config: Option<&std::path::Path>,
    account: Option<(String, String, Vec<String>, Vec<String>)>,
    external: Option<&str>,
    scopes: &[String],
) -> anyhow::Result<ExitCode> {
    let loaded = crate::tokens::load(config)?;
    let rt = crate::tokens::runtime()?;
    let auth = rt
        .block_on(berth_server::setup::auth(&loaded.config))
        .map_err(anyhow::Error::msg)?;
    let account = match external {
        None => account.map(identity).transpose()?,
        Some(path) => {
            let text = read_token(path)?;
            let Some(f) = auth.federation.issuer_of(&text) else {
                bail!("the token's issuer is not in auth.issuer.federated (or it is not a JWT)");
            };
            let who = rt
                .block_on(f.identify(&text, berth_server::auth::now_secs()))
                .map_err(|r| anyhow::anyhow!("{}", r.message))?;
            let vars: Vec<String> = who.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
            outln!(
                "identity: account {:?}, source {}, variables: {}",
                who.account,
                who.source,
                vars.join(" ")
            );
            Some(who)
        }
    };
    let account = account.as_ref();
    let Some(issuer) = &auth.issuer else {
        bail!(
            "{} has no auth.issuer section: there are no access rules",
            loaded.source
        );
    };
    let rules = &issuer.settings().acl;
    let who = account.map_or("anonymous".to_owned(), |a| {
        format!("account {:?} ({})", a.account, a.source)
    });
    let mut all_granted = true;
    for s in scopes {
        let scope: berth_auth::scope::Scope = s
            .parse()
            .map_err(|e: berth_auth::scope::ScopeError| anyhow::anyhow!("scope {s:?}: {}", e.0))?;
        let d = berth_auth::acl::decide(rules, account, &scope);
        let asked: Vec<&str> = scope.actions.iter().map(String::as_str).collect();
        let got: Vec<&str> = d
            .granted
            .as_ref()
            .map(|g| g.actions.iter().map(String::as_str).collect())
            .unwrap_or_default();
        all_granted &= got.len() == asked.len();
        let verdict = if got.is_empty() {
            "nothing granted".to_owned()
        } else {
            format!("granted {}", got.join(","))
        };
        match d.rule {
            None => outln!("{s}: {verdict} for {who}: no rule applies"),
            Some(i) => {
                let rule = serde_json::to_string(&rules[i]).unwrap_or_default();
                outln!("{s}: {verdict} for {who} by rule {} {rule}", i + 1);
            }
        }
    }
    Ok(if all_granted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
