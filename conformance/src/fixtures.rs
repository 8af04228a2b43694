//! Content the checks push, and the few push/expect helpers every workflow uses. Public, so
//! other test suites (interop with distribution, end-to-end) build the same images.

use sha2::Digest as _;

use crate::client::Client;
use crate::client::{with_query, Body, Resp};
use crate::ensure;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCTET: &str = "application/octet-stream";

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let h = sha2::Sha256::digest(data);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in seed.bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A descriptor as JSON text.
pub fn descriptor(media_type: &str, data: &[u8]) -> String {
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
        digest(data),
        data.len()
    )
}

/// An image: its blobs and manifest, not yet pushed.
#[derive(Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
}

impl Image {
    /// An OCI image manifest with one config and `n_layers` small layers; `extra` is appended
    /// to the manifest object (e.g. `,"subject":{...}`).
    pub fn oci(seed: &str, n_layers: usize, extra: &str) -> Image {
        let layers: Vec<Vec<u8>> = (0..n_layers)
            .map(|i| bytes(&format!("{seed}-layer-{i}"), 1000 + i * 37))
            .collect();
        Image::with_layers(seed, layers, extra)
    }

    /// An OCI image manifest over the given layers.
    pub fn with_layers(seed: &str, layers: Vec<Vec<u8>>, extra: &str) -> Image {
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
        let layer_descs: Vec<String> = layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]{extra}}}"#,
            descriptor(OCI_CONFIG, &config),
            layer_descs.join(",")
        )
        .into_bytes();
        Image {
            config,
            layers,
            manifest,
            media_type: OCI_MANIFEST,
        }
    }

    /// A Docker schema2 image manifest.
    pub fn docker(seed: &str) -> Image {
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","docker":"{seed}"}}"#).into_bytes();
        let layer = bytes(&format!("{seed}-docker-layer"), 1500);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{},"layers":[{}]}}"#,
            descriptor(DOCKER_CONFIG, &config),
            descriptor(DOCKER_LAYER, &layer)
        )
        .into_bytes();
        Image {
            config,
            layers: vec![layer],
            manifest,
            media_type: DOCKER_MANIFEST,
        }
    }

    /// An artifact manifest: `artifactType`, the empty config, one blob, optional subject.
    pub fn artifact(seed: &str, artifact_type: &str, subject: Option<(&str, usize)>) -> Image {
        let config = b"{}".to_vec();
        let blob = bytes(&format!("{seed}-artifact"), 300);
        let subject = subject
            .map(|(d, n)| {
                format!(r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{n}}}"#)
            })
            .unwrap_or_default();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{},"layers":[{}],"annotations":{{"org.example.seed":"{seed}"}}{subject}}}"#,
            descriptor(OCI_EMPTY, &config),
            descriptor("application/vnd.example.data", &blob),
        )
        .into_bytes();
        Image {
            config,
            layers: vec![blob],
            manifest,
            media_type: OCI_MANIFEST,
        }
    }

    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Every blob of the image.
    pub fn blobs(&self) -> impl Iterator<Item = &Vec<u8>> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// An index over `children` (manifest bytes and media type, with platforms).
pub fn index(media_type: &str, children: &[(&Image, &str)], extra: &str) -> Vec<u8> {
    let entries: Vec<String> = children
        .iter()
        .map(|(img, arch)| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                img.media_type,
                img.digest(),
                img.manifest.len()
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{}]{extra}}}"#,
        entries.join(",")
    )
    .into_bytes()
}

/// Fails unless the response has one of the statuses.
pub fn expect_status(r: &Resp, statuses: &[u16]) -> Result<(), String> {
    ensure!(
        statuses.contains(&r.status),
        "expected status {statuses:?}: {}",
        r.describe()
    );
    Ok(())
}

/// Fails unless the response has the status and an OCI error body with one of the codes.
pub fn expect_error(r: &Resp, statuses: &[u16], codes: &[&str]) -> Result<(), String> {
    expect_status(r, statuses)?;
    let got = r.error_codes();
    ensure!(
        got.iter().any(|c| codes.contains(&c.as_str())),
        "expected an error body with code {codes:?}, got {got:?}: {}",
        r.describe()
    );
    Ok(())
}

/// Fails unless the header is present and equal to `want`.
pub fn expect_header(r: &Resp, name: &str, want: &str) -> Result<(), String> {
    match r.header(name) {
        Some(v) if v == want => Ok(()),
        Some(v) => Err(format!(
            "{name}: expected {want:?}, got {v:?} ({})",
            r.describe()
        )),
        None => Err(format!("{name} header missing ({})", r.describe())),
    }
}

/// The `Location` header, required.
pub fn location(r: &Resp) -> Result<String, String> {
    r.header("location")
        .map(str::to_owned)
        .ok_or_else(|| format!("no Location header: {}", r.describe()))
}

impl Client {
    /// Starts an upload session and returns its Location.
    pub fn start_upload(&self, repo: &str) -> Result<String, String> {
        let r = self.send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Body::Bytes(&[]),
        )?;
        expect_status(&r, &[202])?;
        location(&r)
    }

    /// Pushes a blob with POST then PUT, the way every registry must accept.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String, String> {
        let d = digest(data);
        let loc = self.start_upload(repo)?;
        let r = self.send(
            "PUT",
            &with_query(&loc, "digest", &d),
            &[("Content-Type", OCTET)],
            Body::Bytes(data),
        )?;
        expect_status(&r, &[201])?;
        Ok(d)
    }

    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Resp, String> {
        self.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Body::Bytes(body),
        )
    }

    /// Pushes every blob of an image and its manifest under `reference`.
    pub fn push_image(&self, repo: &str, reference: &str, img: &Image) -> Result<Resp, String> {
        for b in img.blobs() {
            self.push_blob(repo, b)?;
        }
        let r = self.put_manifest(repo, reference, img.media_type, &img.manifest)?;
        expect_status(&r, &[201])?;
        Ok(r)
    }
}
