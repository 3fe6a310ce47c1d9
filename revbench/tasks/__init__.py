"""Accuracy tasks (language modeling, classification, synthetic checks): a registry by name.

``build_task(name, **config)`` gives a task with its config validated; ``revbench list`` reads
``TASKS``. The ``accuracy`` metric (revbench.tasks.metric) runs a case's ``data.task``.
"""

from __future__ import annotations

from revbench.tasks import classify, lm, synthetic  # noqa: F401  (register the tasks)
from revbench.tasks.base import TASKS, Task, TaskContext, TaskResult, build_task

__all__ = ["TASKS", "Task", "TaskContext", "TaskResult", "build_task"]
