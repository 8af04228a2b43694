//! The fuzz targets on stable Rust, where libFuzzer's coverage-guided engine cannot run: each
//! target gets its corpus (`fuzz/corpus/<target>/`, plus generated seeds), then random
//! mutations of it for a time budget (bit flips, interesting bytes and numbers, insertions,
//! deletions, duplications, splices, dictionary words). Blind, not coverage-guided — it finds
//! shallow crashes quickly and keeps the targets and corpus honest between nightly runs.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin run_corpus -- [--seconds N] [--seed S]
//!     [--target NAME]... [--write-seeds]
//! ```
//!
//! A crashing input is written to `fuzz/artifacts/<target>/crash-<sha256>` (replay it with
//! `--replay FILE --target NAME`, or `cargo fuzz run NAME FILE` on nightly); the exit status is
//! then 1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::Digest as _;

const DIR: &str = env!("CARGO_MANIFEST_DIR");
/// Inputs longer than this are cut (the parsers' own limits are far below).
const MAX_LEN: usize = 64 * 1024;

/// Words the mutator inserts: the vocabulary of each parser.
const DICTIONARY: &[&str] = &[
    "sha256:",
    "sha512:",
    ":",
    "/",
    "..",
    "%2F",
    "%2e",
    "%",
    "%zz",
    "\0",
    "-",
    ",",
    " ",
    "=",
    "&",
    "bytes=",
    "bytes ",
    "*/",
    "18446744073709551615",
    "18446744073709551616",
    "0",
    "-1",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "null",
    "true",
    "1e999",
    "\"schemaVersion\":2",
    "\"mediaType\":",
    "\"manifests\":[]",
    "\"layers\":[]",
    "\"config\":{}",
    "\"digest\":",
    "\"size\":",
    "\"urls\":[",
    "\"subject\":",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "repository:",
    "registry:catalog:*",
    ":pull,push",
    "(plugin)",
    ".",
    "eyJ",
    "\"alg\":\"none\"",
    "\"alg\":\"HS256\"",
    "\"kid\":",
    "\"x5c\":[",
    "\"keys\":[",
    "\"kty\":\"EC\"",
    "\"kty\":\"RSA\"",
    "-----BEGIN CERTIFICATE-----\n",
    "\nversion: 0.1\n",
    "storage:\n",
    "  filesystem:\n",
    "    rootdirectory: /x\n",
    "http:\n",
    "  limits:\n",
    "    bodyidletimeout: ",
    "1h30m",
    "9999999999h",
    "REGISTRY_HTTP_ADDR=",
    "REGISTRY_STORAGE_S3_BUCKET=",
    "&tag=",
    "?n=",
    "last=",
    "blobs/uploads/",
    "manifests/",
    "tags/list",
    "referrers/",
    "sha256\x00",
    "\u{feff}",
    "\u{10ffff}",
];

const INTERESTING_U64: &[u64] = &[
    0,
    1,
    63,
    64,
    127,
    128,
    255,
    256,
    65535,
    u32::MAX as u64,
    i64::MAX as u64,
    u64::MAX,
];

/// xorshift64*: reproducible with `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 0xff, 0x7f, 0x80, b'0', b'9', b'a', b'/', b':', b'%'][rng.below(10)];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let piece = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, piece);
            }
            5 | 6 => {
                let word = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                let at = rng.below(len + 1);
                v.splice(at..at, word.iter().copied());
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            8 => {
                let n = INTERESTING_U64[rng.below(INTERESTING_U64.len())];
                let bytes: Vec<u8> = if rng.below(2) == 0 {
                    n.to_string().into_bytes()
                } else {
                    n.to_be_bytes().to_vec()
                };
                if len >= bytes.len() && rng.below(2) == 0 {
                    let at = rng.below(len - bytes.len() + 1);
                    v[at..at + bytes.len()].copy_from_slice(&bytes);
                } else {
                    let at = rng.below(len + 1);
                    v.splice(at..at, bytes);
                }
            }
            _ if len > 1 => {
                // Repeat a piece many times (deep nesting, long names).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(4));
                let piece = v[i..i + n].to_vec();
                let times = 1 + rng.below(2000);
                let at = rng.below(len + 1);
                let rep: Vec<u8> = piece.iter().copied().cycle().take(n * times).collect();
                v.splice(at..at, rep);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v.truncate(MAX_LEN);
    v
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs one input; the panic message if it panicked.
fn run_one(f: berth_fuzz::Target, input: &[u8]) -> Option<String> {
    LAST_PANIC.with(|p| *p.borrow_mut() = None);
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(input))) {
        Ok(()) => None,
        Err(_) => Some(
            LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "panic".into()),
        ),
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(DIR).join("corpus").join(target)
}

