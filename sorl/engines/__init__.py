from sorl.engines.base import Completion, RolloutEngine, SamplingParams
from sorl.engines.hf import HFEngine

__all__ = ["Completion", "HFEngine", "RolloutEngine", "SamplingParams"]
