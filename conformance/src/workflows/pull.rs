//! Pull: manifests by tag and digest, blobs, `HEAD`, `Range`, and 404s for what is unknown.

use crate::fixtures::{
    bytes, digest, expect_error, expect_header, expect_status, Image, OCI_MANIFEST,
};
use crate::{ensure, Ctx};

pub fn run(ctx: &mut Ctx) {
    let repo = ctx.repo("pull");
    let img = Image::oci("pull", 2, "");
    let md = img.digest();
    let setup = ctx.c.push_image(&repo, "v1", &img).map(|_| ());
    let ready = || setup.clone().map_err(|e| format!("setup push failed: {e}"));

    ctx.check(
        "pull/manifest-by-tag",
        "GET manifest by tag: 200, the pushed bytes, its Content-Type and digest",
        |ctx| {
            ready()?;
            let r = ctx.c.get(
                &format!("/v2/{repo}/manifests/v1"),
                &[("Accept", OCI_MANIFEST)],
            )?;
            expect_status(&r, &[200])?;
            ensure!(
                r.body == img.manifest,
                "body differs from the pushed manifest"
            );
            expect_header(&r, "content-type", OCI_MANIFEST)?;
            if let Some(d) = r.header("docker-content-digest") {
                ensure!(
                    d == md,
                    "Docker-Content-Digest {d} is not the manifest's digest {md}"
                );
            }
            Ok(())
        },
    );
    ctx.check(
        "pull/manifest-by-digest",
        "GET manifest by digest: 200 and the pushed bytes",
        |ctx| {
            ready()?;
            let r = ctx.c.get(
                &format!("/v2/{repo}/manifests/{md}"),
                &[("Accept", OCI_MANIFEST)],
            )?;
            expect_status(&r, &[200])?;
            ensure!(
                r.body == img.manifest,
                "body differs from the pushed manifest"
            );
            Ok(())
        },
    );
    ctx.check(
        "pull/manifest-head",
        "HEAD manifest by tag and digest: 200, Content-Length and Docker-Content-Digest",
        |ctx| {
            ready()?;
            for reference in ["v1", md.as_str()] {
                let r = ctx.c.head(&format!("/v2/{repo}/manifests/{reference}"))?;
                expect_status(&r, &[200])?;
                expect_header(&r, "content-length", &img.manifest.len().to_string())?;
                expect_header(&r, "docker-content-digest", &md)?;
            }
            Ok(())
        },
    );
    ctx.check(
        "pull/blob-get",
        "GET blob: 200, the bytes, and a matching Docker-Content-Digest",
        |ctx| {
            ready()?;
            for b in img.blobs() {
                let d = digest(b);
                let r = ctx.c.get(&format!("/v2/{repo}/blobs/{d}"), &[])?;
                expect_status(&r, &[200])?;
                ensure!(&r.body == b, "blob {d}: body differs");
                if let Some(h) = r.header("docker-content-digest") {
                    ensure!(h == d, "Docker-Content-Digest {h} for blob {d}");
                }
            }
            Ok(())
        },
    );
    ctx.check(
        "pull/blob-head",
        "HEAD blob: 200 with Content-Length and Docker-Content-Digest",
        |ctx| {
            ready()?;
            let b = &img.layers[0];
            let d = digest(b);
            let r = ctx.c.head(&format!("/v2/{repo}/blobs/{d}"))?;
            expect_status(&r, &[200])?;
            expect_header(&r, "content-length", &b.len().to_string())?;
            expect_header(&r, "docker-content-digest", &d)
        },
    );
    ctx.check(
        "pull/blob-range",
        "GET blob with Range (RFC 9110): 206, Content-Range and exactly those bytes",
        |ctx| {
            ready()?;
            let b = &img.layers[1];
            let d = digest(b);
            let len = b.len();
            for (range, start, end) in [
                ("bytes=10-19".to_owned(), 10, 19),
                (format!("bytes={}-", len - 7), len - 7, len - 1),
                ("bytes=-5".to_owned(), len - 5, len - 1),
            ] {
                let r = ctx
                    .c
                    .get(&format!("/v2/{repo}/blobs/{d}"), &[("Range", &range)])?;
                expect_status(&r, &[206])?;
                expect_header(&r, "content-range", &format!("bytes {start}-{end}/{len}"))?;
                ensure!(r.body == b[start..=end], "{range}: wrong bytes");
            }
            Ok(())
        },
    );
    ctx.check(
        "pull/blob-range-unsatisfiable",
        "GET blob with a Range past its end: 416",
        |ctx| {
            ready()?;
            let b = &img.layers[1];
            let d = digest(b);
            let range = format!("bytes={}-", b.len() + 10);
            let r = ctx
                .c
                .get(&format!("/v2/{repo}/blobs/{d}"), &[("Range", &range)])?;
            expect_status(&r, &[416])
        },
    );
    ctx.check(
        "pull/manifest-unknown",
        "GET an unknown tag and an unknown digest: 404 MANIFEST_UNKNOWN",
        |ctx| {
            ready()?;
            let unknown = digest(b"no such manifest");
            for reference in ["nosuchtag", unknown.as_str()] {
                let r = ctx
                    .c
                    .get(&format!("/v2/{repo}/manifests/{reference}"), &[])?;
                expect_error(&r, &[404], &["MANIFEST_UNKNOWN"])?;
            }
            Ok(())
        },
    );
    ctx.check(
        "pull/manifest-invalid-tag",
        "GET and HEAD of a reference that is not a valid tag (.INVALID_MANIFEST_NAME): 404",
        |ctx| {
            ready()?;
            let path = format!("/v2/{repo}/manifests/.INVALID_MANIFEST_NAME");
            let r = ctx.c.get(&path, &[])?;
            expect_status(&r, &[404])?;
            let r = ctx.c.head(&path)?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "pull/blob-unknown",
        "GET and HEAD an unknown blob: 404 (BLOB_UNKNOWN on GET)",
        |ctx| {
            ready()?;
            let d = digest(&bytes("never pushed", 10));
            let r = ctx.c.get(&format!("/v2/{repo}/blobs/{d}"), &[])?;
            expect_error(&r, &[404], &["BLOB_UNKNOWN"])?;
            let r = ctx.c.head(&format!("/v2/{repo}/blobs/{d}"))?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "pull/blob-not-linked",
        "a blob pushed to another repository is 404 in this one (no cross-repository reads)",
        |ctx| {
            ready()?;
            let d = digest(&img.layers[0]);
            let other = ctx.repo("pull-other");
            ctx.c.push_blob(&other, &bytes("pull-other", 10))?;
            let r = ctx.c.head(&format!("/v2/{other}/blobs/{d}"))?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "pull/repository-unknown",
        "GET a manifest of a repository that does not exist: 404 (end-3)",
        |ctx| {
            let r = ctx.c.get(
                &format!("/v2/{}/manifests/latest", ctx.repo("never/created")),
                &[],
            )?;
            expect_error(&r, &[404], &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"])
        },
    );
}
