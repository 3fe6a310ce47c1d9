"""The in-place helpers of the reversible backward (``models/schemes.py``): each writes into a
tensor's memory only when nothing else can see it, and computes the same values either way."""

from __future__ import annotations

import torch

from revbench.models.schemes import _add_into, axpy, owned, scaled


def fresh(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def test_owned_means_no_other_tensor_shares_the_memory() -> None:
    a = fresh(1.0, 2.0, 3.0)
    assert owned(a) and owned(a.clone())
    assert owned(torch.randn(3, 2).t())  # a view whose base nobody else holds
    b = a[1:]  # now a's memory has a second owner
    assert not owned(a)
    del b
    assert owned(a)


def test_axpy_adds_in_place_only_into_an_owned_tensor_of_the_wider_dtype() -> None:
    x = fresh(1.0, 2.0)
    y = fresh(10.0, 20.0)
    out = axpy(y, x, 2.0)
    assert out is y and out.tolist() == [12.0, 24.0]  # owned: y's memory
    shared = fresh(10.0, 20.0)
    alias = shared.view(2)
    out = axpy(shared, x, 2.0)
    assert out is not shared and out.tolist() == [12.0, 24.0]
    assert alias.tolist() == [10.0, 20.0]  # the other owner sees no change
    low = fresh(10.0, 20.0, dtype=torch.bfloat16)
    out = axpy(low, x, 0.5)  # float32 into bf16 would round: a new float32 tensor
    assert out is not low and out.dtype == torch.float32 and out.tolist() == [10.5, 21.0]
    assert low.tolist() == [10.0, 20.0]


def test_axpy_treats_none_as_zero() -> None:
    x = fresh(1.0, 2.0)
    assert axpy(None, None) is None and axpy(x, None, 3.0) is x
    assert axpy(None, x) is x  # alpha 1: x itself, no copy
    out = axpy(None, x, 3.0)
    assert out is not x and out.tolist() == [3.0, 6.0] and x.tolist() == [1.0, 2.0]


def test_scaled_scales_in_place_unless_the_tensor_is_kept_or_shared() -> None:
    assert scaled(None, 2.0) is None
    x = fresh(1.0, 2.0)
    assert scaled(x, 1.0) is x and x.tolist() == [1.0, 2.0]
    out = scaled(x, 2.0)
    assert out is x and x.tolist() == [2.0, 4.0]
    kept = fresh(1.0, 2.0)
    out = scaled(kept, 3.0, None, kept)  # the caller still needs it
    assert out is not kept and out.tolist() == [3.0, 6.0] and kept.tolist() == [1.0, 2.0]
    shared = fresh(1.0, 2.0)
    alias = shared.view(2)
    out = scaled(shared, 3.0, None)
    assert out is not shared and out.tolist() == [3.0, 6.0] and alias.tolist() == [1.0, 2.0]


def test_add_into_keeps_the_wider_dtype() -> None:
    out = fresh(1.0, 2.0)
    got = _add_into(out, fresh(1.0, 1.0, dtype=torch.bfloat16), 0.5)
    assert got is out and got.tolist() == [1.5, 2.5]  # a bf16 branch into the f32 stream
    low = fresh(1.0, 2.0, dtype=torch.bfloat16)
    got = _add_into(low, fresh(0.25, 0.25), 2.0)
    assert got is not low and got.dtype == torch.float32 and got.tolist() == [1.5, 2.5]
