#!/usr/bin/env bash
# Builds the CUDA release binary on a machine with no GPU and no system CUDA.
#
#   scripts/build-cuda.sh            # -> dist/lora-train-cuda (stripped) and dist/lora-train-cuda.xz
#   scripts/build-cuda.sh --root     # only makes the CUDA root and prints the environment to use it
#   scripts/build-cuda.sh --tests    # also builds the GPU test binaries scripts/gpu-check.sh runs
#                                    # (dist/test-it.xz, the integration tests)
#
# The CUDA toolkit comes from NVIDIA's CUDA 13.0 pip wheels (nvcc, headers, cuBLAS, cuRAND,
# NVRTC, the runtime), unpacked into a CUDA root once. Linking needs libcuda.so, which only a
# driver installs, so the root gets a stub library that defines every driver symbol cudarc
# declares; the real driver's libcuda.so.1 is loaded on the GPU host.
#
# Environment (defaults in brackets):
#   CUDA_COMPUTE_CAP     the GPU's compute capability, e.g. 90 for H100/H200, 80 for A100 [90]
#   LORA_TRAIN_CUDA_ROOT where the CUDA root is made [~/.cache/lora-train/cuda-13.0]
#   PYTHON               a python with pip, to download the wheels [python3]
#   CUDA_TARGET_DIR      cargo's target directory for this build [target/cuda]
#
# candle-core 0.11.1 asks cudarc for `dynamic-linking`, which makes libcuda and the CUDA libraries
# link-time dependencies: such a binary cannot even print --help without the driver. The build
# uses a generated copy of candle-core (under the target dir, never committed) whose only
# difference is that one feature switched to `dynamic-loading`, through a `[patch]` given on the
# command line; Cargo.lock is restored afterwards. The binary then loads the libraries at run time
# (src/device/cuda_libs.rs): it runs every command on the CPU where there is no driver.
#
# Do not move to nvcc >= 13.1: its PTX needs a newer driver than the 580 series on our GPU hosts.
# On the GPU host the binary needs libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and
# libnvrtc.so.13: it loads them from LORA_TRAIN_CUDA_LIBS, or from PYTHON's nvidia/cu13/lib
# (PyTorch's CUDA wheels have them), or the system's search path.
set -euo pipefail
cd "$(dirname "$0")/.."

CAP="${CUDA_COMPUTE_CAP:-90}"
ROOT="${LORA_TRAIN_CUDA_ROOT:-$HOME/.cache/lora-train/cuda-13.0}"
PY="${PYTHON:-python3}"
TARGET="${CUDA_TARGET_DIR:-target/cuda}"
LIMIT_MIB=64

# Pinned wheels: 13.0.x (see shared/reference/candle-0.11.md and DEVELOPERS.md).
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.2.14
    nvidia-cuda-nvrtc==13.0.88
    nvidia-curand==10.4.0.35
)

die() { echo "build-cuda.sh: $*" >&2; exit 1; }

# The cudarc source cargo uses, for the list of driver symbols the stub must define.
cudarc_src() {
    cargo fetch --locked >&2 || die "cargo fetch failed"
    local v
    v="$(awk '/^name = "cudarc"$/ {getline; gsub(/[^0-9.]/, "", $0); print; exit}' Cargo.lock)"
    [ -n "$v" ] || die "cudarc is not in Cargo.lock"
    local d
    for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$v"; do
        [ -f "$d/src/driver/sys/mod.rs" ] && { echo "$d"; return; }
    done
    die "cudarc $v sources not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src"
}

# The registry source of a locked crate: crate_src NAME.
crate_src() {
    local v d
    v="$(awk -v n="$1" '$0 == "name = \"" n "\"" {getline; gsub(/[^0-9.]/, "", $0); print; exit}' Cargo.lock)"
    [ -n "$v" ] || die "$1 is not in Cargo.lock"
    for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$1-$v"; do
        [ -f "$d/Cargo.toml" ] && { echo "$d"; return; }
    done
    die "$1 $v sources not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src"
}

# candle-core with cudarc's `dynamic-loading` instead of `dynamic-linking`: one line differs.
patched_candle_core() {
    cargo fetch --locked >&2 || die "cargo fetch failed"
    local src dst
    src="$(crate_src candle-core)"
    dst="$TARGET/patched/candle-core"
    rm -rf "$dst"
    mkdir -p "$(dirname "$dst")"
    cp -r "$src" "$dst"
    sed -i 's/^    "dynamic-linking",$/    "dynamic-loading",/' "$dst/Cargo.toml"
    [ "$(diff "$src/Cargo.toml" "$dst/Cargo.toml" | grep -c '^>')" = 1 ] ||
        die "candle-core's Cargo.toml no longer has exactly one \"dynamic-linking\" line to switch"
    echo "$(cd "$dst" && pwd)"
}

