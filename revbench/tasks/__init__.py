"""Accuracy tasks (language modeling, classification, synthetic checks): a registry by name.

``build_task(name, **config)`` gives a task with its config validated; ``revbench list`` reads
``TASKS``. The ``accuracy`` metric (revbench.tasks.metric) runs a case's ``data.task``. The
tasks import torch: they are imported (and registered) on the first use of a name below, so
that importing ``revbench.tasks.metric`` for its columns does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TASKS", "Task", "TaskContext", "TaskResult", "build_task"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from revbench.tasks import base, classify, lm, synthetic  # noqa: F401  (registers them)

        return getattr(base, name)
    raise AttributeError(f"module 'revbench.tasks' has no attribute '{name}'")
