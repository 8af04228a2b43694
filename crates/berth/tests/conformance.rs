//! The conformance runner (`conformance/`) against a real `berth serve` — every check must
//! pass — and against Debian's distribution 2.8 on the same checks, which must fail exactly
//! the known gaps listed in `conformance/known-gaps/distribution-2.8.txt`. The second run is
//! what shows the checks themselves are right: they pass where a reference registry behaves
//! and fail where it is known not to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use berth_conformance::{parse_gaps, run, Gaps, Options};
use support::{Berth, Distribution};

#[test]
fn berth_passes_every_check() {
    let berth = Berth::start();
    let report = run(&Options::new(&berth.url));
    let verdict = report.judge(&Gaps::default());
    assert!(
        verdict.ok(),
        "{}\n{verdict}\nserver log:\n{}",
        report.render(&Gaps::default()),
        berth.log()
    );
    assert!(
        report.results.len() >= 60,
        "only {} checks ran",
        report.results.len()
    );
}

#[test]
fn distribution_fails_exactly_its_known_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(&dir.path().join("data"));
    let gaps = parse_gaps(include_str!(
        "../../../conformance/known-gaps/distribution-2.8.txt"
    ));
    assert!(gaps.fail.len() > 10, "the gaps file did not parse");
    let report = run(&Options::new(&dist.url));
    let verdict = report.judge(&gaps);
    assert!(verdict.ok(), "{}\n{verdict}", report.render(&gaps));
}
