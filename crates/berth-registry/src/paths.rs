//! Every storage path of the layout, in one place. The layout is distribution's, byte for
//! byte (see `registry/storage/paths.go` there), so one directory or bucket serves both:
//!
//! ```text
//! /docker/registry/v2/blobs/<alg>/<hex[0..2]>/<hex>/data
//! /docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link
//! /docker/registry/v2/repositories/<name>/_manifests/revisions/<alg>/<hex>/link
//! /docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//! /docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link
//! /docker/registry/v2/repositories/<name>/_uploads/<id>/{data,startedat,hashstates/<alg>/<offset>}
//! ```
//!
//! Berth's own addition, which distribution ignores (it skips `_`-prefixed directories that
//! it does not know):
//!
//! ```text
//! /docker/registry/v2/repositories/<name>/_berth_referrers/<alg>/<subject hex>/<alg>/<hex>/link
//! ```
//!
//! Only validated types go in, so no path can escape its directory.

use berth_core::{Digest, RepoName, Tag};

use crate::uploads::UploadId;

pub const ROOT: &str = "/docker/registry/v2";

pub fn repositories() -> String {
    format!("{ROOT}/repositories")
}

pub fn blob_data(d: &Digest) -> String {
    let hex = d.hex();
    format!(
        "{ROOT}/blobs/{}/{}/{hex}/data",
        d.algorithm().as_str(),
        &hex[..2]
    )
}

pub fn repo(name: &RepoName) -> String {
    format!("{ROOT}/repositories/{name}")
}

pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/_layers/{}/{}/link",
        repo(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn revision_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{}/_manifests/revisions/{}/{}/link",
        repo(name),
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn manifests_dir(name: &RepoName) -> String {
    format!("{}/_manifests", repo(name))
}

pub fn tags_dir(name: &RepoName) -> String {
    format!("{}/_manifests/tags", repo(name))
}

pub fn tag_dir(name: &RepoName, tag: &Tag) -> String {
    format!("{}/{tag}", tags_dir(name))
}

pub fn tag_current_link(name: &RepoName, tag: &Tag) -> String {
    format!("{}/current/link", tag_dir(name, tag))
}

pub fn tag_index_link(name: &RepoName, tag: &Tag, d: &Digest) -> String {
    format!(
        "{}/index/{}/{}/link",
        tag_dir(name, tag),
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn referrers_dir(name: &RepoName, subject: &Digest) -> String {
    format!(
        "{}/_berth_referrers/{}/{}",
        repo(name),
        subject.algorithm().as_str(),
        subject.hex()
    )
}

pub fn referrer_link(name: &RepoName, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{}/{}/{}/link",
        referrers_dir(name, subject),
        referrer.algorithm().as_str(),
        referrer.hex()
    )
}

pub fn upload_dir(name: &RepoName, id: &UploadId) -> String {
    format!("{}/_uploads/{id}", repo(name))
}

pub fn upload_data(name: &RepoName, id: &UploadId) -> String {
    format!("{}/data", upload_dir(name, id))
}

pub fn upload_startedat(name: &RepoName, id: &UploadId) -> String {
    format!("{}/startedat", upload_dir(name, id))
}

/// When the pull-through cache last confirmed a tag upstream (Unix seconds). Berth's own path:
/// `_`-prefixed, so distribution and the catalog ignore it.
pub fn proxy_tag_checked(name: &RepoName, tag: &Tag) -> String {
    format!("{}/_berth_proxy/tags/{tag}/checkedat", repo(name))
}

/// Berth's record of an upload on a driver that stages with state (S3): offset, SHA-256 state
/// and driver state in one object, written once per chunk. Absent on the filesystem, where the
/// data file and distribution's `hashstates/` say the same.
pub fn upload_berth_state(name: &RepoName, id: &UploadId) -> String {
    format!("{}/berthstate", upload_dir(name, id))
}

pub fn upload_hashstates(name: &RepoName, id: &UploadId) -> String {
    format!("{}/hashstates/sha256", upload_dir(name, id))
}

pub fn upload_hashstate(name: &RepoName, id: &UploadId, offset: u64) -> String {
    format!("{}/{offset}", upload_hashstates(name, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_paths() {
        let n: RepoName = "library/alpine".parse().unwrap_or_else(|e| panic!("{e}"));
        let d = Digest::sha256_of(b"");
        assert_eq!(
            blob_data(&d),
            "/docker/registry/v2/blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/data"
        );
        assert_eq!(
            layer_link(&n, &d),
            "/docker/registry/v2/repositories/library/alpine/_layers/sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/link"
        );
        let t: Tag = "latest".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            tag_current_link(&n, &t),
            "/docker/registry/v2/repositories/library/alpine/_manifests/tags/latest/current/link"
        );
    }
}
