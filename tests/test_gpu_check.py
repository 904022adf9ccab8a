"""scripts/gpu_check.py runs on a CPU with tiny shapes (``--cpu --tiny``): the GPU check's whole
path (FSDP2 through ModelParallelStrategy, bf16-mixed, HFEngine rollouts, 3 rounds of GC-RL,
the plan estimate, the JSON line) without a GPU, and with none of sorl's modules importing what
the GPU machine lacks (jsonargparse, vLLM, math-verify, reasoning-gym, gguf)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Refuses those packages to importers inside sorl (lightning itself may still look for
# jsonargparse: it does so only when it is installed), then runs the script.
RUN_WITHOUT_EXTRAS = """
import sys
MISSING = {"jsonargparse", "vllm", "math_verify", "reasoning_gym", "gguf"}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in MISSING:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        if importer.startswith("sorl") or importer == "__main__":
            raise ImportError(f"{name} is not installed on the GPU machine (imported by {importer})")
        return None
sys.meta_path.insert(0, Refuse())
import runpy
sys.argv = ["scripts/gpu_check.py", *sys.argv[1:]]
runpy.run_path("scripts/gpu_check.py", run_name="__main__")
"""


def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, "-c", RUN_WITHOUT_EXTRAS, "--cpu", "--tiny", "--profile", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    assert len(printed["rounds"]) == 3
    assert all(r["responses"] > 0 and r["critiques"] > 0 and r["train_tokens"] > 0 and r["optimizer_steps"] > 0 for r in printed["rounds"])
    assert printed["rollout_tokens_per_s"] > 0 and printed["train_tokens_per_s"] > 0 and printed["train_model_tflops_per_s"] >= 0
    profile = (tmp_path / "gpu_check-profile.txt").read_text()
    assert "sorted by self_cpu_time_total" in profile and "aten::mm" in profile
    assert printed["plan"]["per_gpu_gib"] > 0
    assert printed["peak_memory_gib"] is None  # no CUDA device