fn load_corpus(target: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .map(|p| {
                    let data = std::fs::read(&p).unwrap();
                    (p, data)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    let mut inputs: Vec<Vec<u8>> = out.into_iter().map(|(_, d)| d).collect();
    if target == "token" {
        inputs.extend(
            berth_fuzz::seed_tokens()
                .into_iter()
                .map(String::into_bytes),
        );
    }
    if inputs.is_empty() {
        inputs.push(Vec::new());
    }
    inputs
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(DIR).join("artifacts").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let hex: String = sha2::Sha256::digest(input)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(format!("crash-{}", &hex[..16]));
    std::fs::write(&path, input).unwrap();
    path
}

struct Args {
    seconds: f64,
    seed: u64,
    targets: Vec<String>,
    replay: Option<PathBuf>,
    write_seeds: bool,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5.0,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
        targets: Vec::new(),
        replay: None,
        write_seeds: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--seed" => a.seed = it.next().and_then(|s| s.parse::<u64>().ok()).expect("--seed N") | 1,
            "--target" => a.targets.push(it.next().expect("--target NAME")),
            "--replay" => a.replay = Some(it.next().expect("--replay FILE").into()),
            "--write-seeds" => a.write_seeds = true,
            other => panic!("unknown argument {other:?} (--seconds N, --seed S, --target NAME, --replay FILE, --write-seeds)"),
        }
    }
    a
}

fn main() {
    let a = args();
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("{info}");
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
    let selected: Vec<(&str, berth_fuzz::Target)> = berth_fuzz::TARGETS
        .iter()
        .copied()
        .filter(|(n, _)| a.targets.is_empty() || a.targets.iter().any(|t| t == n))
        .collect();
    assert!(!selected.is_empty(), "no such target: {:?}", a.targets);
    if let Err(e) = berth_fuzz::self_check() {
        eprintln!("the fuzz fixtures are broken: {e}");
        std::process::exit(2);
    }

    if a.write_seeds {
        let dir = corpus_dir("token");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, t) in berth_fuzz::seed_tokens().iter().enumerate() {
            std::fs::write(dir.join(format!("signed-{i}")), t).unwrap();
        }
        println!("wrote the signed token seeds to {}", dir.display());
        return;
    }
    if let Some(file) = &a.replay {
        let input = std::fs::read(file).unwrap();
        for (name, f) in &selected {
            match run_one(*f, &input) {
                Some(msg) => println!("{name}: CRASH {msg}"),
                None => println!("{name}: ok"),
            }
        }
        return;
    }

    println!(
        "seed {} · {:.1}s per target · {} targets",
        a.seed,
        a.seconds,
        selected.len()
    );
    let mut rng = Rng(a.seed);
    let mut crashes = 0;
    for (name, f) in &selected {
        let corpus = load_corpus(name);
        let started = Instant::now();
        let budget = Duration::from_secs_f64(a.seconds);
        let mut runs = 0u64;
        let mut found: Vec<(PathBuf, String)> = Vec::new();
        for input in &corpus {
            runs += 1;
            if let Some(msg) = run_one(*f, input) {
                found.push((save_crash(name, input), msg));
            }
        }
        while started.elapsed() < budget && found.len() < 5 {
            let base = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, base, &corpus);
            runs += 1;
            if let Some(msg) = run_one(*f, &input) {
                found.push((save_crash(name, &input), msg));
            }
        }
        println!(
            "{name:>10}: {runs} inputs ({} in the corpus) in {:.1}s, {} crash(es)",
            corpus.len(),
            started.elapsed().as_secs_f64(),
            found.len()
        );
        for (path, msg) in &found {
            println!(
                "            {} — {}",
                path.display(),
                msg.lines().next().unwrap_or("")
            );
        }
        crashes += found.len();
    }
    if crashes > 0 {
        println!("{crashes} crash(es)");
        std::process::exit(1);
    }
    println!("0 crashes");
}
