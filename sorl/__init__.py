"""sorl: second-order rollout RL (GC-RL) for reasoning LLMs on PyTorch Lightning."""

from sorl.callbacks import Evaluation, LabelBalancing, PreemptionCheckpoint, RewardDenoising, RewardNoise, RolloutCallback, RolloutLog
from sorl.data import RolloutDataModule
from sorl.engines import HFEngine, RolloutEngine, SamplingParams, VLLMEngine
from sorl.loss import GRPOLoss, group_advantages
from sorl.module import GCRLModule
from sorl.rollout import Round, RolloutContext, Sample
from sorl.sampler import Sampler
from sorl.sft import SFTDataModule, SFTModule
from sorl.tasks import ArithmeticTask, CritiqueExample, MathDataset, MathTask, Question, ReasoningGymTask, Task
from sorl.verify import MathVerifier

__all__ = [
    "ArithmeticTask",
    "CritiqueExample",
    "Evaluation",
    "GCRLModule",
    "GRPOLoss",
    "HFEngine",
    "LabelBalancing",
    "MathDataset",
    "MathTask",
    "MathVerifier",
    "PreemptionCheckpoint",
    "Question",
    "ReasoningGymTask",
    "RewardDenoising",
    "RewardNoise",
    "RolloutCallback",
    "RolloutContext",
    "RolloutLog",
    "Round",
    "RolloutDataModule",
    "RolloutEngine",
    "SFTDataModule",
    "SFTModule",
    "Sample",
    "Sampler",
    "SamplingParams",
    "Task",
    "VLLMEngine",
    "group_advantages",
]
