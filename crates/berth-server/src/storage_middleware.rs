//! distribution's storage middleware (`middleware.storage`), which only ever changes where a
//! blob download is redirected (`RedirectURL`): each entry wraps what is listed before it, the
//! first one wraps the driver.
//!
//! - `redirect` (`baseurl`): every download is a 307 to `scheme://host[/basepath]` + the
//!   object's storage path (`/docker/registry/v2/blobs/sha256/…/data`), on any driver.
//! - `cloudfront` (`baseurl`, `privatekey`, `keypairid`, `duration`): a 307 to `baseurl` + the
//!   object's S3 key, signed for CloudFront ([`berth_auth::cloudfront`]). Only directly over
//!   the S3 driver, as in distribution; anywhere else it passes the request on to what it
//!   wraps. `ipfilteredby: aws|awsregion` would send clients inside AWS straight to S3, using
//!   AWS's published IP ranges; Berth does not fetch them, which is what distribution does
//!   while it cannot fetch them: every download goes through CloudFront (one WARN at start).
//! - `rewrite` (`scheme`, `host`, `trimpathprefix`; distribution 3): rewrites the URL of what
//!   it wraps (a presigned S3 URL, another middleware's URL). Where that gives no URL (the
//!   filesystem), nothing is redirected (distribution would send a URL with no path).
//!
//! `storage.redirect.disable: true` turns all of them off, as in distribution. distribution
//! ships no registry or repository middleware: any such entry, like an unknown storage
//! middleware name, refuses to start.

use std::sync::Arc;
use std::time::Duration;

use berth_auth::cloudfront::UrlSigner;
use berth_registry::blobs::Redirect;
use berth_storage::{StorageDriver, StorageError};
use serde_yaml::Value;

use crate::config::schema::Middleware;
use crate::config::Config;

/// The storage middleware distribution ships.
pub const KNOWN: [&str; 3] = ["redirect", "cloudfront", "rewrite"];

/// distribution's default `duration` of a CloudFront URL.
const DEFAULT_DURATION: Duration = Duration::from_secs(20 * 60);

/// One storage middleware, read from its entry.
#[derive(Debug, Clone)]
enum Spec {
    Redirect {
        /// `scheme://host[:port]`
        origin: String,
        base_path: String,
    },
    CloudFront {
        base_url: String,
        private_key: String,
        key_pair_id: String,
        duration: Duration,
        /// `ipfilteredby` asks for AWS IP filtering (not done: see the module comment).
        ip_filter: Option<String>,
    },
    Rewrite {
        scheme: String,
        host: String,
        trim_path_prefix: String,
    },
}

enum Layer {
    Redirect {
        origin: String,
        base_path: String,
    },
    CloudFront {
        base_url: String,
        signer: Arc<UrlSigner>,
        duration: Duration,
    },
    Rewrite {
        scheme: String,
        host: String,
        trim_path_prefix: String,
    },
    /// A `cloudfront` not directly over S3: it passes requests through.
    Through,
}

/// The configured storage middleware, innermost first.
pub struct Chain {
    layers: Vec<Layer>,
    /// distribution's `S3BucketKey`: the S3 root directory (without slashes at its end);
    /// `None` when the driver is not S3.
    s3_root: Option<String>,
}

