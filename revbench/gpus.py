"""GPUs revbench knows: memory and peak dense rates, one table for MFU and the memory planner.

Rates are the vendors' datasheet peak dense (no sparsity) TFLOP/s: bf16/fp16 on tensor cores,
and fp32 without TF32. Memory is what ``torch.cuda.get_device_properties(...).total_memory``
(nvidia-smi's total) reports for the card, in MiB: read on this project's own lent machines
where marked, else the figure nvidia-smi commonly shows for that card. A device name
(``NVIDIA H100 80GB HBM3``) is matched by the first entry whose ``match`` patterns all occur in
it, so the more specific entries come first (H100 PCIe before H100, A10G before A10).
"""

from __future__ import annotations

import dataclasses

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    """Short name for the command line (``revbench plan --gpu H100-80GB``)."""
    match: tuple[str, ...]
    """Substrings that all occur in ``torch.cuda.get_device_name()`` for this card."""
    memory_bytes: int
    bf16_tflops: float
    fp32_tflops: float
    capability: tuple[int, int] = (9, 0)
    """CUDA compute capability (``torch.cuda.get_device_capability()``): the memory planner
    sizes cuBLAS's workspace by it."""
    sms: int = 132
    """Streaming multiprocessors (``multi_processor_count``): PyTorch's reduction kernels size
    their grid, and so their global scratch buffer, by it (the memory planner's bias-gradient
    term)."""

    @property
    def threads_per_sm(self) -> int:
        """Most resident threads per multiprocessor (``max_threads_per_multi_processor``), by
        compute capability: 1024 on Turing (7.5), 1536 on 8.6 and 8.9, else 2048."""
        return max_threads_per_sm(self.capability)

    def peak_tflops(self, dtype: str) -> float:
        return self.bf16_tflops if dtype in ("bfloat16", "float16") else self.fp32_tflops


def max_threads_per_sm(capability: tuple[int, int]) -> int:
    """Most resident threads per multiprocessor of a compute capability (CUDA's
    programming guide, table of technical specifications)."""
    if capability == (7, 5):
        return 1024
    if capability in ((8, 6), (8, 7), (8, 9)):
        return 1536
    return 2048


GPUS: tuple[Gpu, ...] = (
    Gpu("H100-PCIe", ("H100", "PCIe"), 81559 * MiB, 756.0, 51.2, (9, 0), 114),
    Gpu("H100-80GB", ("H100",), 81559 * MiB, 989.4, 66.9, (9, 0), 132),  # SXM; memory read here
    Gpu("H200", ("H200",), 143771 * MiB, 989.4, 66.9, (9, 0), 132),  # 143771 MiB read here
    Gpu("H800", ("H800",), 81559 * MiB, 989.4, 66.9, (9, 0), 132),
    Gpu("A100-80GB", ("A100", "80GB"), 81920 * MiB, 312.0, 19.5, (8, 0), 108),
    Gpu("A100-40GB", ("A100",), 40960 * MiB, 312.0, 19.5, (8, 0), 108),
    Gpu("L40S", ("L40S",), 46068 * MiB, 362.1, 91.6, (8, 9), 142),
    Gpu("A10G", ("A10G",), 23028 * MiB, 70.0, 31.2, (8, 6), 80),
    Gpu("A10", ("A10",), 23028 * MiB, 125.0, 31.2, (8, 6), 72),
    Gpu("RTX6000-Ada", ("RTX 6000 Ada",), 49140 * MiB, 364.2, 91.1, (8, 9), 142),
    Gpu("RTX-A6000", ("RTX A6000",), 49140 * MiB, 154.8, 38.7, (8, 6), 84),
    Gpu("RTX6000", ("RTX 6000",), 24576 * MiB, 130.5, 16.3, (7, 5), 72),  # Quadro (Turing)
    Gpu("RTX4090", ("4090",), 24564 * MiB, 165.2, 82.6, (8, 9), 128),
    Gpu("V100-32GB", ("V100", "32GB"), 32510 * MiB, 125.0, 15.7, (7, 0), 80),
    Gpu("V100-16GB", ("V100",), 16160 * MiB, 125.0, 15.7, (7, 0), 80),
)


def by_device_name(device_name: str | None) -> Gpu | None:
    """The table's entry for a CUDA device name, or None when it is not in the table."""
    if not device_name:
        return None
    name = device_name.lower()
    for gpu in GPUS:
        if all(m.lower() in name for m in gpu.match):
            return gpu
    return None


def by_name(name: str) -> Gpu:
    """The entry with this short name (case-insensitive); ``KeyError`` naming the known ones."""
    for gpu in GPUS:
        if gpu.name.lower() == name.strip().lower():
            return gpu
    raise KeyError(f"unknown GPU '{name}'; known: {', '.join(g.name for g in GPUS)}")
