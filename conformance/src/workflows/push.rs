//! Push: monolithic (POST+PUT, single POST), chunked, streamed, cancel, mount, and manifests of
//! every kind a registry is expected to accept or refuse.

use crate::client::{with_query, Body, Resp};
use crate::fixtures::{
    bytes, digest, expect_error, expect_header, expect_status, index, location, Image, DOCKER_LIST,
    OCI_INDEX, OCI_MANIFEST, OCTET,
};
use crate::{ensure, Ctx};

/// `Range: 0-<end>` of an upload response; `None` when missing or malformed.
fn upload_end(r: &Resp) -> Option<i64> {
    let v = r.header("range")?;
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    if a != "0" {
        return None;
    }
    b.parse().ok()
}

fn expect_upload_offset(r: &Resp, received: usize) -> Result<(), String> {
    let end = upload_end(r);
    // After n bytes the range is 0-(n-1); before any byte, registries send 0-0 (or nothing).
    let ok = match received {
        0 => end.is_none() || end == Some(0) || end == Some(-1),
        n => end == Some(n as i64 - 1),
    };
    ensure!(
        ok,
        "Range {:?} after {received} bytes ({})",
        r.header("range"),
        r.describe()
    );
    Ok(())
}

fn patch(ctx: &Ctx, loc: &str, chunk: &[u8], start: usize) -> Result<Resp, String> {
    let range = format!("{}-{}", start, start + chunk.len() - 1);
    ctx.c.send(
        "PATCH",
        loc,
        &[("Content-Type", OCTET), ("Content-Range", &range)],
        Body::Bytes(chunk),
    )
}

fn head_blob(ctx: &Ctx, repo: &str, d: &str) -> Result<Resp, String> {
    ctx.c.head(&format!("/v2/{repo}/blobs/{d}"))
}

fn expect_blob(ctx: &Ctx, repo: &str, data: &[u8]) -> Result<(), String> {
    let d = digest(data);
    let r = ctx.c.get(&format!("/v2/{repo}/blobs/{d}"), &[])?;
    expect_status(&r, &[200])?;
    ensure!(r.body == data, "blob {d} reads back different bytes");
    Ok(())
}

pub fn run(ctx: &mut Ctx) {
    let repo = ctx.repo("push");
    blobs(ctx, &repo);
    manifests(ctx, &repo);
}

