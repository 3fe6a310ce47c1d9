"""What one case run asks of a cluster (Ray or Slurm): a suite's ``resources:`` block.

    resources: {GPU: 1, H100: 1}     # CPU and GPU as Ray spells them; any other key is custom

Custom resources pick a kind of node: a GPU type (Ray nodes started with
``ray start --resources '{"H100": 8}'``; on Slurm they become ``--constraint``). The block only
places case runs, so it is not part of any case's settings or config hash; a row records the
device and host it actually ran on.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from revbench.errors import SuiteError
from revbench.limits import quote

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

if TYPE_CHECKING:
    from revbench.case import Case

CPU, GPU = "CPU", "GPU"


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each case run asks of a cluster, from the suite's ``resources:`` block.

    ``CPU`` defaults to the case's ``threads`` (at least 1) per process, ``GPU`` to one per
    process for cases that run on CUDA (``device: cuda``, or ``auto`` where the cluster has
    GPUs); other keys are custom resources asked for as given.
    """

    cpus: float | None = None
    gpus: float | None = None
    custom: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str = "resources") -> Resources:
        custom: dict[str, float] = {}
        cpus = gpus = None
        for key, value in raw.items():
            name = quote(key, 40) if not isinstance(key, str) or len(key) > 40 else key
            if not isinstance(key, str) or not _NAME.fullmatch(key):
                raise SuiteError(
                    f"{where}: resource name {name} must be 1 to 64 letters, digits, _ - . :"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise SuiteError(f"{where}.{name}: must be a number >= 0, got {quote(value)}")
            if not math.isfinite(value) or value > 1e9:
                raise SuiteError(f"{where}.{name}: must be a finite number up to 1e9, got {value}")
            if key.upper() in (CPU, GPU) and key not in (CPU, GPU):
                raise SuiteError(f"{where}: unknown resource '{key}'; write '{key.upper()}'")
            if key == CPU:
                cpus = float(value)
            elif key == GPU:
                gpus = float(value)
            else:
                custom[str(key)] = float(value)
        return cls(cpus, gpus, custom)

    def merged(self, other: Resources) -> Resources:
        """These resources with ``other``'s settings on top (the command line over the suite)."""
        return Resources(
            other.cpus if other.cpus is not None else self.cpus,
            other.gpus if other.gpus is not None else self.gpus,
            {**self.custom, **other.custom},
        )

    def for_case(
        self, case: Case, *, gpus_available: bool
    ) -> tuple[float, float, dict[str, float]]:
        """(CPUs, GPUs, custom resources) one run of ``case`` asks for."""
        nproc = case.train.nproc_per_node
        device = case.train.device
        on_gpu = device == "cuda" or (device == "auto" and gpus_available)
        cpus = self.cpus if self.cpus is not None else float(max(1, case.train.threads) * nproc)
        gpus = self.gpus if self.gpus is not None else float(nproc if on_gpu else 0)
        return cpus, gpus, dict(self.custom)
