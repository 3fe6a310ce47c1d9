"""A replay of one training step's tensor allocations and frees, to find its peak.

The planner does not run the model: it walks the same sequence of operations the model and
autograd perform (``replay.py``) and books each tensor they create here, with reference counts
standing in for Python's and autograd's references, so a tensor goes when its last holder lets
it go, as it does in PyTorch (a saved tensor is held by its node until that node's backward has
run; a gradient by the engine until the node it feeds has run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(eq=False)
class Buf:
    """One tensor's memory (a storage): its size and how many holders it has."""

    nbytes: int
    name: str
    refs: int = 1
    small: bool = False
    """Allocated from malloc's heap (``Timeline.heap``)."""


class Timeline:
    """Live bytes over the step; the peak and where it happened.

    With ``heap`` (the bytes below which a tensor comes from malloc's heap rather than a
    mapping of its own: CPU, ``MALLOC_MMAP_THRESHOLD_``), what the process holds is the live
    mapped tensors plus the heap's high-water mark, not the live heap tensors: glibc keeps the
    heap's touched pages when its tensors are freed (the chunks between them cannot go back).
    ``heap_floor`` is the heap high-water a step starts with (a warm step's: the heap peak of
    the steps before it, the same as its own); ``heap_free`` the heap that was free, and
    resident, before the step (``replay.warm_up_heap``): the heap costs its high-water mark
    beyond that."""

    def __init__(
        self,
        base: int = 0,
        charge: Callable[[int], int] | None = None,
        heap: int = 0,
        heap_floor: int = 0,
        heap_free: int = 0,
    ) -> None:
        """``charge(nbytes)``: what a tensor of ``nbytes`` costs the allocator (its rounding
        and bookkeeping); the bytes themselves when None."""
        self.charge = charge or (lambda n: n)
        self.heap = heap
        self.small = 0  # live bytes of heap tensors
        self.small_peak = 0  # their most at once over this step
        self.heap_hw = heap_floor  # the heap's high-water mark so far
        self.heap_free = heap_free
        self.live = base
        self.peak = self.resident()
        self.where = "start"
        self.phase = "forward"
        self.marks: dict[str, int] = {}

    def resident(self) -> int:
        """What the process holds now: every live tensor, the heap at its high-water mark
        (beyond the free heap it started with)."""
        return self.live - self.small + max(self.heap_hw - self.heap_free, 0)

    def new(self, nbytes: int, name: str) -> Buf:
        """A new tensor with one holder."""
        b = Buf(self.charge(int(nbytes)) if nbytes else 0, name)
        b.small = 0 < int(nbytes) < self.heap
        self.live += b.nbytes
        if b.small:
            self.small += b.nbytes
            self.small_peak = max(self.small_peak, self.small)
            self.heap_hw = max(self.heap_hw, self.small)
        now = self.resident()
        if now > self.peak:
            self.peak, self.where = now, f"{self.phase}: {name}"
        return b

    def temp(self, nbytes: int, name: str) -> None:
        """A tensor made and dropped inside one operation (a kernel's workspace)."""
        self.drop(self.new(nbytes, name))

    def hold(self, *bufs: Buf | None) -> None:
        for b in bufs:
            if b is not None:
                b.refs += 1

    def drop(self, *bufs: Buf | None) -> None:
        """One holder of each lets go; a tensor with none left is freed."""
        for b in bufs:
            if b is None:
                continue
            b.refs -= 1
            if b.refs == 0:
                self.live -= b.nbytes
                if b.small:
                    self.small -= b.nbytes
            elif b.refs < 0:
                raise AssertionError(f"{b.name} released more often than held")

    def mark(self, label: str) -> None:
        """Remember the live bytes now (e.g. at the start of the backward)."""
        self.marks[label] = self.resident()
