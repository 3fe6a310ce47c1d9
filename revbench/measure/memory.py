"""Memory trackers: tensors saved for backward, and the process's resident-set high-water mark.

Two figures, because on CPU neither alone is the truth (docs/measurement.md):

* ``SavedTensors`` counts the bytes autograd keeps between forward and backward, storage by
  storage: the activation memory a scheme is responsible for, free of allocator effects.
* ``read_peak_rss`` reads what the OS saw (VmHWM). glibc keeps freed heap, so run it in a child
  with ``MALLOC_MMAP_THRESHOLD_=65536`` for it to follow live tensor memory.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable
from types import TracebackType

import psutil
import torch


def _in_backward() -> bool:
    # -1 outside a backward pass. Private, but it is what torch.utils.checkpoint itself uses to
    # tell forward from backward; without it, the recompute graphs a reversible backward builds
    # (one block at a time, freed as it goes) would be summed as if they all lived at once.
    return torch._C._current_graph_task_id() != -1


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(key, bytes) of the storage behind ``t``; views of one storage share the key.

    A wrapper subclass (its own ``__torch_dispatch__``: FSDP2's sharded DTensor parameters) has
    no storage of its own and is keyed by identity without asking: asking raises a C++ error,
    and raising it at every saved tensor (``SavedTensors`` looks the parameters up each time)
    grew the process's memory inside the measured step (FSDP2 midpoint on 2 gloo ranks: peak
    32.7 MiB, 28.4 without)."""
    if type(t).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
        return id(t), t.numel() * t.element_size()
    try:
        st = t.untyped_storage()
        return st.data_ptr(), st.nbytes()
    except (RuntimeError, NotImplementedError):  # storage-less tensors (sparse, subclasses)
        return id(t), t.numel() * t.element_size()


class SavedTensors:
    """Context manager: bytes of the tensors autograd saves for backward while it is open.

    Counts every tensor packed by ``torch.autograd.graph.saved_tensors_hooks`` outside a backward
    pass, which includes what custom autograd Functions keep with ``ctx.save_for_backward`` and the
    inputs non-reentrant checkpointing keeps. Storages are de-duplicated (a tensor and its views
    count once) and parameters are excluded. Tensors saved inside a non-reentrant checkpoint region
    are not seen (its own hooks take them, and it keeps none). ``.bytes`` is set on exit.

    >>> with SavedTensors(model.parameters()) as saved:
    ...     model(ids, labels=ids).loss.backward()
    >>> saved.bytes
    """

    def __init__(
        self,
        exclude: Iterable[torch.Tensor | int] = (),
        *,
        exclude_now: Callable[[], Iterable[torch.Tensor]] | None = None,
    ) -> None:
        """``exclude``: parameters (or any tensors) whose storage is not activation memory, or
        their storages' ``data_ptr()`` values. ``exclude_now``: tensors looked up at each save,
        for parameters whose storage changes between passes (the whole parameters FSDP2
        all-gathers for every forward, e.g. ``model.parameters``)."""
        self._exclude = {_storage(t)[0] if isinstance(t, torch.Tensor) else int(t) for t in exclude}
        self._exclude_now = exclude_now
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self.bytes = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if not _in_backward():
            self._count(t)
        return t

    def _count(self, t: torch.Tensor) -> None:
        key, nbytes = _storage(t)
        now = () if self._exclude_now is None else self._exclude_now()
        if key not in self._exclude and all(_storage(p)[0] != key for p in now):
            self._seen[key] = max(nbytes, self._seen.get(key, 0))

    def include_kept(self, output: torch.Tensor) -> None:
        """Count what autograd Functions in ``output``'s graph keep on ``ctx`` outside
        ``save_for_backward`` (the reversible Function's final state, ``ctx.final``): kept
        for backward all the same, but invisible to saved-tensor hooks. Call before the
        backward, which consumes it."""
        seen, stack = set(), [output.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            for t in getattr(node, "final", None) or ():
                self._count(t)
            stack.extend(f for f, _ in node.next_functions)

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> SavedTensors:
        self._seen.clear()
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(exc_type, exc, tb)
        self.bytes = sum(self._seen.values())


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes, or None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (VmHWM) to its current RSS.

    Writes "5" to /proc/self/clear_refs (Linux >= 4.0). Returns False where that is not
    supported; ``read_peak_rss`` then falls back to the never-reset ``ru_maxrss``.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def read_peak_rss() -> int:
    """Peak resident set size in bytes: VmHWM, else ``ru_maxrss`` (process lifetime peak)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    # Linux reports ru_maxrss in KiB (macOS in bytes; revbench's CPU numbers come from Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_rss() -> int:
    """Current resident set size in bytes (VmRSS, else psutil)."""
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else psutil.Process().memory_info().rss


class PeakMemory:
    """The memory high-water mark of one device, restartable: what every memory metric reads.

    CUDA: the caching allocator's statistics (``max_memory_allocated``: the tensors' bytes). CPU:
    the kernel's high-water mark of the process's resident set (VmHWM, restarted through
    ``/proc/self/clear_refs``; ``ru_maxrss``, which cannot be restarted, where that is missing),
    which with large allocations forced onto mmap (``MALLOC_MMAP_THRESHOLD_``) follows the live
    tensors (docs/measurement.md). ``method`` names which, as the result rows record it.

        mem = PeakMemory(device, sync)      # sync: waits for the device's queued work
        before = mem.reset()                # restart the mark; bytes in use now
        ...                                 # the measured work
        grown = mem.peak() - before         # how far above ``before`` it went

    or as a context manager (``with PeakMemory(device) as mem: ...`` then ``mem.grown``).
    """

    def __init__(self, device: torch.device, synchronize: Callable[[], None] | None = None) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._sync = synchronize or (lambda: None)
        if self.cuda:
            self.method = "cuda_max_allocated"
        else:
            mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")  # what this process started with
            resettable = reset_peak_rss()
            self.method = ("vmhwm" if resettable else "ru_maxrss") + (
                f"+mmap{mmap}" if mmap else ""
            )
        self.resettable = self.cuda or self.method.startswith("vmhwm")
        self.before = 0
        self.grown = 0

    def in_use(self) -> int:
        """Bytes in use now (allocated tensors on CUDA, the resident set on CPU)."""
        if self.cuda:
            self._sync()
            return int(torch.cuda.memory_allocated(self.device))
        return read_rss()

    def reset(self) -> int:
        """Restart the high-water mark at what is in use now, and return that."""
        if self.cuda:
            self._sync()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        self.before = self.in_use()
        return self.before

    def peak(self) -> int:
        """The high-water mark since the last ``reset`` (absolute bytes)."""
        self._sync()
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return read_peak_rss()

    def __enter__(self) -> PeakMemory:
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.grown = self.peak() - self.before
