"""Score any revbench model with EleutherAI's lm-evaluation-harness (``pip install
'revbench[eval]'``), for the papers' zero-shot benchmarks (PIQA, ARC, WinoGrande, ...).

The scoring is plain functions over requests whose ``args`` are lm-eval's
(``(context, continuation)`` for loglikelihood, ``(text,)`` for rolling loglikelihood), so it is
testable without lm-eval; ``harness_model`` wraps them in lm-eval's ``LM`` interface::

    from lm_eval import simple_evaluate
    from revbench.models.hf import from_pretrained, load_tokenizer
    from revbench.tasks.lm_eval import harness_model

    lm = harness_model(from_pretrained("out/midpoint"), HFTokenizer(load_tokenizer(...)))
    simple_evaluate(model=lm, tasks=["piqa", "arc_easy"])

Sequences longer than the model's ``max_seq_len`` keep their last tokens (the continuation
always survives). Generation (``generate_until``) is not supported: the papers' benchmarks are
multiple choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from revbench.tasks.text import Tokenizer


@torch.no_grad()
def score(model: nn.Module, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """(log P(continuation | context), whether greedy decoding gives the continuation)."""
    limit = model.config.max_seq_len + 1
    ids = (context + continuation)[-limit:]
    n = len(continuation)
    if n == 0 or n >= len(ids):
        raise ValueError("continuation must be non-empty and leave at least one context token")
    x = torch.tensor([ids[:-1]], device=next(model.parameters()).device)  # (1, T)
    logp = model(x).logits[0, -n:].float().log_softmax(-1)  # (n, V)
    target = torch.tensor(ids[-n:], device=logp.device)
    total = float(logp.gather(1, target[:, None]).sum())
    return total, bool((logp.argmax(-1) == target).all())


def loglikelihood(
    model: nn.Module, tokenizer: Tokenizer, requests: Sequence[Any], bos: int | None = None
) -> list[tuple[float, bool]]:
    """lm-eval's ``loglikelihood``: one (logprob, is_greedy) per ``(context, continuation)``.
    An empty context starts from ``bos`` (or the continuation's first token is dropped)."""
    model.eval()
    out = []
    for req in requests:
        context, continuation = req.args
        ctx, cont = tokenizer.encode(context), tokenizer.encode(continuation)
        if not ctx:
            ctx = [bos] if bos is not None else cont[:1]
            cont = cont if bos is not None else cont[1:]
        out.append(score(model, ctx, cont))
    return out


def loglikelihood_rolling(
    model: nn.Module, tokenizer: Tokenizer, requests: Sequence[Any]
) -> list[float]:
    """lm-eval's ``loglikelihood_rolling``: log P(text), every token after the first scored,
    in windows of ``max_seq_len`` tokens."""
    model.eval()
    out = []
    for req in requests:
        ids = tokenizer.encode(req.args[0])
        window = model.config.max_seq_len
        total = 0.0
        for start in range(1, len(ids), window):
            ctx = ids[max(0, start - window) : start]
            total += score(model, ctx, ids[start : start + window])[0]
        out.append(total)
    return out


def harness_model(model: nn.Module, tokenizer: Tokenizer, bos: int | None = None) -> Any:
    """An ``lm_eval.api.model.LM`` scoring with ``model`` (needs ``revbench[eval]``)."""
    try:
        from lm_eval.api.model import LM
    except ImportError:
        from revbench.errors import ConfigError

        raise ConfigError("the lm-eval adaptor needs: pip install 'revbench[eval]'") from None

    class RevbenchLM(LM):  # type: ignore[misc, valid-type]
        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return loglikelihood(model, tokenizer, requests, bos)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return loglikelihood_rolling(model, tokenizer, requests)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            raise NotImplementedError("revbench models score multiple-choice tasks only")

    return RevbenchLM()
