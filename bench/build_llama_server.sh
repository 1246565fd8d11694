#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (CPU only) as a benchmark peer.
#
# The C++ sources come from the llama.cpp copy vendored inside the
# llama-cpp-python sdist on PyPI (pinned version + sha256 below), so the build
# needs nothing but pip's index, cmake and a C/C++ compiler: no GitHub, no
# libcurl, no OpenSSL, no npm, no Hugging Face download of the web UI.
#
# Everything lands in the git-ignored folder bench/peers/llama.cpp/:
#   dl/     the downloaded sdist (kept, so a rebuild needs no network)
#   src/    the unpacked vendor/llama.cpp tree (+ its git metadata, for --version)
#   build/  the cmake build tree
#   bin/llama-server   the statically linked (BUILD_SHARED_LIBS=OFF) binary
#   BUILD_INFO         what was built, from what, with which flags
#
# Idempotent: if bin/llama-server exists and `--version` runs, it exits 0.
# Environment:
#   PYTHON      python interpreter used for `pip download` (default python3)
#   JOBS        parallel compile jobs (default: nproc)
#   FORCE=1     rebuild even if the binary is already there
#   KEEP_BUILD=0  delete src/ and build/ after a successful build (default: keep)
#
# Note: GGML_NATIVE=ON tunes the binary for *this* CPU (-march=native); copy it
# to another machine only if that CPU has the same instruction set extensions.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
LLAMA_CPP_PYTHON_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"
FORCE="${FORCE:-0}"
KEEP_BUILD="${KEEP_BUILD:-1}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="${HERE}/peers/llama.cpp"
DL_DIR="${PREFIX}/dl"
SRC_DIR="${PREFIX}/src"
BUILD_DIR="${PREFIX}/build"
BIN_DIR="${PREFIX}/bin"
BIN="${BIN_DIR}/llama-server"
SDIST_NAME="llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}"
SDIST="${DL_DIR}/${SDIST_NAME}.tar.gz"

log() { printf '[build_llama_server] %s\n' "$*" >&2; }

# --- 0. already built? ------------------------------------------------------
if [[ "${FORCE}" != "1" && -x "${BIN}" ]] && "${BIN}" --version >/dev/null 2>&1; then
    log "already built: ${BIN}"
    "${BIN}" --version 2>&1 | sed 's/^/[build_llama_server]   /' >&2
    exit 0
fi

for tool in cmake cc c++ tar sha256sum; do
    command -v "${tool}" >/dev/null 2>&1 || { log "missing required tool: ${tool}"; exit 1; }
done

mkdir -p "${DL_DIR}" "${BIN_DIR}"

# --- 1. fetch the pinned sdist (and verify it) ------------------------------
sdist_ok() {
    [[ -f "${SDIST}" ]] && echo "${LLAMA_CPP_PYTHON_SHA256}  ${SDIST}" | sha256sum --check --status
}
if sdist_ok; then
    log "using cached sdist ${SDIST}"
else
    rm -f "${SDIST}"
    log "downloading llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION} sdist with ${PYTHON} -m pip"
    "${PYTHON}" -m pip download --no-deps --no-binary :all: \
        "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -d "${DL_DIR}" >&2
    log "checking sha256"
    echo "${LLAMA_CPP_PYTHON_SHA256}  ${SDIST}" | sha256sum --check >&2 || {
        log "sha256 mismatch for ${SDIST}; refusing to build"
        exit 1
    }
fi

# --- 2. unpack vendor/llama.cpp (+ its submodule git dir for build info) ----
log "unpacking vendor/llama.cpp into ${SRC_DIR}"
rm -rf "${SRC_DIR}"
mkdir -p "${SRC_DIR}"
# The sdist ships vendor/llama.cpp as a git submodule checkout whose `.git`
# file points at ../../.git/modules/vendor/llama.cpp; keeping that relative
# layout lets llama.cpp's cmake read the commit hash for `--version`.
tar -xzf "${SDIST}" -C "${SRC_DIR}" --strip-components=1 \
    "${SDIST_NAME}/vendor/llama.cpp" \
    "${SDIST_NAME}/.git/modules/vendor/llama.cpp"
