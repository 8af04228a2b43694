//! Manifest media types, parsing and the validation a registry owes its clients before it
//! stores a manifest: OCI image manifest and index (including artifact manifests with
//! `artifactType` and an empty config), Docker schema2 manifest and manifest list. Schema1 is
//! refused. The bytes are never re-serialized: the caller stores what the client sent, and
//! the digest is of those bytes; parsing only extracts what validation and the referrers API
//! need.
//!
//! The documents are read with the `oci-spec` crate's `ImageManifest` and `ImageIndex`. It has
//! no Docker types, but Docker's schema2 manifest and manifest list are the formats OCI's were
//! made from, with the same field names and shapes, so the same structs read them; what differs
//! (Docker requires `mediaType`) is checked here.
//!
//! Two entry points: [`parse_put`] applies distribution's rules for a client's PUT (the
//! `Content-Type` must be a manifest type the registry stores and agree with the body), and
//! [`parse`] reads content already accepted or fetched from an upstream, trusting the body's
//! own `mediaType` first. [`Rules`] holds the configurable part (`validation.manifests`):
//! which foreign layer URLs are admitted and which children of an index must exist.

use std::collections::BTreeMap;

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ErrorCode, OciError};

/// The largest manifest Berth accepts (distribution's limit as well).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";
/// A Docker layer that clients download from its `urls`, never from a registry.
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI's non-distributable layers (deprecated in image-spec 1.1, still pushed by old tools
/// for Windows base layers) all start with this.
const OCI_NONDISTRIBUTABLE_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";

/// The manifest kinds Berth stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

impl MediaType {
    /// The kind a media type names, ignoring parameters such as `; charset=utf-8`.
    pub fn parse(s: &str) -> Option<MediaType> {
        let base = s.split(';').next().unwrap_or("").trim();
        match base {
            OCI_MANIFEST => Some(MediaType::OciManifest),
            OCI_INDEX => Some(MediaType::OciIndex),
            DOCKER_MANIFEST => Some(MediaType::DockerManifest),
            DOCKER_MANIFEST_LIST => Some(MediaType::DockerManifestList),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::OciManifest => OCI_MANIFEST,
            MediaType::OciIndex => OCI_INDEX,
            MediaType::DockerManifest => DOCKER_MANIFEST,
            MediaType::DockerManifestList => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, MediaType::OciIndex | MediaType::DockerManifestList)
    }

    fn is_docker(self) -> bool {
        matches!(
            self,
            MediaType::DockerManifest | MediaType::DockerManifestList
        )
    }
}

/// A content descriptor as the referrers API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The platform an index entry is for, as `validation.manifests.indexes.platformlist` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

/// A manifest an index names.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub digest: Digest,
    pub platform: Option<Platform>,
}

/// A layer that names `urls` to download it from, or a Docker foreign layer (which must).
#[derive(Debug, Clone, PartialEq)]
pub struct UrlLayer {
    pub digest: Digest,
    pub media_type: String,
    pub urls: Vec<String>,
}

/// What the registry must know about a manifest it is asked to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestInfo {
    pub media_type: MediaType,
    /// `artifactType`, or for an image manifest without one, the config's media type (the
    /// value the referrers API reports).
    pub artifact_type: Option<String>,
    /// The manifest this one refers to (referrers API).
    pub subject: Option<Digest>,
    pub annotations: Option<BTreeMap<String, String>>,
    /// Blobs that must exist in the repository: the config, and every layer except a
    /// non-distributable or foreign one that names its `urls`.
    pub blobs: Vec<Digest>,
    /// Layers with `urls` (and Docker foreign layers), for [`Rules::check_urls`].
    pub url_layers: Vec<UrlLayer>,
    /// An index's entries.
    pub children: Vec<Child>,
    /// An image manifest's config media type (for [`ManifestInfo::class`]).
    pub config_media_type: Option<String>,
}

