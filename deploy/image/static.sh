#!/usr/bin/env bash
# A statically linked executor and warmer (glibc's static libc,
# `crt-static`), built with this machine's toolchain: they need nothing
# from the root they run in, so `/kaniko/executor` copied alone into any
# image gets the in-place rung (kaniko's documented way to add tools).
# glibc 2.34+ has its `files` and `dns` name services in libc itself, so
# names still resolve without NSS modules. Kiln's image ships these
# (deploy/image/context.sh). Output:
# target/static/x86_64-unknown-linux-gnu/release/{executor,warmer}.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_TARGET_DIR=target/static RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p kiln-executor --bin executor -p kiln-warmer --bin warmer \
    --target x86_64-unknown-linux-gnu
