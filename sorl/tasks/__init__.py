from sorl.tasks.arithmetic import ArithmeticTask
from sorl.tasks.base import CritiqueExample, Question, Task

__all__ = ["ArithmeticTask", "CritiqueExample", "Question", "Task"]
