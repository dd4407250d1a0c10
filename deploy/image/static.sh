#!/usr/bin/env bash
# A statically linked executor (glibc's static libc, `crt-static`), built
# with this machine's toolchain: it needs nothing from the root it runs
# in, so `/kaniko/executor` copied alone into any image gets the in-place
# rung (kaniko's documented way to add tools). glibc 2.34+ has its
# `files` and `dns` name services in libc itself, so names still resolve
# without NSS modules. Output: target/static/x86_64-unknown-linux-gnu/release/executor.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_TARGET_DIR=target/static RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p kiln-executor --bin executor --target x86_64-unknown-linux-gnu
