//! The checks, one module per workflow of the spec (plus error cases and extensions). Each
//! `run` pushes what it needs into its own repositories, so workflows can run alone.

use crate::fixtures::{expect_header, expect_status};
use crate::Ctx;

pub mod discovery;
pub mod errors;
pub mod extensions;
pub mod management;
pub mod pull;
pub mod push;

/// `GET /v2/` (end-1): 200, and distribution's version header that Docker clients look for.
pub fn base(ctx: &Ctx) -> Result<(), String> {
    let r = ctx.c.get("/v2/", &[])?;
    expect_status(&r, &[200])?;
    expect_header(&r, "docker-distribution-api-version", "registry/2.0")
}
