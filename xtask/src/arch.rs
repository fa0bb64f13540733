//! Architecture checks: which crate may not depend on which.
//!
//! The rules are the [`RULES`] table; a new crate adds one line. Each rule is
//! checked against `cargo tree -p <crate> -e normal` with the rule's
//! [`Features`]. Most rules use every feature of the crate, so a forbidden
//! dependency is caught whether it comes in directly, transitively or behind
//! an optional feature; a few use the default (or a chosen) feature set, to
//! check that an optional dependency really stays optional. Dev-dependencies
//! are not normal edges and are allowed (the test kit is one).
//!
//! Allowed on purpose (no rule forbids them): `layercache-strategy` depends
//! on `layercache-tiered` (strategies are adapters over the cache), and
//! `layercache-tiered` depends on `layercache-stampede` and, behind its
//! `redis` feature, on `layercache-redis`.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    fmt,
};

use crate::{Error, Result, cargo, output};

/// The features a rule's crate is resolved with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Features {
    /// `--all-features`: catches a dependency behind any optional feature.
    All,
    /// The crate's default features: what a plain dependency on it compiles.
    Default,
    /// `--no-default-features --features <list>` (comma-separated list).
    Only(&'static str),
}

impl Features {
    /// The `cargo tree` arguments selecting these features.
    fn args(self) -> Vec<&'static str> {
        match self {
            Self::All => vec!["--all-features"],
            Self::Default => Vec::new(),
            Self::Only(list) => vec!["--no-default-features", "--features", list],
        }
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all features"),
            Self::Default => f.write_str("default features"),
            Self::Only(list) => write!(f, "only features {list}"),
        }
    }
}

/// One rule: (crate, features it is resolved with, packages it must not
/// depend on, why).
pub(crate) type Rule = (
    &'static str,
    Features,
    &'static [&'static str],
    &'static str,
);

/// The architecture rules. Add one line per rule.
pub(crate) const RULES: &[Rule] = &[
    (
        "layercache-core",
        Features::All,
        &["redis", "moka", "tokio", "deadpool-redis"],
        "the core holds traits, value types and codecs only: no backend, no runtime",
    ),
    (
        "layercache-core",
        Features::All,
        &["layercache-testkit"],
        "the test kit is a dev-dependency, never a normal one",
    ),
    (
        "layercache-moka",
        Features::All,
        &["layercache-redis", "layercache-testkit"],
        "backends are independent of each other; the test kit is dev-only",
    ),
    (
        "layercache-redis",
        Features::All,
        &["layercache-moka", "layercache-testkit"],
        "backends are independent of each other; the test kit is dev-only",
    ),
    (
        "layercache-redis",
        Features::All,
        &["layercache-stampede"],
        "the lock store implements the core's LockStore; the guards know no Redis",
    ),
    (
        "layercache-stampede",
        Features::All,
        &[
            "redis",
            "moka",
            "layercache-redis",
            "layercache-moka",
            "layercache-testkit",
        ],
        "guards work over the core traits (Backend, LockStore), whatever the backend",
    ),
    (
        "layercache-stampede",
        Features::All,
        &["layercache-tiered"],
        "the cache composes the guards, not the other way round",
    ),
    (
        "layercache-tiered",
        Features::All,
        &["layercache-strategy", "layercache-testkit"],
        "strategies are adapters above the cache; the test kit is dev-only",
    ),
    (
        "layercache-tiered",
        Features::Default,
        &["redis", "deadpool-redis", "layercache-redis"],
        "Redis as L2 is the optional `redis` feature: the in-process cache alone compiles no redis",
    ),
    (
        "layercache-tower",
        Features::All,
        &["axum", "hyper", "layercache-testkit"],
        "the HTTP layer speaks tower and http types, not a framework; the test kit is dev-only",
    ),
    (
        "layercache",
        Features::Only("tiered"),
        &["redis", "deadpool-redis"],
        "the facade's `tiered` feature alone compiles no redis; Redis is the separate `redis` feature",
    ),
];