/// Docker's image config, the `image` class in both manifest formats' terms.
const DOCKER_IMAGE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's plugin config: the `plugin` class (Docker manifests only).
const DOCKER_PLUGIN_CONFIG: &str = "application/vnd.docker.plugin.v1+json";
const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

impl ManifestInfo {
    /// distribution's resource class (`policy.repository.classes`): `image` or `plugin` by the
    /// config's media type; `None` for an index (no class). `Err` carries a config type
    /// with no class, which distribution refuses when classes are configured. As in
    /// distribution, a Docker image config inside an OCI manifest has no class.
    pub fn class(&self) -> Result<Option<&'static str>, &str> {
        let Some(config) = self.config_media_type.as_deref() else {
            return Ok(None);
        };
        match (self.media_type, config) {
            (MediaType::DockerManifest, DOCKER_IMAGE_CONFIG) => Ok(Some("image")),
            (MediaType::DockerManifest, DOCKER_PLUGIN_CONFIG) => Ok(Some("plugin")),
            (MediaType::OciManifest, OCI_IMAGE_CONFIG) => Ok(Some("image")),
            _ => Err(config),
        }
    }
}

fn invalid(msg: impl Into<String>) -> OciError {
    OciError::with_message(ErrorCode::ManifestInvalid, msg)
}

fn too_large(body: &[u8]) -> Result<(), OciError> {
    if body.len() > MAX_MANIFEST_SIZE {
        return Err(OciError::with_message(
            ErrorCode::ManifestTooLarge,
            format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"),
        ));
    }
    Ok(())
}

const SCHEMA1_REFUSED: &str = "schema1 manifests are not supported; push a schema2 or OCI manifest";

/// The top-level fields that tell the kind of a document before it is read as one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    config: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
    manifests: Option<serde::de::IgnoredAny>,
    // Present only in schema1.
    fs_layers: Option<serde::de::IgnoredAny>,
    signatures: Option<serde::de::IgnoredAny>,
}

fn head(body: &[u8]) -> Result<Head, OciError> {
    let h: Head = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    let v1 = h.schema_version.as_ref().and_then(|v| v.as_i64()) == Some(1);
    if h.fs_layers.is_some() || h.signatures.is_some() || v1 {
        return Err(invalid(SCHEMA1_REFUSED));
    }
    if h.schema_version.as_ref().and_then(|v| v.as_i64()) != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    Ok(h)
}

/// The media type of a `Content-Type` header, as Go's `mime.ParseMediaType` (which
/// distribution uses) reads it: lower-cased, parameters dropped but required to be
/// well-formed. `None` when the header is not a media type at all.
fn content_type_base(ct: &str) -> Option<String> {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut parts = ct.split(';');
    let base = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let (ty, sub) = base.split_once('/')?;
    if !is_token(ty) || !is_token(sub) {
        return None;
    }
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, v) = p.split_once('=')?;
        let v = v.trim();
        let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
        if !is_token(k.trim()) || !(quoted || is_token(v)) {
            return None;
        }
    }
    Some(base)
}

/// Parses and validates a manifest a client PUTs with `content_type`, as distribution does:
/// the `Content-Type` must be one of the four manifest types the registry stores (a missing
/// or other one is refused: distribution reads such a body as schema1, which it no longer
/// stores), and a `mediaType` in the body must be that same type (Docker's formats require
/// it; OCI's make it optional).
pub fn parse_put(body: &[u8], content_type: Option<&str>) -> Result<ManifestInfo, OciError> {
    too_large(body)?;
    let Some(ct) = content_type.filter(|c| !c.trim().is_empty()) else {
        return Err(invalid(format!(
            "a manifest PUT needs a Content-Type: one of {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"
        )));
    };
    let Some(base) = content_type_base(ct) else {
        return Err(invalid(format!(
            "Content-Type {ct:?} is not a valid media type"
        )));
    };
    if base == DOCKER_SCHEMA1 || base == DOCKER_SCHEMA1_SIGNED {
        return Err(invalid(SCHEMA1_REFUSED));
    }
    let Some(media_type) = MediaType::parse(&base) else {
        return Err(invalid(format!(
            "Content-Type {base:?} is not a manifest media type this registry stores ({OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST})"
        )));
    };
    let h = head(body)?;
    match h.media_type.as_deref() {
        Some(d) if d != media_type.as_str() => {
            return Err(invalid(format!(
                "manifest mediaType {d:?} does not match Content-Type {base:?}"
            )))
        }
        None if media_type.is_docker() => {
            return Err(invalid(format!("a {base} must declare its mediaType")))
        }
        _ => {}
    }
    read(body, media_type, &h)
}

