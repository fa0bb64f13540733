//! Development tasks for the layercache workspace (std only).
//!
//! Run through the cargo alias in `.cargo/config.toml`:
//!
//! ```text
//! cargo xtask test           # the CI entry: every check, in order
//! cargo xtask lint           # rustfmt, clippy, architecture checks
//! cargo xtask bench [ARGS]   # the bench suite, short timings; target/bench-summary.md
//! cargo xtask fuzz [SECONDS]  # fuzz the envelope decoder (default 60 s)
//! cargo xtask redis          # install redis-server when missing
//! cargo xtask postgres       # install the PostgreSQL server binaries when missing
//! cargo xtask arch           # architecture checks only
//! ```
//!
//! Every command runs with the workspace root as its working directory.

mod arch;
mod bench;

use std::{
    env,
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

/// Usage text printed by `cargo xtask help`.
const USAGE: &str = "\
Development tasks for layercache.

USAGE:
    cargo xtask <COMMAND> [ARGS]

COMMANDS:
    test            The CI entry. In order, stopping at the first failure:
                      ensure redis-server, ensure postgresql, rustfmt --check,
                      clippy -D warnings, architecture checks, tests (incl. real
                      Redis and PostgreSQL), doc tests, rustdoc -D warnings,
                      benches build, quickstart example.
    lint            rustfmt --check, clippy -D warnings, architecture checks.
    arch            Architecture checks only (which crate may depend on which).
    bench [ARGS]    The criterion suite (cargo bench -p benches -- ARGS, e.g. a filter:
                      `cargo xtask bench tiered_get`) with short timings
                      (LAYERCACHE_BENCH_QUICK; `--full`: each group's own), then
                      target/bench-summary.md: medians with their spread, the ratios
                      the issues name, what workload_zipf and hit_ratio print; and
                      the charts (target/bench-charts/*.png). `--charts-only`
                      redraws the charts from the last run's data without running.
                      About 6 minutes on 2 cores once built; needs redis-server
                      (ensured).
    fuzz [SECONDS]  Fuzz the envelope decoder for SECONDS (default 60) with cargo-fuzz
                      (installed when missing) on the stable toolchain, from the seed
                      corpus in fuzz/corpus/envelope_decode; crashes land in
                      fuzz/artifacts/envelope_decode and fail the command.
    redis           Ensure redis-server is installed (apt-get when root).
    postgres        Ensure the PostgreSQL server binaries (initdb, postgres) are
                      installed: apt-get install postgresql when root. Looked for in
                      LAYERCACHE_POSTGRES_BIN, on PATH, then /usr/lib/postgresql/*/bin.
    help            This text.

ENVIRONMENT:
    LAYERCACHE_REDIS_SERVER   path to a redis-server binary to use instead of PATH
    LAYERCACHE_POSTGRES_BIN   directory holding initdb and postgres, used instead of PATH
    LAYERCACHE_TRACES         directory of the ARC traces for `bench` (default ../shared/traces)
    LAYERCACHE_TRACE_REQUESTS requests replayed per trace by `bench` (default 500000; 0: all)
    LAYERCACHE_HIT_RATIO_RUNS replays of each TinyLFU row of `hit_ratio` per side (default 9)
    CARGO                     cargo binary to run (set by cargo itself)
";

/// Feature selection for the build steps.
///
/// `--all-features` makes sure optional features (e.g. `tls` on
/// `layercache-redis`) compile; empty it to build default features only.
const FEATURES: &[&str] = &["--all-features"];

/// The fuzz target of `cargo xtask fuzz` (fuzz/fuzz_targets/), and its seed corpus's directory
/// name under fuzz/corpus/.
const FUZZ_TARGET: &str = "envelope_decode";

/// How long `cargo xtask fuzz` runs without an argument, in seconds.
const DEFAULT_FUZZ_SECONDS: u64 = 60;

/// Hint printed when redis-server is missing and cannot be installed here.
const REDIS_INSTALL_HINT: &str = "install it with `sudo apt-get install redis-server` (Debian/Ubuntu) \
     or `brew install redis` (macOS), or set LAYERCACHE_REDIS_SERVER to a redis-server binary";

/// Hint printed when the PostgreSQL server binaries are missing and cannot be installed here.
const POSTGRES_INSTALL_HINT: &str = "install them with `sudo apt-get install postgresql` \
     (Debian/Ubuntu) or `brew install postgresql` (macOS), or set LAYERCACHE_POSTGRES_BIN to the \
     directory holding initdb and postgres";

/// Where Debian puts the PostgreSQL server binaries, off PATH: `DIR/VERSION/bin`.
const DEBIAN_POSTGRES_DIR: &str = "/usr/lib/postgresql";

/// The error of a task: a message for the user.
#[derive(Debug)]
pub(crate) struct Error(String);

impl Error {
    /// An error with the given message.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Result of a task; `()` by default.
pub(crate) type Result<T = ()> = std::result::Result<T, Error>;

/// One named step of a pipeline.
struct Step<'a> {
    /// Name shown in the banner, the summary and the failure message.
    name: &'static str,
    /// What the step does.
    run: Box<dyn Fn() -> Result + 'a>,
}

impl<'a> Step<'a> {
    /// A step named `name` running `run`.
    fn new(name: &'static str, run: impl Fn() -> Result + 'a) -> Self {
        Self {
            name,
            run: Box::new(run),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };

    match command {
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        "test" if rest.is_empty() => run_steps(&test_steps()),
        "lint" if rest.is_empty() => run_steps(&lint_steps()),
        "redis" if rest.is_empty() => run_steps(&[redis_step()]),
        "postgres" if rest.is_empty() => run_steps(&[postgres_step()]),
        "arch" if rest.is_empty() => run_steps(&[arch_step()]),
        "bench" => run_steps(&[redis_step(), Step::new("benches", || bench::bench(rest))]),
        "fuzz" => match fuzz_seconds(rest) {
            Some(seconds) => run_steps(&fuzz_steps(seconds)),
            None => {
                eprintln!(
                    "error: `cargo xtask fuzz` takes one optional number of seconds, got {rest:?}\n"
                );
                eprint!("{USAGE}");
                ExitCode::from(2)
            }
        },
        "test" | "lint" | "redis" | "postgres" | "arch" => {
            eprintln!("error: `cargo xtask {command}` takes no arguments, got {rest:?}\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
        other => {
            eprintln!("error: unknown command `{other}`\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The steps of `cargo xtask test`, in order.
fn test_steps() -> Vec<Step<'static>> {
    let mut steps = vec![redis_step(), postgres_step()];
    steps.extend(lint_steps());
    steps.extend([
        Step::new("tests", || {
            run(cargo()
                .args(["test", "--workspace", "--all-targets"])
                .args(FEATURES))
        }),
        Step::new("doc tests", || {
            run(cargo()
                .args(["test", "--workspace", "--doc"])
                .args(FEATURES))
        }),
        Step::new("rustdoc", || {
            run(cargo()
                .args(["doc", "--workspace", "--no-deps"])
                .args(FEATURES)
                .env("RUSTDOCFLAGS", "-D warnings"))
        }),
        Step::new("benches build", || {
            run(cargo().args(["bench", "--workspace", "--no-run"]))
        }),
        Step::new("quickstart example", || {
            run(cargo().args([
                "run",
                "--quiet",
                "-p",
                "examples",
                "--example",
                "quickstart",
            ]))
        }),
    ]);
    steps
}

/// The seconds `cargo xtask fuzz` was asked to run: none given is the default, anything but one
/// positive number is `None`.
fn fuzz_seconds(args: &[String]) -> Option<u64> {
    match args {
        [] => Some(DEFAULT_FUZZ_SECONDS),
        [seconds] => seconds.parse().ok().filter(|&s| s > 0),
        _ => None,
    }
}

/// The steps of `cargo xtask fuzz`: install cargo-fuzz when missing, then fuzz.
///
/// The fuzz crate is its own workspace with its own target dir (fuzz/target), so its
/// instrumented build never invalidates the workspace's. cargo-fuzz passes nightly `-Z` flags
/// (the sanitizer, coverage instrumentation); `RUSTC_BOOTSTRAP=1` lets the stable toolchain
/// take them. New inputs go to a scratch corpus under fuzz/target, so the committed seed
/// corpus stays small.
fn fuzz_steps(seconds: u64) -> Vec<Step<'static>> {
    vec![
        Step::new("ensure cargo-fuzz", ensure_cargo_fuzz),
        Step::new("fuzz envelope_decode", move || {
            let fuzz = workspace_root().join("fuzz");
            let scratch = fuzz.join("target").join("corpus").join(FUZZ_TARGET);
            std::fs::create_dir_all(&scratch)
                .map_err(|e| Error::new(format!("cannot create {}: {e}", scratch.display())))?;
            run(cargo()
                .args(["fuzz", "run", FUZZ_TARGET, "--sanitizer", "address"])
                .arg("--fuzz-dir")
                .arg(&fuzz)
                .arg("--target-dir")
                .arg(fuzz.join("target"))
                .arg(&scratch)
                .arg(fuzz.join("corpus").join(FUZZ_TARGET))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-print_final_stats=1")
                .env("RUSTC_BOOTSTRAP", "1"))
        }),
    ]
}

/// Installs cargo-fuzz with `cargo install --locked` unless `cargo fuzz` already runs.
fn ensure_cargo_fuzz() -> Result {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if installed {
        println!("    cargo-fuzz is installed");
        return Ok(());
    }
    run(cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// The steps of `cargo xtask lint` (also part of `cargo xtask test`).
fn lint_steps() -> Vec<Step<'static>> {
    vec![
        Step::new("rustfmt", || {
            run(cargo().args(["fmt", "--all", "--", "--check"]))
        }),
        Step::new("clippy", || {
            run(cargo()
                .args(["clippy", "--workspace", "--all-targets"])
                .args(FEATURES)
                .args(["--", "-D", "warnings"]))
        }),
        arch_step(),
    ]
}

/// The step checking the architecture rules of [`arch::RULES`].
fn arch_step() -> Step<'static> {
    Step::new("architecture checks", arch::check)
}

/// The step ensuring a redis-server binary is available.
fn redis_step() -> Step<'static> {
    Step::new("ensure redis-server", ensure_redis_server)
}

/// The step ensuring the PostgreSQL server binaries are available.
fn postgres_step() -> Step<'static> {
    Step::new("ensure postgresql", ensure_postgres)
}

/// Runs `steps` in order with a banner and timing each, stopping at the first
/// failure; prints a summary table at the end.
fn run_steps(steps: &[Step<'_>]) -> ExitCode {
    let total = Instant::now();
    let mut times: Vec<(Duration, bool)> = Vec::with_capacity(steps.len());
    let mut failure = None;

    for step in steps {
        println!("\n==> {}", step.name);
        let start = Instant::now();
        let result = (step.run)();
        let took = start.elapsed();
        times.push((took, result.is_ok()));
        match result {
            Ok(()) => println!("<== {}: ok ({})", step.name, secs(took)),
            Err(error) => {
                println!("<== {}: FAILED ({})", step.name, secs(took));
                failure = Some((step.name, error));
                break;
            }
        }
    }

    let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    println!("\n{:<width$}  {:<7}  {:>9}", "step", "status", "time");
    println!("{}", "-".repeat(width + 20));
    for (i, step) in steps.iter().enumerate() {
        let (status, time) = match times.get(i) {
            Some(&(took, true)) => ("ok", secs(took)),
            Some(&(took, false)) => ("FAILED", secs(took)),
            None => ("skipped", String::from("-")),
        };
        println!("{:<width$}  {status:<7}  {time:>9}", step.name);
    }
    println!("{}", "-".repeat(width + 20));
    println!(
        "{:<width$}  {:<7}  {:>9}",
        "total",
        "",
        secs(total.elapsed())
    );

    match failure {
        None => ExitCode::SUCCESS,
        Some((name, error)) => {
            eprintln!("\nerror: step `{name}` failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A duration as seconds, e.g. `12.34s`.
fn secs(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// The workspace root (the parent of this crate's manifest directory).
fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// A cargo command (from `$CARGO`, else `cargo`) run in the workspace root.
pub(crate) fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(workspace_root());
    command
}

/// Runs `command` with inherited stdio, failing unless it exits successfully.
pub(crate) fn run(command: &mut Command) -> Result {
    let shown = show(command);
    println!("$ {shown}");
    let status = command
        .status()
        .map_err(|e| Error::new(format!("could not start `{shown}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("`{shown}` failed ({status})")))
    }
}

/// Runs `command` and returns its standard output (stderr is inherited),
/// failing unless it exits successfully.
pub(crate) fn output(command: &mut Command) -> Result<String> {
    let shown = show(command);
    println!("$ {shown}");
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::new(format!("could not start `{shown}`: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::new(format!("`{shown}` failed ({})", out.status)))
    }
}

/// A command as a shell-like line, environment overrides first.
fn show(command: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            format!("{s:?}")
        } else {
            s.into_owned()
        }
    };
    let mut parts: Vec<String> = command
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))))
        .collect();
    let program = Path::new(command.get_program());
    let program = match program.file_name() {
        // `$CARGO` is an absolute path; show just `cargo`.
        Some(name) if name == "cargo" || name == "cargo.exe" => name,
        _ => program.as_os_str(),
    };
    parts.push(quote(program));
    parts.extend(command.get_args().map(quote));
    parts.join(" ")
}

/// Makes sure a redis-server binary is available, installing it with apt-get
/// when missing and running as root; prints the version found.
fn ensure_redis_server() -> Result {
    let server = match find_redis_server() {
        Some(server) => server,
        None => {
            install_redis_server()?;
            find_redis_server().ok_or_else(|| {
                Error::new(format!(
                    "redis-server still not found on PATH after installing it; {REDIS_INSTALL_HINT}"
                ))
            })?
        }
    };
    let version = output(Command::new(&server).arg("--version"))?;
    println!("    using {}: {}", server.display(), version.trim());
    Ok(())
}

/// `$LAYERCACHE_REDIS_SERVER` when it names an existing file, else
/// `redis-server` from PATH.
fn find_redis_server() -> Option<PathBuf> {
    if let Some(path) = env::var_os("LAYERCACHE_REDIS_SERVER") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
        println!(
            "    note: LAYERCACHE_REDIS_SERVER={} is not an existing file; looking on PATH",
            path.display()
        );
    }
    which("redis-server")
}

/// Installs redis-server with apt-get; only possible as root.
fn install_redis_server() -> Result {
    println!("    redis-server not found on PATH");
    if !is_root() {
        return Err(Error::new(format!(
            "redis-server is missing and this is not root, so it is not installed automatically; \
             {REDIS_INSTALL_HINT}"
        )));
    }
    if which("apt-get").is_none() {
        return Err(Error::new(format!(
            "redis-server is missing and apt-get is not available to install it; {REDIS_INSTALL_HINT}"
        )));
    }
    apt_get(&["update"])?;
    apt_get(&["install", "-y", "--no-install-recommends", "redis-server"])
}

/// Makes sure `initdb` (and so the PostgreSQL server) is available, installing the
/// `postgresql` package with apt-get when missing and running as root; prints the version found.
/// Installing it may start Debian's own cluster on port 5432; the testkit never uses that one.
fn ensure_postgres() -> Result {
    let initdb = match find_initdb() {
        Some(initdb) => initdb,
        None => {
            println!(
                "    initdb not found in LAYERCACHE_POSTGRES_BIN, on PATH or under {DEBIAN_POSTGRES_DIR}/*/bin"
            );
            if !is_root() || which("apt-get").is_none() {
                return Err(Error::new(format!(
                    "PostgreSQL is missing and cannot be installed automatically here (that needs \
                     root and apt-get); {POSTGRES_INSTALL_HINT}"
                )));
            }
            apt_get(&["update"])?;
            apt_get(&["install", "-y", "--no-install-recommends", "postgresql"])?;
            find_initdb().ok_or_else(|| {
                Error::new(format!(
                    "initdb still not found after installing postgresql; {POSTGRES_INSTALL_HINT}"
                ))
            })?
        }
    };
    let version = output(Command::new(&initdb).arg("--version"))?;
    println!("    using {}: {}", initdb.display(), version.trim());
    Ok(())
}

/// `initdb` in `$LAYERCACHE_POSTGRES_BIN`, else on PATH, else in the newest
/// `/usr/lib/postgresql/VERSION/bin` (the testkit looks in the same places).
fn find_initdb() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("LAYERCACHE_POSTGRES_BIN").filter(|dir| !dir.is_empty()) {
        let initdb = PathBuf::from(dir).join("initdb");
        if is_executable(&initdb) {
            return Some(initdb);
        }
        println!(
            "    note: {} is not an executable file; looking on PATH",
            initdb.display()
        );
    }
    which("initdb").or_else(|| {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_POSTGRES_DIR)
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name().into_string().ok()?;
                let version: Vec<u32> = name
                    .split('.')
                    .map(|part| part.parse().ok())
                    .collect::<Option<_>>()?;
                Some((version, entry.path().join("bin").join("initdb")))
            })
            .collect();
        versions.sort();
        versions
            .into_iter()
            .rev()
            .map(|(_, initdb)| initdb)
            .find(|initdb| is_executable(initdb))
    })
}

/// Runs `apt-get ARGS` non-interactively.
fn apt_get(args: &[&str]) -> Result {
    run(Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null()))
}

/// Whether `id -u` prints `0`.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first executable file named `name` in a PATH directory.
fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).find_map(|dir| {
        let candidates = [
            dir.join(name),
            dir.join(format!("{name}{}", env::consts::EXE_SUFFIX)),
        ];
        candidates.into_iter().find(|c| is_executable(c))
    })
}

/// Whether `path` is a file with an execute permission bit set.
#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether `path` is a file (no permission bits to check here).
#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_commands_like_a_shell() {
        let mut command = Command::new("cargo");
        command
            .args(["doc", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(
            show(&command),
            "RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps"
        );
    }

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("xtask").is_dir());
    }
}
