# Convenience recipes for layercache. `just` is never required: every recipe
# is a one-liner over cargo (see `cargo xtask help`), and CI runs `bash .ci/run`.

# List the recipes.
default:
    @just --list

# Run the quickstart example.
quickstart:
    cargo run --example quickstart

# Everything CI runs: redis-server, fmt, clippy, architecture, tests, docs, benches, example.
test:
    cargo xtask test

# rustfmt --check, clippy -D warnings, architecture checks.
lint:
    cargo xtask lint

# Criterion benchmarks; extra arguments go to criterion (e.g. `just bench get`).
bench *ARGS:
    cargo xtask bench {{ARGS}}

# Install redis-server when missing (apt-get, as root).
redis:
    cargo xtask redis

# Format the whole workspace.
fmt:
    cargo fmt --all
