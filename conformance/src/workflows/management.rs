//! Content management: deleting tags, manifests and blobs, and what stays visible afterwards.
//! The registry must have deletes enabled.

use crate::fixtures::{digest, expect_status, Image};
use crate::workflows::discovery::next_link;
use crate::{ensure, Ctx};

fn tags_of(ctx: &Ctx, repo: &str) -> Result<Vec<String>, String> {
    let mut url = format!("/v2/{repo}/tags/list");
    let mut all = Vec::new();
    for _ in 0..100 {
        let r = ctx.c.get(&url, &[])?;
        if r.status == 404 {
            return Ok(all);
        }
        expect_status(&r, &[200])?;
        let v = r.json().unwrap_or_default();
        if let Some(tags) = v["tags"].as_array() {
            all.extend(tags.iter().filter_map(|t| t.as_str().map(str::to_owned)));
        }
        match next_link(&r) {
            Some(next) => url = next,
            None => break,
        }
    }
    Ok(all)
}

pub fn run(ctx: &mut Ctx) {
    let repo = ctx.repo("delete");
    let img = Image::oci("delete", 2, "");
    let md = img.digest();
    let setup = (|| {
        ctx.c.push_image(&repo, "keep", &img)?;
        for t in ["drop", "also"] {
            let r = ctx
                .c
                .put_manifest(&repo, t, img.media_type, &img.manifest)?;
            expect_status(&r, &[201])?;
        }
        Ok::<(), String>(())
    })();
    let ready = || setup.clone().map_err(|e| format!("setup push failed: {e}"));

    ctx.check(
        "management/delete-tag",
        "DELETE manifests/<tag>: 202; the tag is gone, the manifest and other tags stay",
        |ctx| {
            ready()?;
            let r = ctx.c.delete(&format!("/v2/{repo}/manifests/drop"))?;
            expect_status(&r, &[202])?;
            let r = ctx.c.get(&format!("/v2/{repo}/manifests/drop"), &[])?;
            expect_status(&r, &[404])?;
            for reference in ["keep", md.as_str()] {
                let r = ctx.c.head(&format!("/v2/{repo}/manifests/{reference}"))?;
                ensure!(
                    r.status == 200,
                    "{reference} went with the tag: {}",
                    r.describe()
                );
            }
            let tags = tags_of(ctx, &repo)?;
            ensure!(
                !tags.contains(&"drop".to_owned()),
                "tags still list it: {tags:?}"
            );
            Ok(())
        },
    );
    ctx.check(
        "management/delete-manifest",
        "DELETE manifests/<digest>: 202; the manifest and every tag pointing at it are 404",
        |ctx| {
            ready()?;
            let r = ctx.c.delete(&format!("/v2/{repo}/manifests/{md}"))?;
            expect_status(&r, &[202])?;
            for reference in [md.as_str(), "keep", "also"] {
                let r = ctx
                    .c
                    .get(&format!("/v2/{repo}/manifests/{reference}"), &[])?;
                ensure!(
                    r.status == 404,
                    "{reference} still served: {}",
                    r.describe()
                );
            }
            let tags = tags_of(ctx, &repo)?;
            ensure!(
                !tags.iter().any(|t| t == "keep" || t == "also"),
                "tags still listed: {tags:?}"
            );
            Ok(())
        },
    );
    ctx.check(
        "management/delete-manifest-unknown",
        "DELETE of a manifest digest the repository does not have: 404",
        |ctx| {
            ready()?;
            let d = digest(b"never a manifest here");
            let r = ctx.c.delete(&format!("/v2/{repo}/manifests/{d}"))?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "management/delete-blob",
        "DELETE blobs/<digest>: 202; the blob is then 404, and a second DELETE is 404",
        |ctx| {
            ready()?;
            let d = digest(&img.layers[0]);
            let r = ctx.c.delete(&format!("/v2/{repo}/blobs/{d}"))?;
            expect_status(&r, &[202])?;
            let r = ctx.c.head(&format!("/v2/{repo}/blobs/{d}"))?;
            expect_status(&r, &[404])?;
            let r = ctx.c.delete(&format!("/v2/{repo}/blobs/{d}"))?;
            expect_status(&r, &[404])
        },
    );
    ctx.check(
        "management/delete-referrer",
        "deleting a referrer removes it from the subject's referrers list",
        |ctx| {
            let repo = ctx.repo("delete-referrer");
            let subject = Image::oci("delete-subject", 1, "");
            ctx.c.push_image(&repo, "subject", &subject)?;
            let sd = subject.digest();
            let art = Image::artifact(
                "delete-art",
                "application/vnd.example.gone",
                Some((&sd, subject.manifest.len())),
            );
            ctx.c.push_image(&repo, &art.digest(), &art)?;
            let r = ctx
                .c
                .delete(&format!("/v2/{repo}/manifests/{}", art.digest()))?;
            expect_status(&r, &[202])?;
            let r = ctx.c.get(&format!("/v2/{repo}/referrers/{sd}"), &[])?;
            expect_status(&r, &[200])?;
            let v = r.json().unwrap_or_default();
            let listed = v["manifests"]
                .as_array()
                .map(|a| a.iter().any(|m| m["digest"] == art.digest()))
                .unwrap_or(false);
            ensure!(!listed, "deleted referrer still listed: {v}");
            Ok(())
        },
    );
}
