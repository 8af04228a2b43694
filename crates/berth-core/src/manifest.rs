//! Manifest media types, parsing and the validation a registry owes its clients before it
//! stores a manifest: OCI image manifest and index (including artifact manifests with
//! `artifactType` and an empty config), Docker schema2 manifest and manifest list. Schema1 is
//! refused. The bytes are never re-serialized: the caller stores what the client sent, and
//! the digest is of those bytes; parsing only extracts what validation and the referrers API
//! need.

use std::collections::BTreeMap;

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

/// The manifest kinds Berth stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

impl MediaType {
    pub fn parse(s: &str) -> Option<MediaType> {
        // Parameters such as `; charset=utf-8` do not change the type.
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
}

/// A content descriptor as it appears in manifests and in the referrers index.
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

/// The fields of any supported manifest kind that matter to a registry.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Present only in schema1.
    fs_layers: Option<serde_json::Value>,
    signatures: Option<serde_json::Value>,
}

/// What the registry must know about a manifest it is asked to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestInfo {
    pub media_type: MediaType,
    /// `artifactType`, or for an image manifest without one, the config's media type (the
    /// value the referrers API reports).
    pub artifact_type: Option<String>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
    /// Blobs that must exist in the repository (config and layers without external URLs).
    pub blobs: Vec<Digest>,
    /// Manifests that must exist in the repository (an index's children).
    pub children: Vec<Digest>,
}

fn invalid(msg: impl Into<String>) -> OciError {
    OciError::with_message(ErrorCode::ManifestInvalid, msg)
}

/// Parses and validates a manifest body sent with `content_type`.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ManifestInfo, OciError> {
    if body.len() > MAX_MANIFEST_SIZE {
        return Err(OciError::with_message(
            ErrorCode::ManifestTooLarge,
            format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"),
        ));
    }
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty());
    if matches!(ct, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) {
        return Err(invalid(
            "schema1 manifests are not supported; push a schema2 or OCI manifest",
        ));
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    if raw.fs_layers.is_some() || raw.signatures.is_some() || raw.schema_version == Some(1) {
        return Err(invalid(
            "schema1 manifests are not supported; push a schema2 or OCI manifest",
        ));
    }
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let declared = raw.media_type.as_deref();
    let media_type = match (declared, ct) {
        (Some(d), Some(c))
            if MediaType::parse(d) != MediaType::parse(c) && MediaType::parse(c).is_some() =>
        {
            return Err(invalid(format!(
                "manifest mediaType {d:?} does not match Content-Type {c:?}"
            )));
        }
        (Some(d), _) => MediaType::parse(d)
            .ok_or_else(|| invalid(format!("unsupported manifest media type {d:?}")))?,
        (None, Some(c)) => match MediaType::parse(c) {
            Some(m) => m,
            None => sniff(&raw)
                .ok_or_else(|| invalid(format!("unsupported manifest media type {c:?}")))?,
        },
        (None, None) => {
            sniff(&raw).ok_or_else(|| invalid("cannot tell the manifest's media type"))?
        }
    };
    // Docker's formats require their mediaType field; OCI's make it optional.
    if matches!(
        media_type,
        MediaType::DockerManifest | MediaType::DockerManifestList
    ) && declared.is_none()
    {
        return Err(invalid("docker manifests must declare mediaType"));
    }

    let mut info = ManifestInfo {
        media_type,
        artifact_type: raw.artifact_type.clone(),
        subject: raw.subject,
        annotations: raw.annotations,
        blobs: Vec::new(),
        children: Vec::new(),
    };
    if media_type.is_index() {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(invalid("an index has no config or layers"));
        }
        let manifests = raw
            .manifests
            .ok_or_else(|| invalid("an index needs a manifests array"))?;
        info.children = manifests.into_iter().map(|d| d.digest).collect();
    } else {
        if raw.manifests.is_some() {
            return Err(invalid("an image manifest has no manifests array"));
        }
        let config = raw
            .config
            .ok_or_else(|| invalid("an image manifest needs a config descriptor"))?;
        let layers = raw
            .layers
            .ok_or_else(|| invalid("an image manifest needs a layers array"))?;
        if info.artifact_type.is_none() {
            info.artifact_type = Some(config.media_type.clone());
        }
        info.blobs.push(config.digest);
        for layer in layers {
            if layer.urls.is_empty() {
                info.blobs.push(layer.digest);
            } else {
                for u in &layer.urls {
                    let scheme_ok = u.starts_with("http://") || u.starts_with("https://");
                    if !scheme_ok || u.contains('#') {
                        return Err(invalid(format!(
                            "layer URL {u:?} must be http or https without a fragment"
                        )));
                    }
                }
            }
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

/// Guesses the kind of a manifest that names no media type (allowed for OCI).
fn sniff(raw: &Raw) -> Option<MediaType> {
    if raw.manifests.is_some() {
        Some(MediaType::OciIndex)
    } else if raw.config.is_some() {
        Some(MediaType::OciManifest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":3}}]{extra}}}"#
        )
    }

    #[test]
    fn image_manifest() {
        let m = parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.media_type, MediaType::OciManifest);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn artifact_with_subject() {
        let body = image(&format!(
            r#","artifactType":"application/x-sbom","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10}}"#
        ));
        let m = parse(body.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sbom"));
        assert_eq!(m.subject.map(|s| s.digest.to_string()), Some(D1.to_owned()));
    }

    #[test]
    fn index_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}}]}}"#
        );
        let m = parse(body.as_bytes(), Some(OCI_INDEX)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.children.len(), 1);
        assert!(m.blobs.is_empty());
    }

    #[test]
    fn refusals() {
        let cases: Vec<(String, Option<&str>)> = vec![
            ("not json".into(), Some(OCI_MANIFEST)),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#.into(), None),
            (image(""), Some(DOCKER_SCHEMA1_SIGNED)),
            (image(""), Some(OCI_INDEX)),
            (r#"{"schemaVersion":2}"#.into(), None),
            (r#"{"schemaVersion":2,"mediaType":"application/x-unknown"}"#.into(), None),
            (image("").replace(D2, "sha256:nothex"), None),
            (r#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:1","size":1},"layers":[]}"#.into(), None),
        ];
        for (body, ct) in cases {
            let e = parse(body.as_bytes(), ct).err();
            assert_eq!(
                e.map(|e| e.code),
                Some(ErrorCode::ManifestInvalid),
                "{body} / {ct:?}"
            );
        }
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert_eq!(
            parse(&big, None).err().map(|e| e.code),
            Some(ErrorCode::ManifestTooLarge)
        );
    }
}
