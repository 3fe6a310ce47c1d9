"""The sizes the memory planner reasons with, read from a case's settings (nothing is built).

Byte widths: ``s`` is the dtype of the parameters and of the residual stream (4 in float32, 8
when the case trains in float64); ``a`` is the dtype of matrix-product outputs (2 under
bf16/fp16 autocast, else ``s``); ``st`` is the dtype of normalisation statistics, attention
log-sum-exps and router probabilities (8 in float64, else 4: they stay float32 under autocast).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from revbench.gpus import Gpu, by_device_name, by_name
from revbench.models import ARCHITECTURES
from revbench.models.config import ModelConfig, is_reversible

INT64 = 8
MMAP_THRESHOLD = 65536
"""CPU: tensors of this many bytes or more get a mapping of their own, smaller ones come from
malloc's heap (revbench's memory processes run with ``MALLOC_MMAP_THRESHOLD_=65536``)."""
CUDA_BLOCK = 512
"""CUDA: PyTorch's caching allocator rounds every allocation up to this many bytes."""


def cuda_charge(nbytes: int) -> int:
    """Bytes an allocation of ``nbytes`` takes from PyTorch's CUDA caching allocator."""
    return -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK


@dataclasses.dataclass(frozen=True)
class Dims:
    cfg: ModelConfig
    B: int
    """Sequences per step (per rank in a parallel case)."""
    T: int
    """Sequence length."""
    s: int
    a: int
    st: int
    autocast: bool
    device: str
    """cpu or cuda: the attention kernel's output layout and the allocator differ."""
    optimizer: str
    world_size: int
    parallel: str
    warm_optimizer: bool = True
    """The optimizer's state exists when the measured step starts (a step ran before it); a
    single-step measurement (a max-batch trial with ``trial_steps: 1``) has it only from its
    optimizer step on."""
    cublas_workspace: int = 0
    """CUDA: bytes of one cuBLAS workspace (``cublas_workspace_bytes``); 0 on CPU."""
    sms: int = 0
    """CUDA: the card's streaming multiprocessors; 0 on CPU."""
    threads_per_sm: int = 0
    """CUDA: the card's most resident threads per multiprocessor; 0 on CPU."""

    @property
    def N(self) -> int:
        """Tokens of one step on one device."""
        return self.B * self.T

    @property
    def d(self) -> int:
        return self.cfg.d_model

    @property
    def F(self) -> int:
        return self.cfg.d_ff

    @property
    def H(self) -> int:
        return self.cfg.n_heads

    @property
    def kv(self) -> int:
        """Width of the key (and of the value) projection: kv heads x head size."""
        return self.cfg.kv_heads * self.cfg.head_dim

    @property
    def V(self) -> int:
        return self.cfg.vocab_size

    @property
    def L(self) -> int:
        return self.cfg.n_layers

    @property
    def llama(self) -> bool:
        return self.cfg.block == "llama"

    @property
    def reversible(self) -> bool:
        return is_reversible(self.cfg.arch)

    @property
    def readout(self) -> str:
        """What the head reads from a reversible model's final state (the model's readout
        setting, or the registry's fact)."""
        if self.cfg.readout != "auto":
            return self.cfg.readout
        return ARCHITECTURES.get(self.cfg.arch).readout or "last"

    @property
    def recompute(self) -> str:
        """What one backward step of a reversible model recomputes (the registry's fact)."""
        return ARCHITECTURES.get(self.cfg.arch).recompute or "block"

    @property
    def attention_output_copied(self) -> bool:
        """Whether attention's output is copied to (B, T, H, hs) order for the projection: the
        CPU kernel lays its output out like q, so a contiguous q (rotated: llama) gives a
        (B, H, T, hs) output; CUDA's flash and memory-efficient kernels always write
        (B, T, H, hs)."""
        return self.device == "cpu" and self.llama

    @property
    def gloo_staging(self) -> bool:
        """FSDP2 on CPU (gloo) stages a collective's whole tensor while it is in flight.

        Measured (torch 2.13, 2 gloo ranks, ``MALLOC_MMAP_THRESHOLD_=65536``): an asynchronous
        ``all_gather_into_tensor`` of a 4 MiB output raises the high-water mark by 3.8 MiB
        beyond its input and output, an asynchronous ``reduce_scatter_tensor`` of a 4 MiB
        input by 3.8-3.9 MiB; in a traced FSDP2 step the memory no tensor accounts for rises
        by one block's whole bytes when a block's all-gather or reduce-scatter is issued and
        falls when it is waited on. NCCL reduces in place in its own small buffers, so CUDA
        plans have no such term."""
        return self.device == "cpu" and self.parallel == "fsdp"

    @property
    def qkv_bias(self) -> bool:
        """The attention's q, k and v projections have a bias (``attn_bias``; gpt2: all)."""
        return self._attn_bias in ("qkv", "all")

    @property
    def proj_bias(self) -> bool:
        """The attention's output projection has a bias."""
        return self._attn_bias == "all"

    @property
    def _attn_bias(self) -> str:
        bias = self.cfg.attn_bias
        return bias if bias != "auto" else "all" if self.cfg.block == "gpt2" else ""

    def bias_grad_scratch(self, rows: int, n_out: int) -> int:
        """Bytes a Linear's bias gradient borrows while autograd sums it over ``rows`` rows:
        on CUDA the column sum's global buffer (``column_sum_buffer_bytes``) and its
        semaphores, each from the caching allocator; nothing on CPU."""
        if self.device != "cuda" or not self.sms:
            return 0
        return column_sum_scratch_bytes(rows, n_out, self.st, self.sms, self.threads_per_sm)

    @property
    def moe(self) -> bool:
        """The FFN is routed experts (``moe``, or ``revffn`` with experts)."""
        return self.cfg.n_experts > 0

    @property
    def slot(self) -> int:
        """Bytes of one (B, T, d) tensor of the residual stream."""
        return self.s * self.N * self.d

    def charge(self, nbytes: int) -> int:
        """Bytes a tensor of ``nbytes`` takes from its allocator.

        CPU (glibc malloc with ``MALLOC_MMAP_THRESHOLD_=65536``, as revbench's memory
        processes run): a tensor of 64 KiB or more gets its own mapping, its size rounded up
        to whole 4 KiB pages plus the page that malloc's chunk header and PyTorch's 64-byte
        alignment spill into (measured: 4 KiB per such tensor); smaller ones come from the
        heap. CUDA (PyTorch's caching allocator): sizes rounded up to 512 bytes."""
        if self.device == "cuda":
            return cuda_charge(nbytes)
        if nbytes >= MMAP_THRESHOLD:
            return -(-nbytes // 4096) * 4096 + 4096
        return nbytes

    def with_batch(self, B: int) -> Dims:
        return dataclasses.replace(self, B=B)

    def with_seq(self, T: int) -> Dims:
        return dataclasses.replace(self, T=T)


_BYTES = {"float32": 4, "float64": 8, "bfloat16": 4, "float16": 4}
HOPPER_WORKSPACE = 4096 * 8 * 1024
"""cuBLAS workspace PyTorch gives each (cuBLAS handle, stream) on compute capability 9.x and
later: 32 MiB (measured on an H100 with torch 2.11: the first matmul adds 32 MiB to
``memory_allocated`` beyond its tensors, and the first backward matmul 32 MiB more)."""
OLDER_WORKSPACE = 4096 * 1024 * 2 + 16 * 1024 * 8
"""PyTorch's default before compute capability 9 (``CUBLAS_WORKSPACE_CONFIG=:4096:2:16:8``)."""


def cublas_workspace_bytes(
    capability: tuple[int, int] | None = None, config: str | None = None
) -> int:
    """Bytes of one cuBLAS workspace as PyTorch sizes it: ``CUBLAS_WORKSPACE_CONFIG``
    (``:SIZE:COUNT`` pairs, SIZE in KiB) when set and readable, else by compute capability
    (None: the current CUDA device when torch has initialised CUDA already, else 9.x, the
    larger size). PyTorch takes it from its caching allocator, so it is inside
    ``max_memory_allocated``, and keeps it for the life of the process."""
    import os
    import re

    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG") if config is None else config
    if config:
        pairs = re.findall(r":([0-9]+):([0-9]+)", config)
        if pairs:
            return sum(int(size) * 1024 * int(count) for size, count in pairs)
    if capability is None:
        capability = (_current_gpu() or by_name("H100-80GB")).capability
    return HOPPER_WORKSPACE if capability[0] >= 9 else OLDER_WORKSPACE


def _current_gpu() -> Gpu | None:
    """The current CUDA device as a ``Gpu`` (its capability and multiprocessors) when torch
    has initialised CUDA already, else None."""
    import sys

    torch = sys.modules.get("torch")  # never initialise CUDA just to plan
    if torch is None or not torch.cuda.is_initialized():
        return None
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    known = by_device_name(p.name)
    return Gpu(
        known.name if known else p.name,
        (p.name,),
        int(p.total_memory),
        known.bf16_tflops if known else 0.0,
        known.fp32_tflops if known else 0.0,
        (int(p.major), int(p.minor)),
        int(p.multi_processor_count),
    )


def column_sum_buffer_bytes(
    rows: int, cols: int, acc_bytes: int, sms: int, threads_per_sm: int
) -> tuple[int, int]:
    """(global buffer, semaphore) bytes PyTorch's CUDA reduction kernel allocates to sum a
    contiguous (rows, cols) tensor over its rows, as autograd sums a Linear's bias gradient
    (``InputMetadata::reduce_grad`` -> ``sum_to``): a port of ``setReduceConfig`` and
    ``ReduceConfig::global_memory_size`` (``ATen/native/cuda/Reduce.cuh``, torch 2.11) for a
    reduction over the slower dimension with its output vectorised along the columns.

    When the rows are many and the columns few, the kernel splits each column's sum over
    ``ctas`` thread blocks and stages their partial sums (float32: ``acc_bytes``) in a buffer
    of ``acc_bytes x cols x ctas x block.x x vec`` bytes, freed when the kernel's caller
    returns. Measured on an H200 (132 multiprocessors, torch 2.11): a GELU MLP's bias
    gradients at 8,192 rows borrowed exactly 128 MiB (2,048 columns) and 32 MiB (512)."""
    if rows <= 1 or cols <= 0 or sms <= 0 or threads_per_sm <= 0:
        return 0, 0
    vec = 4  # get_output_vec_size: 4, halved until it divides the columns (aligned storage)
    while cols % vec:
        vec //= 2
    most = 512 // vec  # MAX_NUM_THREADS / output_vec_size
    dim0, dim1 = cols // vec, rows
    p0 = most if dim0 >= most else _last_pow2(dim0)
    p1 = most if dim1 >= most else _last_pow2(dim1)
    width = min(p0, 32)  # a warp
    height = min(p1, most // width)
    width = min(p0, most // height)
    step_out, step_in = width, 1  # the columns split across a warp's lanes
    warps = -(-rows // step_in) >= min(height * 16, 256)
    if warps:  # the rows split across the block's warps
        step_in *= height
    else:
        step_out *= height
    grid = -(-(cols // vec) // step_out)
    target = sms * (threads_per_sm // (width * height))
    per_thread = -(-rows // step_in)
    if not (warps and per_thread >= 256 and grid <= target):
        return 0, 0
    ctas = max(min(-(-target // grid), -(-per_thread // 16)), -(-per_thread // 256))
    if ctas <= 1:
        return 0, 0
    return acc_bytes * cols * ctas * width * vec, 4 * grid


def column_sum_scratch_bytes(
    rows: int, cols: int, acc_bytes: int, sms: int, threads_per_sm: int
) -> int:
    """What that column sum borrows from the CUDA caching allocator: its global buffer and its
    semaphores (``column_sum_buffer_bytes``), each rounded as the allocator rounds them."""
    buf, sems = column_sum_buffer_bytes(rows, cols, acc_bytes, sms, threads_per_sm)
    return cuda_charge(buf) + cuda_charge(sems) if buf else 0


def _last_pow2(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def dims_of(
    model: dict[str, Any],
    data: dict[str, Any],
    train: dict[str, Any],
    measure: dict[str, Any] | None = None,
    *,
    gpu: Gpu | None = None,
) -> Dims:
    """``Dims`` of a case's model, data and train sections (plain dicts, as ``Case`` holds);
    ``measure`` tells whether the measured steps start with the optimizer's state; ``gpu`` is
    the CUDA card planned for (its capability sizes cuBLAS's workspace, its multiprocessors
    the reductions' buffers): the current device when None and torch has initialised CUDA,
    else an H100."""
    cfg = model if isinstance(model, ModelConfig) else ModelConfig(**model)
    dtype = train.get("dtype", "float32")
    autocast = dtype in ("bfloat16", "float16")
    s = _BYTES[dtype]
    device = train.get("device", "auto")
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    parallel = train.get("parallel", "none")
    card = (gpu or _current_gpu() or by_name("H100-80GB")) if device == "cuda" else None
    return Dims(
        cfg=cfg,
        B=int(data["batch_size"]),
        T=int(data["seq_len"]),
        s=s,
        a=2 if autocast else s,
        st=8 if dtype == "float64" else 4,
        autocast=autocast,
        device=device,
        optimizer=train.get("optimizer", "adamw"),
        world_size=int(train.get("nproc_per_node", 1)) if parallel != "none" else 1,
        parallel=parallel,
        warm_optimizer=_steps_before(measure) > 0,
        cublas_workspace=cublas_workspace_bytes(card.capability) if card else 0,
        sms=card.sms if card else 0,
        threads_per_sm=card.threads_per_sm if card else 0,
    )


def _steps_before(measure: dict[str, Any] | None) -> int:
    """Full steps before the last measured one (``peak_memory``: warmup + steps - 1)."""
    if measure is None:
        return 1
    return int(measure.get("warmup", 1)) + int(measure.get("steps", 3)) - 1


def _cuda_available() -> bool:
    import sys

    torch = sys.modules.get("torch")  # never import torch (and CUDA) just to plan
    return bool(torch is not None and torch.cuda.is_available())
