//! Content discovery: tag listing with `n`, `last` and `Link` pagination, and the referrers API
//! with its `artifactType` filter and the `OCI-Subject` header on pushes.

use serde_json::Value;

use crate::client::Resp;
use crate::fixtures::{
    digest, expect_error, expect_header, expect_status, index, Image, OCI_CONFIG, OCI_INDEX,
};
use crate::{ensure, Ctx};

const TAGS: [&str; 5] = ["a1", "b2", "c3", "d4", "e5"];
const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG: &str = "application/vnd.example.signature.v1";

fn tag_list(r: &Resp) -> Result<Vec<String>, String> {
    let v = r
        .json()
        .ok_or_else(|| format!("not JSON: {}", r.describe()))?;
    let tags = v
        .get("tags")
        .ok_or_else(|| format!("no \"tags\": {}", r.describe()))?;
    // distribution sends `null` for an empty list; the spec's shape is an array.
    if tags.is_null() {
        return Ok(Vec::new());
    }
    Ok(tags
        .as_array()
        .ok_or_else(|| format!("\"tags\" is not a list: {}", r.describe()))?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect())
}

/// The target of a `Link: <url>; rel="next"` header.
pub(crate) fn next_link(r: &Resp) -> Option<String> {
    let v = r.header("link")?;
    let (url, rest) = v.trim().strip_prefix('<')?.split_once('>')?;
    rest.contains("rel=\"next\"").then(|| url.to_owned())
}

fn referrers(r: &Resp) -> Result<Vec<Value>, String> {
    expect_status(r, &[200])?;
    expect_header(r, "content-type", OCI_INDEX)?;
    let v = r
        .json()
        .ok_or_else(|| format!("not JSON: {}", r.describe()))?;
    ensure!(v["schemaVersion"] == 2, "schemaVersion is not 2: {v}");
    ensure!(
        v["mediaType"] == OCI_INDEX,
        "mediaType is not the OCI index: {v}"
    );
    v["manifests"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("\"manifests\" is not a list: {v}"))
}

fn find<'a>(list: &'a [Value], d: &str) -> Option<&'a Value> {
    list.iter().find(|m| m["digest"] == d)
}

pub fn run(ctx: &mut Ctx) {
    tags(ctx);
    referrer_checks(ctx);
}

