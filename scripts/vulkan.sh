#!/usr/bin/env bash
# The ggml Vulkan backend, built and run for real on lavapipe (mesa's CPU Vulkan device), on
# Debian 12 (bookworm). Steps (each idempotent; run all with no argument, or name some):
#
#   setup    apt: mesa-vulkan-drivers (lavapipe), libvulkan-dev (the loader), glslc, vulkan-tools;
#            newer Vulkan headers (+ Vulkan-Hpp) and SPIRV-Headers from Debian trixie's
#            libvulkan-dev / spirv-headers .debs, unpacked into a private prefix
#            target/vulkan-sdk/root/usr (bookworm's 1.3.239 headers lack vk::LayerSettingEXT,
#            which ggml-vulkan needs). The system is not switched to trixie: apt reads trixie's
#            index into target/vulkan-sdk/apt only, and nothing from it is installed.
#   build    `delrec` and `delrec-convert` with --features vulkan into target/vulkan (its own
#            target dir: the CPU build in target/release is left alone).
#   devices  the Vulkan devices llama.cpp sees, and a one-shot offload check: FAILS unless
#            llama.cpp logs every layer offloaded and the model buffers on the lavapipe device.
#   compare  `delrec rank --json` and `delrec logits --json` on the fixture, all layers on
#            lavapipe vs the CPU path of the same binary: prints and records max |delta|
#            (target/reports/vulkan-compare.json); FAILS beyond the parity tolerances.
#   test     the parity tests (default test_logits_parity.py and test_rank_parity.py; others
#            with DELREC_VK_PYTEST_ARGS) with every model-running delrec call offloaded
#            (DELREC_GPU_LAYERS=999 etc., read by tests/parity/parity_util.py).
#
# Times measured on 2 shared cores (docs/platforms.md): setup 8 s, cold build 30 min (the ggml
# shaders and ggml-vulkan included), devices < 2 min, compare about 10 min, test about 5 min.
#
# Device selection: ggml-vulkan skips CPU-type devices unless asked for them, so
# GGML_VK_VISIBLE_DEVICES names lavapipe's index (found with vulkaninfo). Bounds: every step runs
# under `timeout` (DELREC_VK_*_TIMEOUT, seconds); times are printed per step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SDK_DIR=$ROOT/target/vulkan-sdk
SDK=$SDK_DIR/root/usr
export CARGO_TARGET_DIR=${DELREC_VK_TARGET_DIR:-$ROOT/target/vulkan}
BIN=$CARGO_TARGET_DIR/release
export DELREC_FIXTURES=${DELREC_FIXTURES:-$ROOT/target/fixtures}
export DELREC_REPORT_DIR=${DELREC_REPORT_DIR:-$ROOT/target/reports}
BUILD_TIMEOUT=${DELREC_VK_BUILD_TIMEOUT:-2700}
TEST_TIMEOUT=${DELREC_VK_TEST_TIMEOUT:-1800}
CHECK_TIMEOUT=${DELREC_VK_CHECK_TIMEOUT:-300}
GPU_LAYERS=999

