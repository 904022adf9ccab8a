from sorl.callbacks.base import RolloutCallback
from sorl.callbacks.evaluation import Evaluation
from sorl.callbacks.label_balancing import LabelBalancing
from sorl.callbacks.preemption import PreemptionCheckpoint
from sorl.callbacks.reward_denoising import RewardDenoising
from sorl.callbacks.reward_noise import RewardNoise, StepOracleTask
from sorl.callbacks.rollout_log import RolloutLog

__all__ = ["Evaluation", "LabelBalancing", "PreemptionCheckpoint", "RewardDenoising", "RewardNoise", "RolloutCallback", "RolloutLog", "StepOracleTask"]