LLAMA_SRC="${SRC_DIR}/vendor/llama.cpp"
[[ -f "${LLAMA_SRC}/tools/server/CMakeLists.txt" ]] || {
    log "unexpected sdist layout: ${LLAMA_SRC}/tools/server/CMakeLists.txt not found"
    exit 1
}
LLAMA_COMMIT="$(cat "${SRC_DIR}/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || echo unknown)"
log "llama.cpp commit: ${LLAMA_COMMIT}"

# --- 3. configure -----------------------------------------------------------
# Option names checked against this version's CMakeLists.txt:
#  * the server lives under tools/, so it needs LLAMA_BUILD_TOOLS=ON as well as
#    LLAMA_BUILD_SERVER=ON;
#  * LLAMA_CURL is deprecated and ignored here (HTTP downloads use cpp-httplib);
#    passing OFF is a harmless no-op kept for older pins;
#  * LLAMA_OPENSSL=OFF: no HTTPS (loopback benchmark only), no libssl needed;
#  * LLAMA_BUILD_UI=OFF + LLAMA_USE_PREBUILT_UI=OFF: no npm build and no
#    download of the web UI from Hugging Face; the server is built without an
#    embedded UI (cmake prints a warning saying so, which is expected);
#  * LLAMA_BUILD_APP=OFF: skip the unified `llama` binary;
#  * GGML_CCACHE=OFF: do not look for ccache (not installed; silences a warning);
#  * -mno-amx-*: -march=native turns on ggml's AMX kernels on CPUs that list AMX, but a
#    process may only use AMX tiles once the kernel grants their state (arch_prctl), and in
#    our VMs llama-server then segfaults right after "threadpool init"; the AVX-512/VNNI
#    kernels stay on.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_FLAGS=(
    "-DCMAKE_C_FLAGS=${NO_AMX}"
    "-DCMAKE_CXX_FLAGS=${NO_AMX}"
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=ON
    -DGGML_CCACHE=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_COMMON=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
)
log "configuring: cmake -S ${LLAMA_SRC} -B ${BUILD_DIR} ${CMAKE_FLAGS[*]}"
rm -rf "${BUILD_DIR}"
cmake -S "${LLAMA_SRC}" -B "${BUILD_DIR}" "${CMAKE_FLAGS[@]}" >&2

# --- 4. build only llama-server ---------------------------------------------
log "building target llama-server with -j ${JOBS} (this takes a while)"
start=$(date +%s)
cmake --build "${BUILD_DIR}" --config Release --target llama-server -j "${JOBS}" >&2
elapsed=$(( $(date +%s) - start ))
log "build finished in ${elapsed}s"

# --- 5. install into bin/ and check -----------------------------------------
built="${BUILD_DIR}/bin/llama-server"
[[ -x "${built}" ]] || { log "build did not produce ${built}"; exit 1; }
install -m 0755 "${built}" "${BIN}.tmp"
mv -f "${BIN}.tmp" "${BIN}"

if command -v ldd >/dev/null 2>&1 && ldd "${BIN}" | grep -E 'libllama|libggml|libmtmd' >&2; then
    log "unexpected: ${BIN} links shared llama/ggml libraries"
    exit 1
fi
version="$("${BIN}" --version 2>&1)" || { log "${BIN} --version failed:"; echo "${version}" >&2; exit 1; }

{
    echo "llama-cpp-python sdist: ${LLAMA_CPP_PYTHON_VERSION} (sha256 ${LLAMA_CPP_PYTHON_SHA256})"
    echo "llama.cpp commit: ${LLAMA_COMMIT}"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${elapsed}s with -j ${JOBS} on $(uname -m)"
    echo "cmake flags: ${CMAKE_FLAGS[*]}"
    echo "--version:"
    echo "${version}"
} > "${PREFIX}/BUILD_INFO"

if [[ "${KEEP_BUILD}" == "0" ]]; then
    log "removing ${SRC_DIR} and ${BUILD_DIR}"
    rm -rf "${SRC_DIR}" "${BUILD_DIR}"
fi

log "done: ${BIN}"
echo "${version}" | sed 's/^/[build_llama_server]   /' >&2
