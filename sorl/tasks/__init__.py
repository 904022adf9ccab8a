from sorl.tasks.arithmetic import ArithmeticTask
from sorl.tasks.base import CritiqueExample, Question, Task
from sorl.tasks.math import MathTask
from sorl.tasks.math_data import MathDataset
# reasoning_gym.py imports the reasoning-gym package only when a task is built (pip install 'sorl[reasoning]')
from sorl.tasks.reasoning_gym import ReasoningGymTask

__all__ = ["ArithmeticTask", "CritiqueExample", "MathDataset", "MathTask", "Question", "ReasoningGymTask", "Task"]
