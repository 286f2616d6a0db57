#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine with Rust and Python lacks: the C/C++ toolchain pieces
# llama.cpp's build needs (cmake, clang, libclang for bindgen) and the Python test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v clang >/dev/null || need_apt+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
# scripts/swift.sh: the Debian trixie chroot with Swift.
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
python3 -m pip install -q -r tests/requirements.txt -r train/requirements-test.txt