make_root() {
    local stage="$ROOT.partial"
    rm -rf "$stage"
    mkdir -p "$stage/wheels" "$stage/site"
    echo "build-cuda.sh: downloading the CUDA 13.0 wheels into $stage" >&2
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$stage/wheels" "${WHEELS[@]}" || die "pip download of the CUDA wheels failed"
    local w
    for w in "$stage"/wheels/*.whl; do
        unzip -q -o "$w" -d "$stage/site" || die "cannot unpack $w"
    done
    local cu="$stage/site/nvidia/cu13"
    [ -x "$cu/bin/nvcc" ] || die "no nvcc in the unpacked wheels ($cu/bin)"
    mkdir -p "$stage/lib/stubs"
    ln -s site/nvidia/cu13/bin "$stage/bin"
    ln -s site/nvidia/cu13/include "$stage/include"
    ln -s site/nvidia/cu13/nvvm "$stage/nvvm"
    local lib
    for lib in cublas cublasLt cudart nvrtc; do
        ln -s "../site/nvidia/cu13/lib/lib$lib.so.13" "$stage/lib/lib$lib.so"
    done
    ln -s ../site/nvidia/cu13/lib/libcurand.so.10 "$stage/lib/libcurand.so"
    # The stub: one definition per cu* function of cudarc's driver bindings.
    local src
    src="$(cudarc_src)"
    grep -o '^ *fn cu[A-Za-z0-9_]*(' "$src/src/driver/sys/mod.rs" | tr -d ' (' | sed 's/^fn//' | sort -u |
        awk '{print "int " $1 "(void) { return 100; /* CUDA_ERROR_NO_DEVICE */ }"}' >"$stage/lib/stubs/cuda_stub.c"
    [ -s "$stage/lib/stubs/cuda_stub.c" ] || die "no driver symbols found in $src"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stage/lib/stubs/libcuda.so" "$stage/lib/stubs/cuda_stub.c" ||
        die "cannot build the libcuda stub"
    ln -s stubs/libcuda.so "$stage/lib/libcuda.so"
    rm -rf "$stage/wheels" "$ROOT"
    mv "$stage" "$ROOT"
}

if [ ! -x "$ROOT/bin/nvcc" ] || [ ! -f "$ROOT/lib/stubs/libcuda.so" ]; then
    make_root
fi
"$ROOT/bin/nvcc" --version | grep -q "release 13.0" || die "$ROOT/bin/nvcc is not CUDA 13.0"
if [ "${1:-}" = --root ]; then
    echo "export CUDA_ROOT=$ROOT CUDA_HOME=$ROOT PATH=$ROOT/bin:\$PATH CUDA_COMPUTE_CAP=$CAP CUDARC_CUDA_VERSION=13000"
    exit 0
fi

export CUDA_ROOT="$ROOT" CUDA_HOME="$ROOT" CUDA_PATH="$ROOT" PATH="$ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP="$CAP" CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$ROOT/lib:$ROOT/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$ROOT/lib -L native=$ROOT/lib/stubs"
export LORA_TRAIN_COMMIT="${LORA_TRAIN_COMMIT:-$(git describe --always --dirty 2>/dev/null || echo unknown)}"
PATCHED="$(patched_candle_core)"
PATCH=(--config "patch.crates-io.candle-core.path=\"$PATCHED\"")
# The patch rewrites candle-core's lock entry (a path has no checksum): keep the committed one.
cp Cargo.lock "$TARGET/Cargo.lock.committed"
trap 'cp "$TARGET/Cargo.lock.committed" Cargo.lock' EXIT
echo "build-cuda.sh: cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CAP, target dir $TARGET)" >&2
CARGO_TARGET_DIR="$TARGET" cargo build --release "${PATCH[@]}" --features cuda --bin lora-train ||
    die "cargo build --features cuda failed"

mkdir -p dist
BIN="$TARGET/release/lora-train"
cp "$BIN" dist/lora-train-cuda.tmp
strip dist/lora-train-cuda.tmp 2>/dev/null || true
mv dist/lora-train-cuda.tmp dist/lora-train-cuda
xz -T0 -6 -c dist/lora-train-cuda >dist/lora-train-cuda.xz.tmp
mv dist/lora-train-cuda.xz.tmp dist/lora-train-cuda.xz
size=$(stat -c %s dist/lora-train-cuda)
packed=$(stat -c %s dist/lora-train-cuda.xz)
echo "build-cuda.sh: dist/lora-train-cuda $((size >> 20)) MiB, dist/lora-train-cuda.xz $((packed >> 20)) MiB (compute capability $CAP)"
if [ "${1:-}" = --tests ]; then
    echo "build-cuda.sh: building the GPU test binaries" >&2
    CARGO_TARGET_DIR="$TARGET" cargo test --release "${PATCH[@]}" --features cuda --no-run \
        --test it --message-format=json >"$TARGET/test-build.json" ||
        die "cargo test --no-run --features cuda failed"
    for t in it; do
        exe="$(grep -o '"executable":"[^"]*/'"$t"'-[0-9a-f]*"' "$TARGET/test-build.json" | tail -n 1 | cut -d'"' -f4)"
        [ -x "$exe" ] || die "no test executable for $t"
        cp "$exe" "dist/test-$t.tmp"
        strip "dist/test-$t.tmp" 2>/dev/null || true
        xz -T0 -6 -c "dist/test-$t.tmp" >"dist/test-$t.xz.tmp"
        mv "dist/test-$t.xz.tmp" "dist/test-$t.xz"
        rm -f "dist/test-$t.tmp"
        packed=$((packed + $(stat -c %s "dist/test-$t.xz")))
    done
    echo "build-cuda.sh: dist/*.xz together $((packed >> 20)) MiB"
fi
if [ "$packed" -ge $((LIMIT_MIB << 20)) ]; then
    die "the compressed binaries are over $LIMIT_MIB MiB together and will not travel to the GPU host"
fi