fn string_option(m: &Middleware, key: &str) -> Result<Option<String>, String> {
    match m.options.as_ref().and_then(|o| o.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

/// A duration option as distribution reads it: a string is a Go duration, anything else
/// leaves the default.
fn duration_option(m: &Middleware, key: &str) -> Result<Option<Duration>, String> {
    match m.options.as_ref().and_then(|o| o.get(key)) {
        Some(Value::String(s)) => crate::config::parse_duration(s)
            .map(Some)
            .map_err(|e| format!("invalid {key}: {e}")),
        _ => Ok(None),
    }
}

/// `scheme://[userinfo@]host[:port][/path][?query]` → (`scheme://host[:port]`, path), as Go's
/// `url.Parse` reads a base URL; the scheme and host are required.
fn split_url(u: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = u.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let tail = &rest[end..];
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    Some((scheme.to_owned(), host.to_owned(), path.to_owned()))
}

fn parse(m: &Middleware) -> Result<Spec, String> {
    match m.name.as_str() {
        "redirect" => {
            let b = string_option(m, "baseurl")?.ok_or("no baseurl provided")?;
            let (scheme, host, path) = split_url(&b)
                .filter(|(s, ..)| !s.is_empty())
                .ok_or("no scheme specified for redirect baseurl")?;
            if host.is_empty() {
                return Err("no host specified for redirect baseurl".to_owned());
            }
            Ok(Spec::Redirect {
                origin: format!("{}://{host}", scheme.to_ascii_lowercase()),
                base_path: path,
            })
        }
        "cloudfront" => {
            let mut base_url = string_option(m, "baseurl")?.ok_or("no baseurl provided")?;
            if !base_url.contains("://") {
                base_url = format!("https://{base_url}");
            }
            if !base_url.ends_with('/') {
                base_url.push('/');
            }
            let private_key = string_option(m, "privatekey")?.ok_or("no privatekey provided")?;
            let key_pair_id = string_option(m, "keypairid")?.ok_or("no keypairid provided")?;
            let duration = duration_option(m, "duration")?.unwrap_or(DEFAULT_DURATION);
            duration_option(m, "updatefrequency")?;
            duration_option(m, "updatefrenquency")?;
            string_option(m, "iprangesurl")?;
            let filter = match m.options.as_ref().and_then(|o| o.get("ipfilteredby")) {
                None => String::new(),
                Some(Value::String(s)) => s.trim().to_ascii_lowercase(),
                Some(_) => {
                    return Err(
                        "ipfilteredby only allows a string with the following value: none|aws|awsregion"
                            .to_owned(),
                    )
                }
            };
            let ip_filter =
                match filter.as_str() {
                    "" | "none" => None,
                    "aws" => Some("aws".to_owned()),
                    "awsregion" => {
                        match m.options.as_ref().and_then(|o| o.get("awsregion")) {
                            Some(Value::String(r)) => Some(format!("awsregion ({})", r.trim())),
                            Some(_) => return Err(
                                "awsregion must be a comma separated string of valid aws regions"
                                    .to_owned(),
                            ),
                            None => return Err("awsregion is not defined".to_owned()),
                        }
                    }
                    _ => return Err(
                        "ipfilteredby only allows a string the following value: none|aws|awsregion"
                            .to_owned(),
                    ),
                };
            Ok(Spec::CloudFront {
                base_url,
                private_key,
                key_pair_id,
                duration,
                ip_filter,
            })
        }
        "rewrite" => Ok(Spec::Rewrite {
            scheme: string_option(m, "scheme")?.unwrap_or_default(),
            host: string_option(m, "host")?.unwrap_or_default(),
            trim_path_prefix: string_option(m, "trimpathprefix")?.unwrap_or_default(),
        }),
        other => Err(format!(
            "no storage middleware registered with name: {other} (there are {})",
            KNOWN.join(", ")
        )),
    }
}

/// Problems of the `middleware` section, by location, for the configuration check: what
/// makes distribution refuse to start (it panics with "unable to configure … middleware").
pub fn problems(c: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (point, list) in c.middleware.iter().flatten() {
        for (i, m) in list.iter().enumerate() {
            let at = format!("middleware.{point}[{i}]");
            match point.as_str() {
                "storage" => {
                    if let Err(e) = parse(m) {
                        out.push((at, format!("unable to configure storage middleware ({}): {e}", m.name)));
                    }
                }
                "registry" | "repository" => out.push((
                    format!("{at}.name"),
                    format!(
                        "no {point} middleware registered with name: {} (distribution ships none; such middleware is compiled into a custom distribution build)",
                        m.name
                    ),
                )),
                // distribution reads the section as a map and looks at these three only.
                _ => {}
            }
        }
    }
    out
}

/// The storage middleware of the configuration, ready to decide redirects; `None` when there
/// is none (or redirects are disabled). Reads the CloudFront key files.
pub fn chain(c: &Config) -> Result<Option<Arc<Chain>>, String> {
    let entries: Vec<&Middleware> = c
        .middleware
        .as_ref()
        .and_then(|m| m.get("storage"))
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    if entries.is_empty() {
        return Ok(None);
    }
    if c.storage.redirect.disable {
        tracing::info!("storage.redirect.disable is set: the storage middleware redirects nothing, as in distribution");
        return Ok(None);
    }
    let s3_root = c.storage.s3.as_ref().map(|s3| {
        s3.rootdirectory
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned()
    });
    let mut layers = Vec::new();
    for (i, m) in entries.into_iter().enumerate() {
        let at = format!("middleware.storage[{i}] ({})", m.name);
        if m.disabled {
            tracing::warn!("{at} has disabled: true: Berth skips it (distribution applies storage middleware whatever disabled says)");
            continue;
        }
        let spec = parse(m).map_err(|e| format!("{at}: {e}"))?;
        let layer = match spec {
            Spec::Redirect { origin, base_path } => Layer::Redirect { origin, base_path },
            Spec::Rewrite {
                scheme,
                host,
                trim_path_prefix,
            } => Layer::Rewrite {
                scheme,
                host,
                trim_path_prefix,
            },
            Spec::CloudFront {
                base_url,
                private_key,
                key_pair_id,
                duration,
                ip_filter,
            } => {
                let pem = std::fs::read_to_string(&private_key).map_err(|e| {
                    format!("{at}: failed to read privatekey file {private_key}: {e}")
                })?;
                let signer = UrlSigner::from_pem(&key_pair_id, &pem)
                    .map_err(|e| format!("{at}: privatekey {private_key}: {e}"))?;
                if let Some(f) = ip_filter {
                    tracing::warn!("{at}: ipfilteredby: {f} is not applied: Berth does not fetch AWS's IP ranges, so every download goes through CloudFront, as distribution does while it cannot fetch them");
                }
                if layers.is_empty() && s3_root.is_some() {
                    tracing::info!(baseurl = %base_url, duration_s = duration.as_secs(), "blob downloads redirected to CloudFront");
                    Layer::CloudFront {
                        base_url,
                        signer: Arc::new(signer),
                        duration,
                    }
                } else {
                    tracing::warn!("{at} signs S3 keys, so it works only as the first storage middleware over S3 storage (as in distribution); here it passes downloads on to what it wraps");
                    Layer::Through
                }
            }
        };
        layers.push(layer);
    }
    Ok(Some(Arc::new(Chain { layers, s3_root })))
}

/// `u` with `rewrite`'s changes (Go's `url.Parse`, set, `String`, on what a driver returns).
fn rewrite(u: &str, scheme: &str, host: &str, trim: &str) -> String {
    let Some((old_scheme, rest)) = u.split_once("://") else {
        return u.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, query) = tail.split_at(path_end);
    let scheme = if scheme.is_empty() {
        old_scheme
    } else {
        scheme
    };
    let authority = if host.is_empty() { authority } else { host };
    let path = if trim.is_empty() {
        path
    } else {
        path.strip_prefix(trim).unwrap_or(path)
    };
    format!("{scheme}://{authority}{path}{query}")
}

#[async_trait::async_trait]
impl Redirect for Chain {
    async fn redirect_url(
        &self,
        driver: &dyn StorageDriver,
        path: &str,
    ) -> Result<Option<String>, StorageError> {
        // From the outermost layer inwards until one makes the URL; the rewrites passed on
        // the way then apply to it, innermost first.
        let mut rewrites = Vec::new();
        let mut made = None;
        for layer in self.layers.iter().rev() {
            match layer {
                Layer::Redirect { origin, base_path } => {
                    let joined = if base_path.is_empty() {
                        path.to_owned()
                    } else {
                        format!(
                            "/{}/{}",
                            base_path.trim_matches('/'),
                            path.trim_start_matches('/')
                        )
                        .replacen("//", "/", 1)
                    };
                    made = Some(format!("{origin}{joined}"));
                    break;
                }
                Layer::CloudFront {
                    base_url,
                    signer,
                    duration,
                } => {
                    let root = self.s3_root.as_deref().unwrap_or("");
                    let key = format!("{root}{path}");
                    let expires = (std::time::SystemTime::now() + *duration)
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let url = format!("{base_url}{}", key.trim_start_matches('/'));
                    let signed = signer.sign(&url, expires).map_err(|e| StorageError::Io {
                        path: path.to_owned(),
                        source: std::io::Error::other(e),
                    })?;
                    made = Some(signed);
                    break;
                }
                Layer::Rewrite {
                    scheme,
                    host,
                    trim_path_prefix,
                } => rewrites.push((scheme, host, trim_path_prefix)),
                Layer::Through => {}
            }
        }
        let url = match made {
            Some(u) => Some(u),
            None => driver.redirect_url(path).await?,
        };
        Ok(url.map(|u| {
            rewrites
                .iter()
                .rev()
                .fold(u, |u, (s, h, t)| rewrite(&u, s, h, t))
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mw(name: &str, yaml: &str) -> Middleware {
        Middleware {
            name: name.to_owned(),
            disabled: false,
            options: serde_yaml::from_str(yaml).unwrap(),
        }
    }

    #[test]
    fn options_are_read_as_distribution_reads_them() {
        let Spec::Redirect { origin, base_path } = parse(&mw(
            "redirect",
            "baseurl: HTTPS://u:p@cdn.example:8443/base/?x=1",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (origin.as_str(), base_path.as_str()),
            ("https://cdn.example:8443", "/base/")
        );
        for (yaml, err) in [
            ("{}", "no baseurl provided"),
            ("baseurl: 3", "baseurl must be a string"),
            ("baseurl: example.com", "no scheme specified"),
            ("baseurl: 'http:///x'", "no host specified"),
        ] {
            assert!(
                parse(&mw("redirect", yaml)).unwrap_err().contains(err),
                "{yaml}"
            );
        }
        let cf = "baseurl: d1.cloudfront.net\nprivatekey: /k.pem\nkeypairid: K1\n";
        let Spec::CloudFront {
            base_url,
            duration,
            ip_filter,
            ..
        } = parse(&mw("cloudfront", cf)).unwrap()
        else {
            panic!()
        };
        assert_eq!(base_url, "https://d1.cloudfront.net/");
        assert_eq!(duration, DEFAULT_DURATION);
        assert_eq!(ip_filter, None);
        let Spec::CloudFront {
            duration,
            ip_filter,
            ..
        } = parse(&mw(
            "cloudfront",
            &format!(
                "{cf}duration: 3000s\nipfilteredby: AWSRegion\nawsregion: us-east-1, us-west-2\n"
            ),
        ))
        .unwrap()
        else {
            panic!()
        };
        assert_eq!(duration, Duration::from_secs(3000));
        assert!(ip_filter.unwrap().contains("us-east-1"));
        // An integer duration leaves the default, as in distribution.
        let Spec::CloudFront { duration, .. } =
            parse(&mw("cloudfront", &format!("{cf}duration: 3000\n"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(duration, DEFAULT_DURATION);
        for (extra, err) in [
            ("duration: soon\n", "invalid duration"),
            ("ipfilteredby: everyone\n", "none|aws|awsregion"),
            ("ipfilteredby: awsregion\n", "awsregion is not defined"),
        ] {
            assert!(
                parse(&mw("cloudfront", &format!("{cf}{extra}")))
                    .unwrap_err()
                    .contains(err),
                "{extra}"
            );
        }
        assert!(parse(&mw("cloudfront", "baseurl: x\nkeypairid: K\n"))
            .unwrap_err()
            .contains("no privatekey"));
        assert!(parse(&mw("cloudfrnt", "{}"))
            .unwrap_err()
            .contains("no storage middleware registered with name: cloudfrnt"));
    }

    #[test]
    fn rewrite_changes_scheme_host_and_path_and_keeps_the_query() {
        let u = "http://127.0.0.1:9000/bucket/docker/registry/v2/blobs/data?X-Amz-Signature=ab%2Fc";
        assert_eq!(
            rewrite(u, "https", "cdn.example", "/bucket"),
            "https://cdn.example/docker/registry/v2/blobs/data?X-Amz-Signature=ab%2Fc"
        );
        assert_eq!(rewrite(u, "", "", ""), u);
        assert_eq!(rewrite(u, "", "", "/other"), u);
    }

    async fn url(layers: Vec<Layer>, path: &str) -> Option<String> {
        let chain = Chain {
            layers,
            s3_root: None,
        };
        let driver = berth_storage::InMemoryDriver::new();
        chain.redirect_url(&driver, path).await.unwrap()
    }

    #[tokio::test]
    async fn layers_compose_innermost_first() {
        let path = "/docker/registry/v2/blobs/sha256/ab/abcd/data";
        let redirect = || Layer::Redirect {
            origin: "https://a.example".into(),
            base_path: "/base/".into(),
        };
        let rw = || Layer::Rewrite {
            scheme: "http".into(),
            host: "b.example:81".into(),
            trim_path_prefix: "/base".into(),
        };
        assert_eq!(
            url(vec![redirect()], path).await.unwrap(),
            format!("https://a.example/base{path}")
        );
        assert_eq!(
            url(vec![redirect(), rw()], path).await.unwrap(),
            format!("http://b.example:81{path}")
        );
        // A rewrite below a redirect does nothing; over a driver without URLs, no redirect.
        assert_eq!(
            url(vec![rw(), redirect()], path).await.unwrap(),
            format!("https://a.example/base{path}")
        );
        assert_eq!(url(vec![rw()], path).await, None);
        assert_eq!(url(vec![Layer::Through], path).await, None);
    }
}
