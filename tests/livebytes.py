"""A live-tensor tracker for memory-structure tests: bytes of every storage an op created that is
still alive, op by op (a TorchDispatchMode; storages freed or emptied in place leave the count).

Tensors that existed before the tracker opened (parameters, inputs) are not counted, nor are
views of them: an op's output counts only when no input of the op shares its storage.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, weakref.ref[Any]] = {}  # storage data_ptr -> storage
        self.peak = 0

    def now(self) -> int:
        """Bytes of the tracked storages alive now (an emptied storage counts 0)."""
        total = 0
        for ref in list(self._live.values()):
            st = ref()
            if st is not None:
                total += st.nbytes()
        return total

    def reset_peak(self) -> int:
        self.peak = self.now()
        return self.peak

    def _forget(self, key: int) -> None:
        self._live.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # Views and in-place results share an input's storage: only new storages count.
        inputs = {
            _key(t)
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and _key(t):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self._live and key not in inputs:
                    self._live[key] = weakref.ref(st)
                    weakref.finalize(st, self._forget, key)
        self.peak = max(self.peak, self.now())
        return out


def _key(t: torch.Tensor) -> int:
    """The storage's address, 0 for a tensor without one (an FSDP2 parameter resharded to an
    empty storage, a DTensor)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0
