//! Architecture checks: which crate may not depend on which.
//!
//! The rules are the [`RULES`] table; a new crate adds one line. Each rule is
//! checked against `cargo tree -p <crate> -e normal` with every feature of the
//! crate enabled, so a forbidden dependency is caught whether it comes in
//! directly, transitively or behind an optional feature. Dev-dependencies are
//! not normal edges and are allowed (the test kit is one).

use std::collections::{BTreeMap, BTreeSet};

use crate::{Error, Result, cargo, output};

/// One rule: (crate, packages it must not depend on, why).
pub(crate) type Rule = (&'static str, &'static [&'static str], &'static str);

/// The architecture rules. Add one line per rule.
pub(crate) const RULES: &[Rule] = &[
    (
        "layercache-core",
        &["redis", "moka", "tokio", "deadpool-redis"],
        "the core holds traits, value types and codecs only: no backend, no runtime",
    ),
    (
        "layercache-core",
        &["layercache-testkit"],
        "the test kit is a dev-dependency, never a normal one",
    ),
    (
        "layercache-moka",
        &["layercache-redis", "layercache-testkit"],
        "backends are independent of each other; the test kit is dev-only",
    ),
    (
        "layercache-redis",
        &["layercache-moka", "layercache-testkit"],
        "backends are independent of each other; the test kit is dev-only",
    ),
    (
        "layercache-redis",
        &["layercache-stampede"],
        "the lock store implements the core's LockStore; the guards know no Redis",
    ),
    (
        "layercache-stampede",
        &[
            "redis",
            "moka",
            "layercache-redis",
            "layercache-moka",
            "layercache-testkit",
        ],
        "guards work over the core traits (Backend, LockStore), whatever the backend",
    ),
];

/// Checks every rule in [`RULES`], printing what was checked.
///
/// Fails listing every violated rule (not only the first one).
pub(crate) fn check() -> Result {
    let mut trees: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut violations = Vec::new();

    for &(krate, forbidden, why) in RULES {
        if !trees.contains_key(krate) {
            trees.insert(krate, dependencies(krate)?);
        }
        let deps = trees
            .get(krate)
            .ok_or_else(|| Error::new(format!("no dependency tree for `{krate}`")))?;
        let found: Vec<&str> = forbidden
            .iter()
            .copied()
            .filter(|name| deps.contains(*name))
            .collect();
        if found.is_empty() {
            println!(
                "    ok    {krate} does not depend on {}",
                forbidden.join(", ")
            );
        } else {
            println!("    FAIL  {krate} depends on {}", found.join(", "));
            for name in &found {
                violations.push(format!(
                    "`{krate}` must not depend on `{name}` ({why}); \
                     see why with `cargo tree -p {krate} -e normal --all-features -i {name}`"
                ));
            }
        }
    }

    println!(
        "    checked {} rules over {} crates (normal edges, transitive, all features)",
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

/// The names of all packages in the normal dependency tree of `krate`
/// (the crate itself included).
fn dependencies(krate: &str) -> Result<BTreeSet<String>> {
    let tree = output(cargo().args([
        "tree",
        "-p",
        krate,
        "-e",
        "normal",
        "--all-features",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]))?;
    let names = parse_tree(&tree);
    if !names.contains(krate) {
        return Err(Error::new(format!(
            "`cargo tree -p {krate}` did not list `{krate}` itself; cannot check its dependencies"
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
        for &(krate, forbidden, why) in RULES {
            assert!(krate.starts_with("layercache-"), "{krate}");
            assert!(!forbidden.is_empty(), "{krate}: empty rule");
            assert!(!why.is_empty(), "{krate}: rule without a reason");
        }
    }
}
