from sorl.tasks.arithmetic import ArithmeticTask
from sorl.tasks.base import CritiqueExample, Question, Task
from sorl.tasks.math import MathDataset, MathTask

__all__ = ["ArithmeticTask", "CritiqueExample", "MathDataset", "MathTask", "Question", "Task"]
