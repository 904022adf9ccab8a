from sorl.engines.base import Completion, RolloutEngine, SamplingParams
from sorl.engines.hf import HFEngine
from sorl.engines.vllm import VLLMEngine  # imports vllm only when an engine starts

__all__ = ["Completion", "HFEngine", "RolloutEngine", "SamplingParams", "VLLMEngine"]
