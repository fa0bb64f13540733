//! The report binary end to end: every chart drawn from the fixtures in `tests/fixtures/build`
//! (a target directory's `criterion/` and `bench-data/`), and skipped where its data is absent.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHARTS: [&str; 3] = [
    "latency_by_tier.png",
    "workload_zipf_ops.png",
    "hit_ratio.png",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build")
}

/// A fresh directory under cargo's temporary directory for integration tests.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-report-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn report(args: &[&Path]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_layercache-bench-report"))
        .args(args)
        .output()
        .expect("run layercache-bench-report");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The width and height of a PNG, after checking its signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    // The first chunk is IHDR: length (4), type (4), width (4), height (4).
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn every_chart_is_drawn_from_the_fixtures() {
    let out = temp_dir("all");
    let output = report(&[&fixtures(), &out]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for chart in CHARTS {
        assert!(
            stdout.contains(&format!("drew {}", out.join(chart).display())),
            "{stdout}"
        );
        let (width, height) = png_size(&out.join(chart));
        assert!((800..=4000).contains(&width), "{chart}: width {width}");
        assert!((300..=3000).contains(&height), "{chart}: height {height}");
        // A chart with text and bars, not an empty canvas: PNG compresses a blank one to little.
        let size = fs::metadata(out.join(chart)).unwrap().len();
        assert!(size > 10_000, "{chart}: only {size} bytes");
    }
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_chart_without_data_is_skipped_and_its_older_png_removed() {
    let target = temp_dir("empty-target");
    let out = temp_dir("empty-out");
    fs::write(out.join("hit_ratio.png"), b"an older chart").unwrap();
    let output = report(&[&target, &out]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for chart in CHARTS {
        assert!(stdout.contains(&format!("skipped {chart}")), "{stdout}");
        assert!(!out.join(chart).exists(), "{chart} left behind");
    }
    assert!(stdout.contains("removed the older chart"), "{stdout}");
    fs::remove_dir_all(&target).unwrap();
    fs::remove_dir_all(&out).unwrap();
}

#[test]
fn files_older_than_since_are_left_out() {
    let out = temp_dir("since");
    let fixtures = fixtures();
    // Far in the future: no file qualifies, so nothing is drawn (what a filtered run that wrote
    // none of them sees).
    let output = Command::new(env!("CARGO_BIN_EXE_layercache-bench-report"))
        .args(["--since", "4000000000"])
        .arg(&fixtures)
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    for chart in CHARTS {
        assert!(stdout.contains(&format!("skipped {chart}")), "{stdout}");
    }
    assert!(stdout.contains("written by this run"), "{stdout}");
    // Long ago: every file qualifies.
    let output = Command::new(env!("CARGO_BIN_EXE_layercache-bench-report"))
        .args(["--since", "1"])
        .arg(&fixtures)
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success());
    for chart in CHARTS {
        assert!(out.join(chart).is_file(), "{chart}");
    }
    fs::remove_dir_all(&out).unwrap();
}
