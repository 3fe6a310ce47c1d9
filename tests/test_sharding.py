"""The FSDP2 gathering of the reversible Function: which block is whole when, prefetch included.

Stand-in blocks record ``unshard``/``reshard`` calls (``fsdp_sharded`` patched to see them as
sharded), so the order is checked without a process group; ``test_parallel.py`` runs the real
thing on 2 processes and checks the gradients.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from revbench.models import sharding


class FakeBlock:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def unshard(self, async_op: bool = False) -> None:
        self.log.append(f"gather {self.name}" + (" ahead" if async_op else ""))

    def reshard(self) -> None:
        self.log.append(f"free {self.name}")


@pytest.fixture
def blocks(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[str]]:
    monkeypatch.setattr(sharding, "fsdp_sharded", lambda b: isinstance(b, FakeBlock))
    log: list[str] = []
    a, b, c = (FakeBlock(n, log) for n in "abc")
    # An Euler start and layer 1 share block a (one run of two steps), then b, then c.
    return [("s", a), ("s", a), ("s", b), ("s", c)], log


def test_each_run_is_whole_and_the_next_block_is_gathered_ahead(
    blocks: tuple[list[Any], list[str]],
) -> None:
    steps, log = blocks
    for i, _, block in sharding.gathered(steps, reversed(range(4))):
        log.append(f"step {i} on {block.name}")
    assert log == [
        "gather c",
        "gather b ahead",
        "step 3 on c",
        "free c",
        "gather b",  # waits for the prefetch
        "gather a ahead",
        "step 2 on b",
        "free b",
        "gather a",
        "step 1 on a",
        "step 0 on a",
        "free a",
    ]


def test_an_error_mid_run_frees_the_block_and_the_one_gathered_ahead(
    blocks: tuple[list[Any], list[str]],
) -> None:
    steps, log = blocks
    run = sharding.gathered(steps, range(4))
    with contextlib.suppress(RuntimeError), contextlib.closing(run):
        for i, _, _ in run:
            if i == 2:
                raise RuntimeError("boom")
    assert log[-4:] == ["gather b", "free b", "gather c", "free c"]
    whole: set[str] = set()
    for entry in log:  # no block left whole, none freed that was not gathered
        verb, name = entry.split()[:2]
        if verb == "gather":
            whole.add(name)
        else:
            assert name in whole
            whole.discard(name)
    assert not whole