fn blobs(ctx: &mut Ctx, repo: &str) {
    ctx.check(
        "push/post-put",
        "monolithic POST then PUT: 202 with Location, then 201 with Location; HEAD finds it",
        |ctx| {
            let data = bytes("post-put", 4096);
            let d = digest(&data);
            let r = ctx.c.send(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Body::Bytes(&[]),
            )?;
            expect_status(&r, &[202])?;
            let loc = location(&r)?;
            let r = ctx.c.send(
                "PUT",
                &with_query(&loc, "digest", &d),
                &[("Content-Type", OCTET)],
                Body::Bytes(&data),
            )?;
            expect_status(&r, &[201])?;
            location(&r)?;
            if let Some(h) = r.header("docker-content-digest") {
                ensure!(h == d, "Docker-Content-Digest {h}, expected {d}");
            }
            let r = head_blob(ctx, repo, &d)?;
            expect_status(&r, &[200])?;
            expect_header(&r, "content-length", &data.len().to_string())?;
            expect_blob(ctx, repo, &data)
        },
    );
    ctx.check(
        "push/single-post",
        "monolithic single POST ?digest= with the body: 201 with Location (end-4b)",
        |ctx| {
            let data = bytes("single-post", 3000);
            let d = digest(&data);
            let r = ctx.c.send(
                "POST",
                &with_query(&format!("/v2/{repo}/blobs/uploads/"), "digest", &d),
                &[("Content-Type", OCTET)],
                Body::Bytes(&data),
            )?;
            expect_status(&r, &[201])?;
            location(&r)?;
            expect_blob(ctx, repo, &data)
        },
    );
    ctx.check(
        "push/empty-blob",
        "an empty blob can be pushed and read back (Content-Length: 0)",
        |ctx| {
            let d = ctx.c.push_blob(repo, b"")?;
            let r = head_blob(ctx, repo, &d)?;
            expect_status(&r, &[200])?;
            expect_header(&r, "content-length", "0")
        },
    );
    ctx.check(
        "push/chunked",
        "chunked upload: PATCHes with Content-Range get 202 with Location and Range 0-<end>; GET status 204; PUT ?digest= closes with 201",
        |ctx| {
            let data = bytes("chunked", 3 * 100_000 + 17);
            let mut loc = ctx.c.start_upload(repo)?;
            let r = ctx.c.get(&loc, &[])?;
            expect_status(&r, &[204])?;
            location(&r)?;
            expect_upload_offset(&r, 0)?;
            let mut start = 0;
            for chunk in data.chunks(100_000) {
                let r = patch(ctx, &loc, chunk, start)?;
                expect_status(&r, &[202])?;
                start += chunk.len();
                expect_upload_offset(&r, start)?;
                loc = location(&r)?;
                let st = ctx.c.get(&loc, &[])?;
                expect_status(&st, &[204])?;
                expect_upload_offset(&st, start)?;
                loc = location(&st)?;
            }
            let r = ctx.c.send(
                "PUT",
                &with_query(&loc, "digest", &digest(&data)),
                &[],
                Body::Bytes(&[]),
            )?;
            expect_status(&r, &[201])?;
            location(&r)?;
            expect_blob(ctx, repo, &data)
        },
    );
    ctx.check(
        "push/chunked-final-chunk-in-put",
        "chunked upload whose last chunk comes with the closing PUT: 201",
        |ctx| {
            let data = bytes("final-in-put", 50_000);
            let loc = ctx.c.start_upload(repo)?;
            let r = patch(ctx, &loc, &data[..30_000], 0)?;
            expect_status(&r, &[202])?;
            let loc = location(&r)?;
            let range = format!("30000-{}", data.len() - 1);
            let r = ctx.c.send(
                "PUT",
                &with_query(&loc, "digest", &digest(&data)),
                &[("Content-Type", OCTET), ("Content-Range", &range)],
                Body::Bytes(&data[30_000..]),
            )?;
            expect_status(&r, &[201])?;
            expect_blob(ctx, repo, &data)
        },
    );
    ctx.check(
        "push/chunked-out-of-order",
        "a chunk that does not start at the current offset gets 416; the upload then continues from the offset GET reports",
        |ctx| {
            let data = bytes("out-of-order", 30_000);
            let loc = ctx.c.start_upload(repo)?;
            let r = patch(ctx, &loc, &data[..10_000], 0)?;
            expect_status(&r, &[202])?;
            let loc = location(&r)?;
            // Skips ahead: 20000- instead of 10000-.
            let r = patch(ctx, &loc, &data[20_000..], 20_000)?;
            expect_status(&r, &[416])?;
            // The same first chunk again: also out of order.
            let r = patch(ctx, &loc, &data[..10_000], 0)?;
            expect_status(&r, &[416])?;
            let st = ctx.c.get(&loc, &[])?;
            expect_status(&st, &[204])?;
            expect_upload_offset(&st, 10_000)?;
            let loc = location(&st)?;
            let r = patch(ctx, &loc, &data[10_000..], 10_000)?;
            expect_status(&r, &[202])?;
            let loc = location(&r)?;
            let r = ctx.c.send(
                "PUT",
                &with_query(&loc, "digest", &digest(&data)),
                &[],
                Body::Bytes(&[]),
            )?;
            expect_status(&r, &[201])?;
            expect_blob(ctx, repo, &data)
        },
    );
    ctx.check(
        "push/streamed",
        "streamed upload: one PATCH without Content-Range (chunked transfer encoding), then PUT ?digest=",
        |ctx| {
            let data = bytes("streamed", 200_000);
            let loc = ctx.c.start_upload(repo)?;
            let r = ctx.c.send(
                "PATCH",
                &loc,
                &[("Content-Type", OCTET)],
                Body::Chunked(&data),
            )?;
            expect_status(&r, &[202])?;
            expect_upload_offset(&r, data.len())?;
            let loc = location(&r)?;
            let r = ctx.c.send(
                "PUT",
                &with_query(&loc, "digest", &digest(&data)),
                &[],
                Body::Bytes(&[]),
            )?;
            expect_status(&r, &[201])?;
            expect_blob(ctx, repo, &data)
        },
    );
    ctx.check(
        "push/digest-mismatch",
        "closing an upload with the wrong digest: 400 DIGEST_INVALID, and neither digest becomes readable",
        |ctx| {
            let data = bytes("mismatch", 5000);
            let wrong = digest(b"something else entirely");
            let loc = ctx.c.start_upload(repo)?;
            let r = ctx.c.send(
                "PUT",
                &with_query(&loc, "digest", &wrong),
                &[("Content-Type", OCTET)],
                Body::Bytes(&data),
            )?;
            expect_error(&r, &[400], &["DIGEST_INVALID"])?;
            for d in [wrong, digest(&data)] {
                let r = head_blob(ctx, repo, &d)?;
                ensure!(r.status == 404, "blob {d} is visible after a failed upload: {}", r.describe());
            }
            Ok(())
        },
    );
    ctx.check(
        "push/cancel",
        "DELETE of an upload session: 204, after which the session is 404 BLOB_UPLOAD_UNKNOWN",
        |ctx| {
            let data = bytes("cancel", 1000);
            let loc = ctx.c.start_upload(repo)?;
            let r = patch(ctx, &loc, &data, 0)?;
            expect_status(&r, &[202])?;
            let loc = location(&r)?;
            let r = ctx.c.delete(&loc)?;
            expect_status(&r, &[204])?;
            let r = ctx.c.get(&loc, &[])?;
            expect_error(&r, &[404], &["BLOB_UPLOAD_UNKNOWN"])?;
            let r = patch(ctx, &loc, &data, 1000)?;
            expect_error(&r, &[404], &["BLOB_UPLOAD_UNKNOWN"])
        },
    );
    ctx.check(
        "push/mount",
        "cross-repository mount ?mount=&from=: 201 with Location; the blob is then readable in the target",
        |ctx| {
            let data = bytes("mount", 2222);
            let from = ctx.repo("push-mount-source");
            let d = ctx.c.push_blob(&from, &data)?;
            let target = ctx.repo("push-mount-target");
            let url = with_query(
                &with_query(&format!("/v2/{target}/blobs/uploads/"), "mount", &d),
                "from",
                &from,
            );
            let r = ctx.c.send("POST", &url, &[], Body::Bytes(&[]))?;
            expect_status(&r, &[201])?;
            location(&r)?;
            if let Some(h) = r.header("docker-content-digest") {
                ensure!(h == d, "Docker-Content-Digest {h}, expected {d}");
            }
            expect_blob(ctx, &target, &data)
        },
    );
    ctx.check(
        "push/mount-fallback",
        "a mount of a blob the source does not have falls back to a new upload session: 202 with Location",
        |ctx| {
            let from = ctx.repo("push-mount-source");
            let d = digest(b"never pushed anywhere");
            let url = with_query(
                &with_query(&format!("/v2/{repo}/blobs/uploads/"), "mount", &d),
                "from",
                &from,
            );
            let r = ctx.c.send("POST", &url, &[], Body::Bytes(&[]))?;
            expect_status(&r, &[202])?;
            let loc = location(&r)?;
            let st = ctx.c.get(&loc, &[])?;
            expect_status(&st, &[204])
        },
    );
}

