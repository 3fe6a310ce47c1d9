"""Accuracy tasks (language modeling, classification, synthetic checks): a registry by name.

Tasks arrive with the accuracy issue; ``revbench list`` already reads this registry.
"""

from __future__ import annotations

from typing import Any

from revbench.registry import Registry

TASKS: Registry[Any] = Registry("task")