fn tags(ctx: &mut Ctx) {
    let repo = ctx.repo("tags");
    let img = Image::oci("tags", 1, "");
    let setup = (|| {
        ctx.c.push_image(&repo, TAGS[0], &img)?;
        for t in &TAGS[1..] {
            let r = ctx
                .c
                .put_manifest(&repo, t, img.media_type, &img.manifest)?;
            expect_status(&r, &[201])?;
        }
        Ok::<(), String>(())
    })();
    let ready = || setup.clone().map_err(|e| format!("setup push failed: {e}"));

    ctx.check(
        "discovery/tags-list",
        "GET tags/list: 200, {name, tags} with every tag in lexical order",
        |ctx| {
            ready()?;
            let r = ctx.c.get(&format!("/v2/{repo}/tags/list"), &[])?;
            expect_status(&r, &[200])?;
            let v = r.json().unwrap_or_default();
            ensure!(
                v["name"] == repo.as_str(),
                "name is {} not {repo}",
                v["name"]
            );
            let tags = tag_list(&r)?;
            ensure!(tags == TAGS, "tags {tags:?}, expected {TAGS:?}");
            Ok(())
        },
    );
    ctx.check(
        "discovery/tags-n",
        "tags/list?n=2: exactly the first 2 tags and a Link rel=\"next\" header",
        |ctx| {
            ready()?;
            let r = ctx.c.get(&format!("/v2/{repo}/tags/list?n=2"), &[])?;
            expect_status(&r, &[200])?;
            let tags = tag_list(&r)?;
            ensure!(tags == TAGS[..2], "tags {tags:?}");
            ensure!(
                next_link(&r).is_some(),
                "no Link rel=\"next\": {:?}",
                r.header("link")
            );
            Ok(())
        },
    );
    ctx.check(
        "discovery/tags-n-last",
        "tags/list?n=2&last=b2: the 2 tags after b2",
        |ctx| {
            ready()?;
            let r = ctx
                .c
                .get(&format!("/v2/{repo}/tags/list?n=2&last=b2"), &[])?;
            expect_status(&r, &[200])?;
            let tags = tag_list(&r)?;
            ensure!(tags == TAGS[2..4], "tags {tags:?}");
            Ok(())
        },
    );
    ctx.check(
        "discovery/tags-last",
        "tags/list?last=c3 (n optional): every tag after c3",
        |ctx| {
            ready()?;
            let r = ctx.c.get(&format!("/v2/{repo}/tags/list?last=c3"), &[])?;
            expect_status(&r, &[200])?;
            let tags = tag_list(&r)?;
            ensure!(tags == TAGS[3..], "tags {tags:?}");
            Ok(())
        },
    );
    ctx.check(
        "discovery/tags-n-zero",
        "tags/list?n=0: an empty list and no Link header",
        |ctx| {
            ready()?;
            let r = ctx.c.get(&format!("/v2/{repo}/tags/list?n=0"), &[])?;
            expect_status(&r, &[200])?;
            let tags = tag_list(&r)?;
            ensure!(tags.is_empty(), "tags {tags:?}");
            ensure!(
                r.header("link").is_none(),
                "Link header with n=0: {:?}",
                r.header("link")
            );
            Ok(())
        },
    );
    ctx.check(
        "discovery/tags-link-walk",
        "following Link headers from n=2 visits every tag once, in order",
        |ctx| {
            ready()?;
            let mut url = format!("/v2/{repo}/tags/list?n=2");
            let mut all = Vec::new();
            for _ in 0..10 {
                let r = ctx.c.get(&url, &[])?;
                expect_status(&r, &[200])?;
                all.extend(tag_list(&r)?);
                match next_link(&r) {
                    Some(next) => url = next,
                    None => break,
                }
            }
            ensure!(all == TAGS, "walked {all:?}");
            Ok(())
        },
    );
    ctx.check(
        "discovery/tags-unknown-repository",
        "tags/list of a repository that does not exist: 404 NAME_UNKNOWN",
        |ctx| {
            let r = ctx
                .c
                .get(&format!("/v2/{}/tags/list", ctx.repo("no-such-repo")), &[])?;
            expect_error(&r, &[404], &["NAME_UNKNOWN"])
        },
    );
}