/// Reads a manifest that is already stored, or fetched from an upstream with
/// `content_type`: its kind is its `mediaType`, else a known `content_type`, else what its
/// shape shows (OCI allows omitting `mediaType`).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ManifestInfo, OciError> {
    too_large(body)?;
    if content_type
        .and_then(content_type_base)
        .is_some_and(|b| b == DOCKER_SCHEMA1 || b == DOCKER_SCHEMA1_SIGNED)
    {
        return Err(invalid(SCHEMA1_REFUSED));
    }
    let h = head(body)?;
    let media_type = match h.media_type.as_deref() {
        Some(d) => MediaType::parse(d)
            .ok_or_else(|| invalid(format!("unsupported manifest media type {d:?}")))?,
        None => match content_type.and_then(MediaType::parse) {
            Some(m) if !m.is_docker() => m,
            _ if h.manifests.is_some() => MediaType::OciIndex,
            _ if h.config.is_some() => MediaType::OciManifest,
            _ => return Err(invalid("cannot tell the manifest's media type")),
        },
    };
    if media_type.is_docker() && h.media_type.is_none() {
        return Err(invalid("docker manifests must declare mediaType"));
    }
    read(body, media_type, &h)
}

fn digest_of(d: &oci_spec::image::Digest) -> Result<Digest, OciError> {
    d.as_ref()
        .parse()
        .map_err(|e| invalid(format!("descriptor digest {:?}: {e}", d.as_ref())))
}

/// The digest of a manifest's `subject`, if it names one.
fn subject_of(subject: &Option<oci_spec::image::Descriptor>) -> Result<Option<Digest>, OciError> {
    subject.as_ref().map(|s| digest_of(s.digest())).transpose()
}

fn serde_invalid(e: serde_json::Error) -> OciError {
    invalid(format!(
        "manifest does not match its media type's schema: {e}"
    ))
}

