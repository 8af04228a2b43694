//! Error cases: malformed names, digests, upload ids and ranges get 4xx with the spec's error
//! body — never a 5xx, and never a side effect.

use crate::client::{with_query, Body};
use crate::fixtures::{bytes, digest, expect_error, expect_status, Image, OCI_MANIFEST, OCTET};
use crate::{ensure, Ctx};

const UNKNOWN_UPLOAD: &str = "2b4a1cf6-7f1d-4d5e-9c31-1d2c3b4a5f60";

pub fn run(ctx: &mut Ctx) {
    let repo = ctx.repo("errors");
    ctx.check(
        "errors/name-invalid",
        "a repository name outside the spec's grammar (upper case, empty component, too long): 400 NAME_INVALID",
        |ctx| {
            let long = vec!["abcdefghij"; 30].join("/");
            for name in ["Upper/case".to_owned(), format!("{}//x", ctx.prefix), long] {
                let r = ctx.c.get(&format!("/v2/{name}/tags/list"), &[])?;
                expect_error(&r, &[400], &["NAME_INVALID"])?;
            }
            Ok(())
        },
    );
    ctx.check(
        "errors/name-invalid-push",
        "a push into an invalid repository name: 400 NAME_INVALID and nothing created",
        |ctx| {
            let r = ctx
                .c
                .send("POST", "/v2/Bad.Name/blobs/uploads/", &[], Body::Bytes(&[]))?;
            expect_error(&r, &[400], &["NAME_INVALID"])
        },
    );
    ctx.check(
        "errors/digest-invalid",
        "a syntactically invalid digest in a blob or manifest URL: 400 DIGEST_INVALID",
        |ctx| {
            for path in [
                format!("/v2/{repo}/blobs/sha256:xyz"),
                format!("/v2/{repo}/blobs/sha256:{}", "A".repeat(64)),
                format!("/v2/{repo}/manifests/sha256:abc"),
                format!("/v2/{repo}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"),
            ] {
                let r = ctx.c.get(&path, &[])?;
                expect_error(&r, &[400], &["DIGEST_INVALID"])?;
            }
            Ok(())
        },
    );
    ctx.check(
        "errors/digest-invalid-upload",
        "closing an upload with a malformed or missing digest: 400 DIGEST_INVALID",
        |ctx| {
            for bad in [Some("sha256:short"), Some("nonsense"), None] {
                let loc = ctx.c.start_upload(&repo)?;
                let url = match bad {
                    Some(b) => with_query(&loc, "digest", b),
                    None => loc.clone(),
                };
                let r = ctx.c.send(
                    "PUT",
                    &url,
                    &[("Content-Type", OCTET)],
                    Body::Bytes(b"data"),
                )?;
                expect_error(&r, &[400], &["DIGEST_INVALID"])?;
            }
            Ok(())
        },
    );
    ctx.check(
        "errors/digest-invalid-manifest-put",
        "PUT of a manifest at a malformed digest reference: 400 DIGEST_INVALID",
        |ctx| {
            let img = Image::oci("errors-put", 1, "");
            for b in img.blobs() {
                ctx.c.push_blob(&repo, b)?;
            }
            let r = ctx
                .c
                .put_manifest(&repo, "sha256:abc", OCI_MANIFEST, &img.manifest)?;
            expect_error(&r, &[400], &["DIGEST_INVALID"])
        },
    );
    ctx.check(
        "errors/upload-unknown",
        "GET, PATCH, PUT and DELETE of an unknown upload session: 404 BLOB_UPLOAD_UNKNOWN",
        |ctx| {
            let loc = format!("/v2/{repo}/blobs/uploads/{UNKNOWN_UPLOAD}");
            let d = digest(b"data");
            for (m, url, body) in [
                ("GET", loc.clone(), Body::None),
                ("PATCH", loc.clone(), Body::Bytes(b"data")),
                ("PUT", with_query(&loc, "digest", &d), Body::Bytes(b"data")),
                ("DELETE", loc.clone(), Body::None),
            ] {
                let r = ctx.c.send(m, &url, &[("Content-Type", OCTET)], body)?;
                expect_error(&r, &[404], &["BLOB_UPLOAD_UNKNOWN"])?;
            }
            Ok(())
        },
    );
    ctx.check(
        "errors/upload-other-repository",
        "an upload session used under another repository's URL is 404 BLOB_UPLOAD_UNKNOWN",
        |ctx| {
            let loc = ctx.c.start_upload(&repo)?;
            let other = ctx.repo("errors-other");
            let moved = loc.replacen(&format!("/v2/{repo}/"), &format!("/v2/{other}/"), 1);
            ensure!(moved != loc, "cannot rewrite the Location {loc}");
            let r = ctx.c.get(&moved, &[])?;
            expect_error(&r, &[404], &["BLOB_UPLOAD_UNKNOWN"])
        },
    );
    ctx.check(
        "errors/content-range-malformed",
        "a PATCH whose Content-Range is not <start>-<end>: 416 (or 400), and the upload is unchanged",
        |ctx| {
            let loc = ctx.c.start_upload(&repo)?;
            let r = ctx.c.send(
                "PATCH",
                &loc,
                &[("Content-Type", OCTET), ("Content-Range", "abc")],
                Body::Bytes(b"data"),
            )?;
            expect_status(&r, &[416, 400])?;
            let st = ctx.c.get(&loc, &[])?;
            expect_status(&st, &[204])?;
            let range = st.header("range").unwrap_or("0-0");
            ensure!(range == "0-0" || range == "bytes=0-0", "upload grew: Range {range}");
            Ok(())
        },
    );
    ctx.check(
        "errors/percent-encoded-separators",
        "percent-encoded '/' or '..' in a repository name are not path separators: 4xx, never 5xx",
        |ctx| {
            for path in [
                format!("/v2/{}%2F..%2Fescape/tags/list", ctx.prefix),
                "/v2/%2e%2e/%2e%2e/tags/list".to_owned(),
                format!("/v2/{repo}/blobs/sha256%3A{}", "0".repeat(64)),
            ] {
                let r = ctx.c.get(&path, &[])?;
                ensure!((400..500).contains(&r.status), "{}", r.describe());
            }
            Ok(())
        },
    );
    ctx.check(
        "errors/json-error-body",
        "error responses carry the JSON body {\"errors\":[{\"code\",\"message\"}]} with a JSON Content-Type",
        |ctx| {
            let d = digest(&bytes("never", 3));
            let r = ctx.c.get(&format!("/v2/{repo}/blobs/{d}"), &[])?;
            expect_status(&r, &[404])?;
            let ct = r.header("content-type").unwrap_or("");
            ensure!(ct.starts_with("application/json"), "Content-Type {ct:?}");
            let v = r.json().ok_or_else(|| format!("not JSON: {}", r.describe()))?;
            let e = &v["errors"][0];
            ensure!(e["code"].is_string() && e["message"].is_string(), "body {v}");
            Ok(())
        },
    );
}
