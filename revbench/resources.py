"""What one case run asks of a cluster (Ray or Slurm): a suite's ``resources:`` block.

    resources: {GPU: 1, H100: 1}     # CPU and GPU as Ray spells them; any other key is custom

Custom resources pick a kind of node: a GPU type (Ray nodes started with
``ray start --resources '{"H100": 8}'``; on Slurm they become ``--constraint``). The block only
places case runs, so it is not part of any case's settings or config hash; a row records the
device and host it actually ran on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from revbench.errors import SuiteError

if TYPE_CHECKING:
    from revbench.suite import Case

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
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise SuiteError(f"{where}.{key}: must be a number >= 0, got {value!r}")
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
        nproc = case.train["nproc_per_node"]
        device = case.train["device"]
        on_gpu = device == "cuda" or (device == "auto" and gpus_available)
        cpus = self.cpus if self.cpus is not None else float(max(1, case.train["threads"]) * nproc)
        gpus = self.gpus if self.gpus is not None else float(nproc if on_gpu else 0)
        return cpus, gpus, dict(self.custom)
