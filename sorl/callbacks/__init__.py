from sorl.callbacks.base import RolloutCallback
from sorl.callbacks.evaluation import Evaluation
from sorl.callbacks.label_balancing import LabelBalancing

__all__ = ["Evaluation", "LabelBalancing", "RolloutCallback"]