fn referrer_checks(ctx: &mut Ctx) {
    let repo = ctx.repo("referrers");
    let subject = Image::oci("subject", 1, "");
    let sd = subject.digest();
    let subj = Some((sd.as_str(), subject.manifest.len()));
    let sbom = Image::artifact("sbom", SBOM, subj);
    let sig = Image::artifact("sig", SIG, subj);
    // An image manifest with a subject but no artifactType: listed with the config's type.
    let plain = Image::oci(
        "plain-referrer",
        1,
        &format!(
            r#","subject":{{"mediaType":"{}","digest":"{sd}","size":{}}},"annotations":{{"k":"v"}}"#,
            subject.media_type,
            subject.manifest.len()
        ),
    );
    // An index with a subject and no artifactType: listed without artifactType.
    let child = Image::oci("referrer-index-child", 1, "");
    let ref_index = index(
        OCI_INDEX,
        &[(&child, "amd64")],
        &format!(
            r#","subject":{{"mediaType":"{}","digest":"{sd}","size":{}}}"#,
            subject.media_type,
            subject.manifest.len()
        ),
    );
    let mut subject_headers: Vec<(String, Option<String>)> = Vec::new();
    let setup = (|| {
        ctx.c.push_image(&repo, "subject", &subject)?;
        for img in [&sbom, &sig, &plain] {
            let r = ctx.c.push_image(&repo, &img.digest(), img)?;
            subject_headers.push((img.digest(), r.header("oci-subject").map(str::to_owned)));
        }
        ctx.c.push_image(&repo, &child.digest(), &child)?;
        let r = ctx
            .c
            .put_manifest(&repo, &digest(&ref_index), OCI_INDEX, &ref_index)?;
        expect_status(&r, &[201])?;
        subject_headers.push((
            digest(&ref_index),
            r.header("oci-subject").map(str::to_owned),
        ));
        Ok::<(), String>(())
    })();
    let ready = || setup.clone().map_err(|e| format!("setup push failed: {e}"));

    ctx.check(
        "discovery/oci-subject-header",
        "PUT of a manifest with a subject answers OCI-Subject: <subject digest>",
        |_| {
            ready()?;
            for (d, h) in &subject_headers {
                ensure!(
                    h.as_deref() == Some(sd.as_str()),
                    "PUT {d}: OCI-Subject is {h:?}, expected {sd}"
                );
            }
            Ok(())
        },
    );
    ctx.check(
        "discovery/referrers",
        "GET referrers/<subject>: an OCI index listing every referrer with mediaType, size, artifactType and annotations",
        |ctx| {
            ready()?;
            let r = ctx.c.get(&format!("/v2/{repo}/referrers/{sd}"), &[])?;
            let list = referrers(&r)?;
            ensure!(list.len() == 4, "{} referrers listed, expected 4: {list:?}", list.len());
            for (img, at) in [(&sbom, SBOM), (&sig, SIG)] {
                let d = img.digest();
                let m = find(&list, &d).ok_or_else(|| format!("{d} not listed"))?;
                ensure!(m["artifactType"] == at, "{d}: artifactType {}", m["artifactType"]);
                ensure!(m["size"] == img.manifest.len(), "{d}: size {}", m["size"]);
                ensure!(m["mediaType"] == img.media_type, "{d}: mediaType {}", m["mediaType"]);
                ensure!(
                    m["annotations"]["org.example.seed"].is_string(),
                    "{d}: annotations not copied: {m}"
                );
            }
            Ok(())
        },
    );
    ctx.check(
        "discovery/referrers-artifact-type-defaults",
        "a referrer without artifactType is listed with its config mediaType; an index without one has none",
        |ctx| {
            ready()?;
            let r = ctx.c.get(&format!("/v2/{repo}/referrers/{sd}"), &[])?;
            let list = referrers(&r)?;
            let m = find(&list, &plain.digest()).ok_or("image referrer not listed")?;
            ensure!(m["artifactType"] == OCI_CONFIG, "artifactType {}", m["artifactType"]);
            ensure!(m["annotations"]["k"] == "v", "annotations not copied: {m}");
            let m = find(&list, &digest(&ref_index)).ok_or("index referrer not listed")?;
            ensure!(m["mediaType"] == OCI_INDEX, "mediaType {}", m["mediaType"]);
            ensure!(m.get("artifactType").is_none() || m["artifactType"].is_null(), "index listed with artifactType {}", m["artifactType"]);
            Ok(())
        },
    );
    ctx.check(
        "discovery/referrers-filter",
        "referrers?artifactType=: only matching referrers, with OCI-Filters-Applied: artifactType",
        |ctx| {
            ready()?;
            let r = ctx.c.get(
                &format!("/v2/{repo}/referrers/{sd}?artifactType={SBOM}"),
                &[],
            )?;
            let list = referrers(&r)?;
            expect_header(&r, "oci-filters-applied", "artifactType")?;
            ensure!(
                list.len() == 1 && list[0]["digest"] == sbom.digest(),
                "filtered list {list:?}"
            );
            Ok(())
        },
    );
    ctx.check(
        "discovery/referrers-none",
        "referrers of a digest nothing refers to: 200 with an empty index (never 404)",
        |ctx| {
            let r = ctx.c.get(
                &format!("/v2/{repo}/referrers/{}", digest(b"nothing refers to me")),
                &[],
            )?;
            let list = referrers(&r)?;
            ensure!(list.is_empty(), "listed {list:?}");
            Ok(())
        },
    );
    ctx.check(
        "discovery/referrers-invalid-digest",
        "referrers of a syntactically invalid digest: 400",
        |ctx| {
            let r = ctx
                .c
                .get(&format!("/v2/{repo}/referrers/sha256:not-hex"), &[])?;
            expect_status(&r, &[400])
        },
    );
}