/// Checks every rule in [`RULES`], printing what was checked.
///
/// Fails listing every violated rule (not only the first one).
pub(crate) fn check() -> Result {
    let mut trees: BTreeMap<(&str, Features), BTreeSet<String>> = BTreeMap::new();
    let mut violations = Vec::new();

    for &(krate, features, forbidden, why) in RULES {
        let deps = match trees.entry((krate, features)) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(dependencies(krate, features)?),
        };
        let found: Vec<&str> = forbidden
            .iter()
            .copied()
            .filter(|name| deps.contains(*name))
            .collect();
        if found.is_empty() {
            println!(
                "    ok    {krate} ({features}) does not depend on {}",
                forbidden.join(", ")
            );
        } else {
            println!(
                "    FAIL  {krate} ({features}) depends on {}",
                found.join(", ")
            );
            for name in &found {
                violations.push(format!(
                    "`{krate}` ({features}) must not depend on `{name}` ({why}); \
                     see why with `{} -i {name}`",
                    tree_command(krate, features)
                ));
            }
        }
    }

    println!(
        "    checked {} rules over {} crate/feature sets (normal edges, transitive)",
        RULES.len(),
        trees.len()
    );
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "architecture rules violated:\n  - {}",
            violations.join("\n  - ")
        )))
    }
}

/// The `cargo tree` command line showing the normal dependencies of `krate`
/// with `features`, as a user would type it.
fn tree_command(krate: &str, features: Features) -> String {
    let mut line = format!("cargo tree -p {krate} -e normal");
    for arg in features.args() {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// The names of all packages in the normal dependency tree of `krate`
/// resolved with `features` (the crate itself included).
fn dependencies(krate: &str, features: Features) -> Result<BTreeSet<String>> {
    let tree = output(
        cargo()
            .args(["tree", "-p", krate, "-e", "normal"])
            .args(features.args())
            .args(["--prefix", "none", "--format", "{p}"]),
    )?;
    let names = parse_tree(&tree);
    if !names.contains(krate) {
        return Err(Error::new(format!(
            "`{}` did not list `{krate}` itself; cannot check its dependencies",
            tree_command(krate, features)
        )));
    }
    Ok(names)
}

/// Package names (first word of each line) of `cargo tree --prefix none` output.
fn parse_tree(tree: &str) -> BTreeSet<String> {
    tree.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('['))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_package_names() {
        let tree = "layercache-core v0.1.0 (/x/crates/layercache-core)\n\
                    async-trait v0.1.92 (proc-macro)\n\
                    proc-macro2 v1.0.107 (*)\n\
                    \n\
                    serde v1.0.229\n";
        let names = parse_tree(tree);
        let expected: BTreeSet<String> = ["layercache-core", "async-trait", "proc-macro2", "serde"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn rules_name_workspace_crates() {
        for &(krate, features, forbidden, why) in RULES {
            assert!(
                krate == "layercache" || krate.starts_with("layercache-"),
                "{krate}"
            );
            assert!(!forbidden.is_empty(), "{krate}: empty rule");
            assert!(!forbidden.contains(&krate), "{krate}: forbids itself");
            assert!(!why.is_empty(), "{krate}: rule without a reason");
            if let Features::Only(list) = features {
                assert!(!list.trim().is_empty(), "{krate}: empty feature list");
            }
        }
    }

    #[test]
    fn features_select_cargo_arguments() {
        assert_eq!(Features::All.args(), ["--all-features"]);
        assert!(Features::Default.args().is_empty());
        assert_eq!(
            Features::Only("tiered").args(),
            ["--no-default-features", "--features", "tiered"]
        );
        assert_eq!(
            tree_command("layercache", Features::Only("tiered")),
            "cargo tree -p layercache -e normal --no-default-features --features tiered"
        );
        assert_eq!(
            tree_command("layercache-tiered", Features::Default),
            "cargo tree -p layercache-tiered -e normal"
        );
    }
}