fn manifests(ctx: &mut Ctx, repo: &str) {
    ctx.check(
        "push/manifest-by-tag",
        "PUT manifest by tag: 201 with Location and Docker-Content-Digest of the bytes",
        |ctx| {
            let img = Image::oci("by-tag", 1, "");
            let r = ctx.c.push_image(repo, "tagged", &img)?;
            location(&r)?;
            expect_header(&r, "docker-content-digest", &img.digest())
        },
    );
    ctx.check(
        "push/manifest-by-digest",
        "PUT manifest by digest: 201, and GET by that digest returns it",
        |ctx| {
            let img = Image::oci("by-digest", 1, "");
            let r = ctx.c.push_image(repo, &img.digest(), &img)?;
            location(&r)?;
            let r = ctx
                .c
                .get(&format!("/v2/{repo}/manifests/{}", img.digest()), &[])?;
            expect_status(&r, &[200])?;
            ensure!(r.body == img.manifest, "GET returns different bytes");
            Ok(())
        },
    );
    ctx.check(
        "push/manifest-tag-parameters",
        "PUT by digest with ?tag=a&tag=b: 201 with OCI-Tag naming both, and both tags resolve",
        |ctx| {
            let img = Image::oci("tag-params", 1, "");
            for b in img.blobs() {
                ctx.c.push_blob(repo, b)?;
            }
            let d = img.digest();
            let r = ctx.c.put_manifest(
                repo,
                &format!("{d}?tag=tp-1&tag=tp-2"),
                OCI_MANIFEST,
                &img.manifest,
            )?;
            expect_status(&r, &[201])?;
            let got: Vec<String> = r
                .header("oci-tag")
                .unwrap_or("")
                .split(',')
                .map(|t| t.trim().to_owned())
                .collect();
            ensure!(got == ["tp-1", "tp-2"], "OCI-Tag {:?}", r.header("oci-tag"));
            for t in ["tp-1", "tp-2"] {
                let r = ctx.c.head(&format!("/v2/{repo}/manifests/{t}"))?;
                expect_status(&r, &[200])?;
                expect_header(&r, "docker-content-digest", &d)?;
            }
            Ok(())
        },
    );
    ctx.check(
        "push/manifest-exact-bytes",
        "a manifest is stored in the exact bytes sent (whitespace, key order), its digest is of those bytes",
        |ctx| {
            let img = Image::oci("exact", 1, "");
            for b in img.blobs() {
                ctx.c.push_blob(repo, b)?;
            }
            let text = String::from_utf8_lossy(&img.manifest);
            let odd = format!(
                "{{\n  \"annotations\" : {{ \"z\": \"1\", \"a\": \"2\" }},\n {}  \n}}\n",
                &text[1..text.len() - 1]
            );
            let r = ctx.c.put_manifest(repo, "exact", OCI_MANIFEST, odd.as_bytes())?;
            expect_status(&r, &[201])?;
            let want = digest(odd.as_bytes());
            expect_header(&r, "docker-content-digest", &want)?;
            let r = ctx.c.get(&format!("/v2/{repo}/manifests/exact"), &[("Accept", OCI_MANIFEST)])?;
            expect_status(&r, &[200])?;
            ensure!(r.body == odd.as_bytes(), "stored bytes differ from the bytes sent");
            Ok(())
        },
    );
    ctx.check(
        "push/manifest-digest-mismatch",
        "PUT manifest by a digest that is not the digest of the body: 400 DIGEST_INVALID",
        |ctx| {
            let img = Image::oci("mismatch-manifest", 1, "");
            for b in img.blobs() {
                ctx.c.push_blob(repo, b)?;
            }
            let wrong = digest(b"not this manifest");
            let r = ctx
                .c
                .put_manifest(repo, &wrong, OCI_MANIFEST, &img.manifest)?;
            expect_error(&r, &[400], &["DIGEST_INVALID"])?;
            let r = ctx.c.head(&format!("/v2/{repo}/manifests/{wrong}"))?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "push/manifest-blob-unknown",
        "a manifest naming a blob the repository lacks: 400 MANIFEST_BLOB_UNKNOWN, no tag created",
        |ctx| {
            let img = Image::oci("missing-blob", 1, "");
            ctx.c.push_blob(repo, &img.config)?;
            let r = ctx
                .c
                .put_manifest(repo, "missing-blob", OCI_MANIFEST, &img.manifest)?;
            expect_error(&r, &[400], &["MANIFEST_BLOB_UNKNOWN"])?;
            let r = ctx.c.head(&format!("/v2/{repo}/manifests/missing-blob"))?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "push/manifest-invalid",
        "a body that is not a valid manifest of its Content-Type: 400 MANIFEST_INVALID",
        |ctx| {
            for body in [
                &b"this is not json"[..],
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":"nope","layers":[]}"#,
            ] {
                let r = ctx.c.put_manifest(repo, "invalid", OCI_MANIFEST, body)?;
                expect_error(&r, &[400], &["MANIFEST_INVALID"])?;
            }
            Ok(())
        },
    );
    ctx.check(
        "push/manifest-too-large",
        "a manifest over the registry's limit (here 5 MiB): 413, no tag created; 4 MiB is the spec's floor",
        |ctx| {
            let img = Image::oci("too-large", 1, "");
            for b in img.blobs() {
                ctx.c.push_blob(repo, b)?;
            }
            let text = String::from_utf8_lossy(&img.manifest);
            let pad = "x".repeat(5 << 20);
            let big = format!(
                "{},\"annotations\":{{\"pad\":\"{pad}\"}}}}",
                &text[..text.len() - 1]
            );
            let r = ctx.c.put_manifest(repo, "too-large", OCI_MANIFEST, big.as_bytes())?;
            expect_status(&r, &[413])?;
            let r = ctx.c.head(&format!("/v2/{repo}/manifests/too-large"))?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "push/manifest-4mib-accepted",
        "a manifest just under 4 MiB is accepted (spec: registries SHOULD accept at least 4 MB)",
        |ctx| {
            let img = Image::oci("four-mib", 1, "");
            for b in img.blobs() {
                ctx.c.push_blob(repo, b)?;
            }
            let text = String::from_utf8_lossy(&img.manifest);
            let pad = "y".repeat(4_000_000 - text.len() - 40);
            let big = format!(
                "{},\"annotations\":{{\"pad\":\"{pad}\"}}}}",
                &text[..text.len() - 1]
            );
            let r = ctx
                .c
                .put_manifest(repo, "four-mib", OCI_MANIFEST, big.as_bytes())?;
            expect_status(&r, &[201])
        },
    );
    ctx.check(
        "push/oci-index",
        "an OCI image index over pushed manifests: 201; GET returns it with the index Content-Type",
        |ctx| {
            let a = Image::oci("index-amd64", 1, "");
            let b = Image::oci("index-arm64", 1, "");
            ctx.c.push_image(repo, &a.digest(), &a)?;
            ctx.c.push_image(repo, &b.digest(), &b)?;
            let idx = index(OCI_INDEX, &[(&a, "amd64"), (&b, "arm64")], "");
            let r = ctx.c.put_manifest(repo, "multiarch", OCI_INDEX, &idx)?;
            expect_status(&r, &[201])?;
            expect_header(&r, "docker-content-digest", &digest(&idx))?;
            let r = ctx.c.get(
                &format!("/v2/{repo}/manifests/multiarch"),
                &[("Accept", OCI_INDEX)],
            )?;
            expect_status(&r, &[200])?;
            expect_header(&r, "content-type", OCI_INDEX)?;
            ensure!(r.body == idx, "index bytes differ");
            Ok(())
        },
    );
    ctx.check(
        "push/index-child-unknown",
        "an index naming a manifest the repository lacks: 400 MANIFEST_BLOB_UNKNOWN",
        |ctx| {
            let a = Image::oci("index-known", 1, "");
            let missing = Image::oci("index-missing", 1, "");
            ctx.c.push_image(repo, &a.digest(), &a)?;
            let idx = index(OCI_INDEX, &[(&a, "amd64"), (&missing, "arm64")], "");
            let r = ctx.c.put_manifest(repo, "broken-index", OCI_INDEX, &idx)?;
            expect_error(&r, &[400], &["MANIFEST_BLOB_UNKNOWN"])
        },
    );
    ctx.check(
        "push/docker-schema2",
        "a Docker schema2 manifest and manifest list are accepted and served with their media types",
        |ctx| {
            let img = Image::docker("docker-v2");
            ctx.c.push_image(repo, "docker", &img)?;
            let r = ctx.c.get(
                &format!("/v2/{repo}/manifests/docker"),
                &[("Accept", img.media_type)],
            )?;
            expect_status(&r, &[200])?;
            expect_header(&r, "content-type", img.media_type)?;
            let list = index(DOCKER_LIST, &[(&img, "amd64")], "");
            let r = ctx.c.put_manifest(repo, "docker-list", DOCKER_LIST, &list)?;
            expect_status(&r, &[201])?;
            let r = ctx.c.get(
                &format!("/v2/{repo}/manifests/docker-list"),
                &[("Accept", DOCKER_LIST)],
            )?;
            expect_status(&r, &[200])?;
            expect_header(&r, "content-type", DOCKER_LIST)?;
            ensure!(r.body == list, "manifest list bytes differ");
            Ok(())
        },
    );
    ctx.check(
        "push/artifact",
        "an artifact manifest (artifactType, empty config) is accepted and served",
        |ctx| {
            let art = Image::artifact("artifact", "application/vnd.example.thing", None);
            ctx.c.push_image(repo, "artifact", &art)?;
            let r = ctx.c.get(
                &format!("/v2/{repo}/manifests/artifact"),
                &[("Accept", OCI_MANIFEST)],
            )?;
            expect_status(&r, &[200])?;
            ensure!(r.body == art.manifest, "artifact bytes differ");
            Ok(())
        },
    );
    ctx.check(
        "push/subject-not-yet-pushed",
        "a manifest whose subject does not exist (yet) is accepted (spec: MUST initially accept)",
        |ctx| {
            let ghost = digest(b"a subject pushed later");
            let art = Image::artifact(
                "early-referrer",
                "application/vnd.example.sig",
                Some((&ghost, 123)),
            );
            ctx.c.push_image(repo, &art.digest(), &art).map(|_| ())
        },
    );
    ctx.check(
        "push/schema1-refused",
        "a Docker schema1 (signed) manifest is refused with 400",
        |ctx| {
            let body = br#"{"schemaVersion":1,"name":"x","tag":"y","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#;
            let r = ctx.c.put_manifest(
                repo,
                "schema1",
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                body,
            )?;
            expect_error(&r, &[400], &["MANIFEST_INVALID", "UNSUPPORTED"])
        },
    );
}