/// Reads `body` as a document of `media_type` with oci-spec.
fn read(body: &[u8], media_type: MediaType, h: &Head) -> Result<ManifestInfo, OciError> {
    let mut info = ManifestInfo {
        media_type,
        artifact_type: None,
        subject: None,
        annotations: None,
        blobs: Vec::new(),
        url_layers: Vec::new(),
        children: Vec::new(),
        config_media_type: None,
    };
    if media_type.is_index() {
        if h.config.is_some() || h.layers.is_some() {
            return Err(invalid("an index has no config or layers"));
        }
        if h.manifests.is_none() {
            return Err(invalid("an index needs a manifests array"));
        }
        let index: ImageIndex = serde_json::from_slice(body).map_err(serde_invalid)?;
        info.artifact_type = index.artifact_type().as_ref().map(|t| t.to_string());
        info.subject = subject_of(index.subject())?;
        info.annotations = index.annotations().clone().map(|a| a.into_iter().collect());
        for d in index.manifests() {
            info.children.push(Child {
                digest: digest_of(d.digest())?,
                platform: d.platform().as_ref().map(|p| Platform {
                    os: p.os().to_string(),
                    architecture: p.architecture().to_string(),
                }),
            });
        }
        return Ok(info);
    }
    if h.manifests.is_some() {
        return Err(invalid("an image manifest has no manifests array"));
    }
    if h.config.is_none() {
        return Err(invalid("an image manifest needs a config descriptor"));
    }
    if h.layers.is_none() {
        return Err(invalid("an image manifest needs a layers array"));
    }
    let m: ImageManifest = serde_json::from_slice(body).map_err(serde_invalid)?;
    info.artifact_type = Some(
        m.artifact_type()
            .as_ref()
            .unwrap_or(m.config().media_type())
            .to_string(),
    );
    info.subject = subject_of(m.subject())?;
    info.annotations = m.annotations().clone().map(|a| a.into_iter().collect());
    info.config_media_type = Some(m.config().media_type().to_string());
    info.blobs.push(digest_of(m.config().digest())?);
    for layer in m.layers() {
        let digest = digest_of(layer.digest())?;
        let media_type = layer.media_type().to_string();
        let urls = layer.urls().clone().unwrap_or_default();
        // Only a layer meant to be fetched elsewhere may be absent from the registry: a
        // distributable layer that also names mirrors must still be pushed (distribution's
        // rule too).
        let elsewhere = media_type == DOCKER_FOREIGN_LAYER
            || media_type.starts_with(OCI_NONDISTRIBUTABLE_PREFIX);
        if !elsewhere || urls.is_empty() {
            info.blobs.push(digest.clone());
        }
        if !urls.is_empty() || media_type == DOCKER_FOREIGN_LAYER {
            info.url_layers.push(UrlLayer {
                digest,
                media_type,
                urls,
            });
        }
    }
    Ok(info)
}

/// The media type of a manifest that was validated when it was stored: its `mediaType`
/// field, or for OCI manifests that omit it, the kind its shape shows. This is the
/// `Content-Type` it is served with.
pub fn stored_media_type(body: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Head>(body) {
        Ok(Head {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Head {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_owned(),
        _ => OCI_MANIFEST.to_owned(),
    }
}

/// Which foreign layer URLs a pushed manifest may carry (`validation.manifests.urls`).
#[derive(Debug, Clone)]
pub enum UrlPolicy {
    /// Validation is disabled: any http or https URL.
    Any,
    /// distribution's default (validation on, no rules): no URL at all.
    None,
    /// Each URL must match `allow` (when set) and must not match `deny` (when set).
    Match {
        allow: Option<regex::Regex>,
        deny: Option<regex::Regex>,
    },
}

/// Which children of an index must exist in the repository before it is stored
/// (`validation.manifests.indexes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexPolicy {
    /// Every child (distribution's default, and `platforms: list` with an empty list).
    All,
    /// No child (`platforms: none`, or validation disabled).
    None,
    /// Children whose platform has one of these os/architecture pairs.
    Platforms(Vec<Platform>),
}

/// The configurable validation of pushed manifests. The default is distribution's default
/// configuration: no foreign layer URLs, and every child of an index must exist.
#[derive(Debug, Clone)]
pub struct Rules {
    pub urls: UrlPolicy,
    pub indexes: IndexPolicy,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            urls: UrlPolicy::None,
            indexes: IndexPolicy::All,
        }
    }
}

/// Joins regular expressions the way distribution does: one alternation of non-capturing
/// groups, so that each rule matches anywhere in the URL (Go's `MatchString` is unanchored,
/// as is `Regex::is_match`). An invalid expression is reported with its position in the list.
pub fn join_regexes(list: &[String]) -> Result<Option<regex::Regex>, (usize, String)> {
    if list.is_empty() {
        return Ok(None);
    }
    for (i, s) in list.iter().enumerate() {
        regex::Regex::new(s).map_err(|e| (i, e.to_string()))?;
    }
    let joined: Vec<String> = list.iter().map(|s| format!("(?:{s})")).collect();
    regex::Regex::new(&joined.join("|"))
        .map(Some)
        .map_err(|e| (0, e.to_string()))
}