step_t0=0
begin() { step_t0=$(date +%s); echo "== vulkan.sh: $1"; }
end() { echo "== vulkan.sh: $1 done in $(( $(date +%s) - step_t0 )) s"; }
die() { echo "vulkan.sh: FAIL: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------
step_setup() {
  begin setup
  local need=()
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
  dpkg -s libvulkan-dev >/dev/null 2>&1 || need+=(libvulkan-dev)
  command -v glslc >/dev/null || need+=(glslc)
  command -v vulkaninfo >/dev/null || need+=(vulkan-tools)
  command -v cmake >/dev/null || need+=(cmake)
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev clang)
  if [ ${#need[@]} -gt 0 ]; then
    local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi

  # Newer headers: trixie's libvulkan-dev (Vulkan-Headers + Vulkan-Hpp) and spirv-headers.
  if [ ! -f "$SDK/include/vulkan/vulkan.hpp" ] || [ ! -f "$SDK/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake" ] \
     || [ ! -f "$SDK_DIR/.done" ]; then
    local apt_dir=$SDK_DIR/apt
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
      >"$apt_dir/sources.list"
    # A private apt: trixie's index only, in target/; the system's sources and state untouched.
    local A=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
             -o "Dir::Etc::Parts=/nonexistent" -o "Dir::State::Lists=$apt_dir/lists"
             -o "Dir::Cache=$apt_dir/cache" -o APT::Architecture=amd64 -o Acquire::Languages=none
             -o APT::Sandbox::User=root)
    apt-get "${A[@]}" update -qq
    (cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${A[@]}" download libvulkan-dev spirv-headers)
    rm -rf "$SDK_DIR/root"
    local deb
    for deb in "$apt_dir"/debs/*.deb; do
      echo "  unpacking $(basename "$deb")"
      dpkg-deb -x "$deb" "$SDK_DIR/root"
    done
    # Link against the system's (bookworm) loader: headers newer than the loader are fine, ggml
    # resolves every entry point at run time (VULKAN_HPP_DISPATCH_LOADER_DYNAMIC).
    mkdir -p "$SDK/lib"
    rm -f "$SDK/lib/x86_64-linux-gnu/libvulkan.so"
    ln -sf /usr/lib/x86_64-linux-gnu/libvulkan.so.1 "$SDK/lib/libvulkan.so"
    mkdir -p "$SDK/bin"
    ln -sf "$(command -v glslc)" "$SDK/bin/glslc"
    touch "$SDK_DIR/.done"
  fi
  echo "  headers: VK_HEADER_VERSION $(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\).*/\1/p' "$SDK/include/vulkan/vulkan_core.h") in $SDK/include"
  echo "  loader:  $(readlink -f /usr/lib/x86_64-linux-gnu/libvulkan.so.1)"
  echo "  glslc:   $(glslc --version 2>&1 | head -n 1)"
  end setup
}

# ------------------------------------------------------------------------------------------
step_build() {
  begin "build (target dir $CARGO_TARGET_DIR)"
  [ -f "$SDK_DIR/.done" ] || die "run '$0 setup' first"
  # FindVulkan (CMake) takes include/, lib/ and bin/glslc from $VULKAN_SDK first; ggml-vulkan
  # adds $VULKAN_SDK to CMAKE_PREFIX_PATH for SPIRV-Headers; llama-cpp-sys-2's build.rs adds
  # $VULKAN_SDK/lib to the link search path.
  VULKAN_SDK=$SDK timeout "$BUILD_TIMEOUT" nice cargo build --release --locked \
    -p delrec-runtime --bin delrec -p delrec-convert --bin delrec-convert \
    --features delrec-runtime/vulkan \
    || die "the Vulkan build failed or ran past ${BUILD_TIMEOUT}s"
  end build
}

# ------------------------------------------------------------------------------------------
# lavapipe's index among the loader's physical devices (what GGML_VK_VISIBLE_DEVICES counts).
lavapipe_index() {
  vulkaninfo --summary 2>/dev/null | awk '
    /^GPU[0-9]+:/ { gpu = substr($1, 4) + 0 }
    /deviceName/ && /llvmpipe/ { print gpu; exit }'
}

select_lavapipe() {
  local idx
  idx=$(lavapipe_index)
  [ -n "$idx" ] || die "vulkaninfo lists no llvmpipe (lavapipe) device: is mesa-vulkan-drivers installed?"
  export GGML_VK_VISIBLE_DEVICES=$idx
  echo "  lavapipe is Vulkan device $idx: GGML_VK_VISIBLE_DEVICES=$idx"
}

fixtures() {
  python3 tests/fixtures/make_fixtures.py "$DELREC_FIXTURES" >/dev/null || die "make_fixtures.py failed"
}

# A converted model + pack of the fixture (for devices/compare), made with the Vulkan build's
# delrec-convert (conversion does not touch a backend).
FIX_WORK=$ROOT/target/vulkan-work
fixture_model() {
  mkdir -p "$FIX_WORK"
  local model=$DELREC_FIXTURES/$1
  local gguf=$FIX_WORK/$1.$2.gguf
  if [ ! -s "$gguf" ] || [ "$gguf" -ot "$DELREC_FIXTURES/MANIFEST.json" ]; then
    "$BIN/delrec-convert" model --hf "$model" --out "$gguf" --outtype "$2" >/dev/null
  fi
  echo "$gguf"
}

# `delrec logits` offloads like the other commands (--backend auto, --gpu-layers).
LOGITS_BIN=$BIN/delrec
need_bins() {
  local b
  for b in "$BIN/delrec" "$BIN/delrec-convert" "$LOGITS_BIN"; do
    [ -x "$b" ] || die "$b missing: run '$0 build' first"
  done
}

# ------------------------------------------------------------------------------------------
step_devices() {
  begin devices
  need_bins
  echo "  vulkaninfo:"
  vulkaninfo --summary 2>/dev/null | grep -E '^GPU[0-9]+:|deviceName|deviceType|apiVersion|driverInfo' | sed 's/^/    /'
  select_lavapipe
  fixtures
  local mg tmp
  mg=$(fixture_model llama-tiny f32)
  tmp=$(mktemp -d)
  # Once with lavapipe visible and every layer offloaded: llama.cpp's own log is the evidence.
  DELREC_LLAMA_LOG=1 timeout "$CHECK_TIMEOUT" "$LOGITS_BIN" logits --model "$mg" --tokens 1,2,3,4 \
    --gpu-layers $GPU_LAYERS --json >"$tmp/out.json" 2>"$tmp/log" \
    || { tail -n 40 "$tmp/log" >&2; die "an offloaded run on lavapipe failed"; }
  echo "  llama.cpp's log (offloaded run):"
  grep -E 'ggml_vulkan|using device|offload|model buffer size|KV buffer|compute buffer' "$tmp/log" | sed 's/^/    /'
  python3 - "$tmp/log" <<'PY' || die "the run did not offload to lavapipe (see the log above)"
import sys
sys.path.insert(0, "tests/parity")
import parity_util as pu
pu.check_offload(open(sys.argv[1], encoding="utf-8", errors="replace").read(), "llvmpipe", "offload check")
print("  offload check: all layers and the model buffers on lavapipe")
PY
  # The CPU path of the same binary: without GGML_VK_VISIBLE_DEVICES ggml-vulkan skips CPU-type
  # devices, so it finds none.
  env -u GGML_VK_VISIBLE_DEVICES DELREC_LLAMA_LOG=1 timeout "$CHECK_TIMEOUT" "$LOGITS_BIN" logits --model "$mg" \
    --tokens 1,2,3,4 --gpu-layers $GPU_LAYERS --json >/dev/null 2>"$tmp/log-cpu" || die "the CPU run failed"
  echo "  without GGML_VK_VISIBLE_DEVICES: $(grep -m1 -E 'ggml_vulkan: No devices found|using device' "$tmp/log-cpu" || echo '(no device line)')"
  if grep -q 'using device' "$tmp/log-cpu"; then die "a device was used without GGML_VK_VISIBLE_DEVICES"; fi
  rm -rf "$tmp"
  end devices
}

step_compare() {
  begin compare
  need_bins
  select_lavapipe
  fixtures
  timeout "$TEST_TIMEOUT" python3 scripts/vulkan_compare.py "$BIN" "$LOGITS_BIN" "$DELREC_FIXTURES" \
    "$FIX_WORK" "$DELREC_REPORT_DIR/vulkan-compare.json" \
    || { echo "vulkan.sh: FAIL: Vulkan vs CPU comparison (see above)" >&2; return 1; }
  end compare
}

step_test() {
  begin "test (tests/parity, all layers on lavapipe)"
  need_bins
  select_lavapipe
  fixtures
  # parity_util appends --gpu-layers to every model-running delrec call and FAILS any call whose
  # llama.cpp log does not show all layers and the model buffers on the llvmpipe device.
  DELREC_BIN_DIR=$BIN DELREC_GPU_LAYERS=$GPU_LAYERS DELREC_LOGITS_BIN=$LOGITS_BIN \
    DELREC_REQUIRE_OFFLOAD=llvmpipe DELREC_REPORT_DIR=$DELREC_REPORT_DIR/vulkan \
    timeout "$TEST_TIMEOUT" python3 -m pytest -q -rfE -p no:cacheprovider \
    ${DELREC_VK_PYTEST_ARGS:-tests/parity/test_logits_parity.py tests/parity/test_rank_parity.py} \
    || { echo "vulkan.sh: FAIL: parity tests on lavapipe (or ran past ${TEST_TIMEOUT}s)" >&2; return 1; }
  end test
}

# ------------------------------------------------------------------------------------------
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(setup build devices compare test)
# setup/build/devices stop the script on failure; compare and test both run, then the script
# exits non-zero if either failed.
failed=()
for s in "${steps[@]}"; do
  case $s in
    setup|build|devices) "step_$s" ;;
    compare|test) "step_$s" || failed+=("$s") ;;
    *) die "unknown step '$s' (setup, build, devices, compare, test)" ;;
  esac
done
[ ${#failed[@]} -eq 0 ] || die "failed steps: ${failed[*]}"
echo "== vulkan.sh: all steps passed"
