//! Beyond the spec, what real clients rely on: distribution's `_catalog` with pagination.

use crate::fixtures::{expect_status, Image};
use crate::workflows::discovery::next_link;
use crate::{ensure, Ctx};

fn repositories(r: &crate::client::Resp) -> Result<Vec<String>, String> {
    let v = r
        .json()
        .ok_or_else(|| format!("not JSON: {}", r.describe()))?;
    Ok(v["repositories"]
        .as_array()
        .ok_or_else(|| format!("no \"repositories\" list: {}", r.describe()))?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect())
}

pub fn run(ctx: &mut Ctx) {
    let names: Vec<String> = ["catalog/a", "catalog/b", "catalog/c"]
        .iter()
        .map(|n| ctx.repo(n))
        .collect();
    let setup = (|| {
        let img = Image::oci("catalog", 1, "");
        for n in &names {
            ctx.c.push_image(n, "latest", &img)?;
        }
        Ok::<(), String>(())
    })();
    let ready = || setup.clone().map_err(|e| format!("setup push failed: {e}"));

    ctx.check(
        "extensions/catalog",
        "GET /v2/_catalog lists the repositories in lexical order, following Link pages",
        |ctx| {
            ready()?;
            let mut url = "/v2/_catalog?n=1000".to_owned();
            let mut all = Vec::new();
            for _ in 0..1000 {
                let r = ctx.c.get(&url, &[])?;
                expect_status(&r, &[200])?;
                all.extend(repositories(&r)?);
                match next_link(&r) {
                    Some(next) => url = next,
                    None => break,
                }
            }
            let mut sorted = all.clone();
            sorted.sort();
            ensure!(all == sorted, "not in lexical order");
            for n in &names {
                ensure!(all.contains(n), "{n} not listed");
            }
            Ok(())
        },
    );
    ctx.check(
        "extensions/catalog-pagination",
        "_catalog?n=1&last=<name>: the next repository, with a Link rel=\"next\" while more remain",
        |ctx| {
            ready()?;
            let url = format!("/v2/_catalog?n=1&last={}", names[0]);
            let r = ctx.c.get(&url, &[])?;
            expect_status(&r, &[200])?;
            let got = repositories(&r)?;
            ensure!(got == names[1..2], "got {got:?} after {}", names[0]);
            let next = next_link(&r).ok_or("no Link header")?;
            let r = ctx.c.get(&next, &[])?;
            expect_status(&r, &[200])?;
            let got = repositories(&r)?;
            ensure!(got == names[2..3], "Link page has {got:?}");
            Ok(())
        },
    );
}