impl Rules {
    /// Checks every URL of the manifest's layers: http or https without a fragment (always),
    /// and admitted by the URL policy. A Docker foreign layer must name at least one URL.
    pub fn check_urls(&self, info: &ManifestInfo) -> Result<(), OciError> {
        for layer in &info.url_layers {
            if layer.urls.is_empty() {
                return Err(invalid(format!(
                    "foreign layer {} names no urls to download it from",
                    layer.digest
                ))
                .detail(serde_json::json!({ "digest": layer.digest.to_string() })));
            }
            for u in &layer.urls {
                self.check_url(u).map_err(|why| {
                    invalid(format!("layer {} URL {u:?} {why}", layer.digest))
                        .detail(serde_json::json!({ "digest": layer.digest.to_string(), "url": u }))
                })?;
            }
        }
        Ok(())
    }

    fn check_url(&self, u: &str) -> Result<(), &'static str> {
        // Go's url.Parse, as distribution uses it: the scheme is case-insensitive, and
        // control characters make the URL unparsable.
        let scheme = u.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https"))
            || u.contains('#')
            || u.chars().any(char::is_control)
        {
            return Err("must be http or https without a fragment");
        }
        match &self.urls {
            UrlPolicy::Any => Ok(()),
            UrlPolicy::None => Err("is refused: this registry admits no foreign layer URLs (validation.manifests.urls.allow is empty)"),
            UrlPolicy::Match { allow, deny } => {
                if allow.as_ref().is_some_and(|a| !a.is_match(u)) {
                    Err("is not admitted by validation.manifests.urls.allow")
                } else if deny.as_ref().is_some_and(|d| d.is_match(u)) {
                    Err("is refused by validation.manifests.urls.deny")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The children of an index that must exist in the repository.
    pub fn required_children<'a>(
        &'a self,
        info: &'a ManifestInfo,
    ) -> impl Iterator<Item = &'a Digest> + 'a {
        info.children
            .iter()
            .filter(move |c| match &self.indexes {
                IndexPolicy::All => true,
                IndexPolicy::None => false,
                IndexPolicy::Platforms(list) => {
                    c.platform.as_ref().is_some_and(|p| list.contains(p))
                }
            })
            .map(|c| &c.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":3}}]{extra}}}"#
        )
    }

    fn with_layer(media_type: &str, urls: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"{media_type}","digest":"{D2}","size":3,"urls":{urls}}}]}}"#
        )
    }

    fn docker_with_layer(media_type: &str, urls: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"{media_type}","digest":"{D2}","size":3{urls}}}]}}"#
        )
    }

    fn index(platforms: &[(&str, &str, &str)]) -> String {
        let entries: Vec<String> = platforms
            .iter()
            .map(|(d, os, arch)| {
                let p = if os.is_empty() {
                    String::new()
                } else {
                    format!(r#","platform":{{"os":"{os}","architecture":"{arch}"}}"#)
                };
                format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1{p}}}"#)
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        )
    }

    fn ok(body: &str, ct: Option<&str>) -> ManifestInfo {
        parse_put(body.as_bytes(), ct).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn code(r: Result<impl std::fmt::Debug, OciError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn image_manifest() {
        let m = ok(&image(""), Some(OCI_MANIFEST));
        assert_eq!(m.media_type, MediaType::OciManifest);
        assert_eq!(m.blobs.len(), 2);
        assert!(m.url_layers.is_empty());
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn artifact_with_subject() {
        let body = image(&format!(
            r#","artifactType":"application/x-sbom","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10}},"annotations":{{"a":"b"}}"#
        ));
        let m = ok(&body, Some(OCI_MANIFEST));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sbom"));
        assert_eq!(m.subject.map(|s| s.to_string()), Some(D1.to_owned()));
        assert_eq!(
            m.annotations.and_then(|a| a.get("a").cloned()),
            Some("b".into())
        );
    }

    #[test]
    fn index_children_and_platforms() {
        let m = ok(
            &index(&[(D1, "linux", "amd64"), (D2, "", "")]),
            Some(OCI_INDEX),
        );
        assert_eq!(m.children.len(), 2);
        assert!(m.blobs.is_empty());
        assert_eq!(
            m.children[0].platform,
            Some(Platform {
                os: "linux".into(),
                architecture: "amd64".into()
            })
        );
        assert_eq!(m.children[1].platform, None);
    }

    /// The Content-Type rules of distribution's manifest PUT (`UnmarshalManifest` and the
    /// per-type `mediaType` checks).
    #[test]
    fn content_type_rules() {
        let docker = docker_with_layer("application/vnd.docker.image.rootfs.diff.tar.gzip", "");
        let no_media_type = image("").replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        // Accepted.
        for (body, ct) in [
            (image(""), OCI_MANIFEST),
            (
                image(""),
                "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
            ),
            (image(""), "Application/VND.OCI.Image.Manifest.v1+JSON"),
            (no_media_type.clone(), OCI_MANIFEST),
            (docker.clone(), DOCKER_MANIFEST),
            (index(&[(D1, "linux", "amd64")]), OCI_INDEX),
        ] {
            ok(&body, Some(ct));
        }
        // Refused with MANIFEST_INVALID.
        for (body, ct) in [
            (image(""), None),
            (image(""), Some("")),
            (image(""), Some("application/x-evil")),
            (image(""), Some("application/json")),
            (image(""), Some("not a media type")),
            (
                image(""),
                Some("application/vnd.oci.image.manifest.v1+json; charset"),
            ),
            (image(""), Some(DOCKER_SCHEMA1_SIGNED)),
            (image(""), Some(OCI_INDEX)),
            (image(""), Some(DOCKER_MANIFEST)),
            (docker.clone(), Some(OCI_MANIFEST)),
            (no_media_type.clone(), Some(DOCKER_MANIFEST)),
            (no_media_type, None),
            (index(&[(D1, "linux", "amd64")]), Some(OCI_MANIFEST)),
            (index(&[(D1, "linux", "amd64")]), Some(DOCKER_MANIFEST_LIST)),
        ] {
            assert_eq!(
                code(parse_put(body.as_bytes(), ct)),
                Some(ErrorCode::ManifestInvalid),
                "{body} / {ct:?}"
            );
        }
    }

    #[test]
    fn refusals() {
        let cases: Vec<(String, Option<&str>)> = vec![
            ("not json".into(), Some(OCI_MANIFEST)),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#.into(), Some(OCI_MANIFEST)),
            (r#"{"schemaVersion":2}"#.into(), Some(OCI_MANIFEST)),
            (r#"{"schemaVersion":"2","config":{},"layers":[]}"#.into(), Some(OCI_MANIFEST)),
            (image("").replace(D2, "sha256:nothex"), Some(OCI_MANIFEST)),
            (image("").replace(D2, "md5:0123"), Some(OCI_MANIFEST)),
            (image("").replace(r#""size":3"#, r#""size":-1"#), Some(OCI_MANIFEST)),
            (r#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:1","size":1},"layers":[]}"#.into(), Some(OCI_MANIFEST)),
            (r#"{"schemaVersion":2,"config":"nope","layers":[]}"#.into(), Some(OCI_MANIFEST)),
            (format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux"}}}}]}}"#), Some(OCI_INDEX)),
        ];
        for (body, ct) in cases {
            assert_eq!(
                code(parse_put(body.as_bytes(), ct)),
                Some(ErrorCode::ManifestInvalid),
                "{body} / {ct:?}"
            );
        }
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert_eq!(
            code(parse_put(&big, Some(OCI_MANIFEST))),
            Some(ErrorCode::ManifestTooLarge)
        );
    }

    /// Stored or upstream content is read by its own `mediaType`, whatever header came with it.
    #[test]
    fn lenient_reading() {
        assert_eq!(
            parse(image("").as_bytes(), None).map(|m| m.media_type).ok(),
            Some(MediaType::OciManifest)
        );
        assert_eq!(
            parse(image("").as_bytes(), Some("application/octet-stream"))
                .map(|m| m.media_type)
                .ok(),
            Some(MediaType::OciManifest)
        );
        let bare =
            index(&[(D1, "linux", "amd64")]).replace(&format!(r#""mediaType":"{OCI_INDEX}","#), "");
        assert_eq!(
            parse(bare.as_bytes(), None).map(|m| m.media_type).ok(),
            Some(MediaType::OciIndex)
        );
        assert!(parse(
            br#"{"schemaVersion":2,"mediaType":"application/x-unknown"}"#,
            None
        )
        .is_err());
        assert!(parse(image("").as_bytes(), Some(DOCKER_SCHEMA1_SIGNED)).is_err());
    }

    fn rules(urls: UrlPolicy) -> Rules {
        Rules {
            urls,
            indexes: IndexPolicy::All,
        }
    }

    fn url_check(r: &Rules, body: &str, ct: &str) -> Option<ErrorCode> {
        code(r.check_urls(&ok(body, Some(ct))))
    }

    #[test]
    fn layer_urls() {
        let nondist = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
        let tar = "application/vnd.oci.image.layer.v1.tar";
        let body = with_layer(nondist, r#"["https://mcr.microsoft.com/l/1"]"#);
        // Non-distributable layer with URLs: not required in the registry.
        let m = ok(&body, Some(OCI_MANIFEST));
        assert_eq!(m.blobs.len(), 1);
        assert_eq!(m.url_layers.len(), 1);
        // A distributable layer that also names URLs must be pushed, and its URLs are checked.
        let m = ok(&with_layer(tar, r#"["https://x/y"]"#), Some(OCI_MANIFEST));
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.url_layers.len(), 1);

        let default = Rules::default();
        let any = rules(UrlPolicy::Any);
        let ms = |allow: &[&str], deny: &[&str]| {
            let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            rules(UrlPolicy::Match {
                allow: join_regexes(&v(allow)).unwrap_or_else(|e| panic!("{e:?}")),
                deny: join_regexes(&v(deny)).unwrap_or_else(|e| panic!("{e:?}")),
            })
        };
        let mcr = ms(&["^https://mcr\\.microsoft\\.com/"], &[]);
        let deny_only = ms(&[], &["evil"]);
        let both = ms(&["^https://", "^http://internal/"], &["/private/"]);
        let bad = Some(ErrorCode::ManifestInvalid);

        assert_eq!(url_check(&default, &body, OCI_MANIFEST), bad);
        assert_eq!(url_check(&any, &body, OCI_MANIFEST), None);
        assert_eq!(url_check(&mcr, &body, OCI_MANIFEST), None);
        assert_eq!(url_check(&deny_only, &body, OCI_MANIFEST), None);
        assert_eq!(url_check(&both, &body, OCI_MANIFEST), None);
        let two = with_layer(
            nondist,
            r#"["https://mcr.microsoft.com/l/1","https://other/l"]"#,
        );
        assert_eq!(
            url_check(&mcr, &two, OCI_MANIFEST),
            bad,
            "every URL must be admitted"
        );
        assert_eq!(url_check(&both, &two, OCI_MANIFEST), None);
        let private = with_layer(nondist, r#"["https://h/private/x"]"#);
        assert_eq!(url_check(&both, &private, OCI_MANIFEST), bad, "deny wins");
        let evil = with_layer(nondist, r#"["http://evil.example/x"]"#);
        assert_eq!(url_check(&deny_only, &evil, OCI_MANIFEST), bad);
        assert_eq!(
            url_check(
                &both,
                &with_layer(nondist, r#"["http://internal/a"]"#),
                OCI_MANIFEST
            ),
            None
        );
        // Always refused, whatever the rules.
        for u in [
            "file:///etc/passwd",
            "https://x/y#frag",
            "ftp://x/y",
            "https://x/\u{7}",
        ] {
            let b = with_layer(nondist, &serde_json::json!([u]).to_string());
            assert_eq!(url_check(&any, &b, OCI_MANIFEST), bad, "{u}");
        }
        assert_eq!(
            url_check(
                &any,
                &with_layer(nondist, r#"["HTTPS://x/y"]"#),
                OCI_MANIFEST
            ),
            None
        );
        // A layer of any type with URLs is checked.
        assert_eq!(
            url_check(
                &default,
                &with_layer("a/b", r#"["https://x/y"]"#),
                OCI_MANIFEST
            ),
            bad
        );

        // Docker foreign layers: URLs required, and not required in the registry.
        let foreign = docker_with_layer(
            DOCKER_FOREIGN_LAYER,
            r#","urls":["https://mcr.microsoft.com/l"]"#,
        );
        let m = ok(&foreign, Some(DOCKER_MANIFEST));
        assert_eq!(m.blobs.len(), 1);
        assert_eq!(url_check(&mcr, &foreign, DOCKER_MANIFEST), None);
        assert_eq!(url_check(&default, &foreign, DOCKER_MANIFEST), bad);
        let no_urls = docker_with_layer(DOCKER_FOREIGN_LAYER, "");
        assert_eq!(url_check(&any, &no_urls, DOCKER_MANIFEST), bad);
    }

    #[test]
    fn invalid_regex_is_located() {
        let list = vec!["^ok$".to_owned(), "(unclosed".to_owned()];
        assert_eq!(join_regexes(&list).err().map(|e| e.0), Some(1));
        assert!(join_regexes(&[]).is_ok_and(|r| r.is_none()));
    }

    #[test]
    fn index_children_policy() {
        let m = ok(
            &index(&[(D1, "linux", "amd64"), (D2, "linux", "arm64"), (D3, "", "")]),
            Some(OCI_INDEX),
        );
        let required = |indexes: IndexPolicy| {
            let r = Rules {
                urls: UrlPolicy::None,
                indexes,
            };
            r.required_children(&m)
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(required(IndexPolicy::All).len(), 3);
        assert!(required(IndexPolicy::None).is_empty());
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
        };
        assert_eq!(
            required(IndexPolicy::Platforms(vec![amd64])),
            vec![D1.to_owned()]
        );
    }

    #[test]
    fn resource_classes_follow_the_config_media_type() {
        let docker = |config: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{config}","digest":"{D1}","size":2}},"layers":[]}}"#
            )
        };
        let oci = |config: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{config}","digest":"{D1}","size":2}},"layers":[]}}"#
            )
        };
        let class = |body: String, ct: &str| ok(&body, Some(ct)).class().map_err(str::to_owned);
        assert_eq!(
            class(docker(DOCKER_IMAGE_CONFIG), DOCKER_MANIFEST),
            Ok(Some("image"))
        );
        assert_eq!(
            class(docker(DOCKER_PLUGIN_CONFIG), DOCKER_MANIFEST),
            Ok(Some("plugin"))
        );
        assert_eq!(
            class(oci(OCI_IMAGE_CONFIG), OCI_MANIFEST),
            Ok(Some("image"))
        );
        // distribution's switch: a plugin or Docker config in an OCI manifest has no class.
        for config in [
            DOCKER_PLUGIN_CONFIG,
            DOCKER_IMAGE_CONFIG,
            "application/x-helm",
        ] {
            assert_eq!(class(oci(config), OCI_MANIFEST), Err(config.to_owned()));
        }
        assert_eq!(class(index(&[]), OCI_INDEX), Ok(None));
    }
}
