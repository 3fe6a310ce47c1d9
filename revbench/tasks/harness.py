"""The ``lm_eval`` metric: a case's model scored on an lm-evaluation-harness task.

``data.lm_eval_task`` (one lm-eval task or group: a name lm-eval knows, whose data may need the
hub, or a task YAML in the ``data.lm_eval_include`` folder, offline with local data) is run by
``lm_eval.simple_evaluate`` on the case's model (``revbench.tasks.metric.case_model``: its own,
``train.pretrained``, or converted with ``distill_steps``; the task trains nothing) through the
adaptor (``revbench.tasks.lm_eval``: lm-eval's conventions, a window of the model's
``max_seq_len`` tokens, the ``data.tokenizer``). ``data.lm_eval_limit`` and
``data.lm_eval_num_fewshot`` are simple_evaluate's ``limit`` and ``num_fewshot``; lm-eval's own
seeds are kept, so few-shot examples are lm-eval's.

One row per case: ``data.lm_eval_metric`` names the metric in ``lm_eval_value`` and
``lm_eval_stderr`` (default: the task's first, e.g. ``acc``; a filter other than lm-eval's
``none`` is written ``exact_match,strict-match``), and ``lm_eval_results`` keeps every metric of
the task and its stderr as JSON, so the other metrics of a run need no second evaluation.
Another metric as its own row is another case (e.g. a matrix over ``lm_eval_metric``), which
evaluates again.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from revbench.columns import Column
from revbench.errors import ConfigError
from revbench.registry import did_you_mean

if TYPE_CHECKING:
    from revbench.case import Case
    from revbench.settings import DataSettings

COLUMNS = (
    Column("lm_eval_task", pa.string(), "", "lm_eval: the lm-evaluation-harness task run"),
    Column(
        "lm_eval_metric",
        pa.string(),
        "",
        "lm_eval: the task's metric in lm_eval_value (data.lm_eval_metric, else the first)",
    ),
    Column(
        "lm_eval_value",
        pa.float64(),
        "",
        "lm_eval: that metric's value, as lm-eval reports it (acc: fraction; perplexities)",
    ),
    Column(
        "lm_eval_stderr",
        pa.float64(),
        "",
        "lm_eval: lm-eval's standard error of the value (null where it gives none)",
    ),
    Column("lm_eval_n", pa.int64(), "examples", "lm_eval: documents evaluated (all tasks)"),
    Column(
        "lm_eval_results",
        pa.string(),
        "",
        'lm_eval: every metric of the task, JSON {"acc": v, "acc_stderr": s, ...}',
    ),
)


def check_settings(data: DataSettings) -> None:
    """The suite-time checks of a case's ``data`` section for the ``lm_eval`` metric; raises a
    one-line ``ConfigError`` naming the setting."""
    if not data.lm_eval_task:
        raise ConfigError(
            "data.lm_eval_task: metric 'lm_eval' needs a task (an lm-eval task such as piqa, "
            "or one defined in the data.lm_eval_include folder)"
        )
    include = data.lm_eval_include
    if include is not None and not Path(include).is_dir():
        raise ConfigError(
            f"data.lm_eval_include: no folder '{include}' (a folder of lm-eval task YAML files, "
            f"relative to the working directory {Path.cwd()})"
        )
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            "metric 'lm_eval' needs lm-evaluation-harness: pip install 'revbench[eval]'"
        )


def task_manager(task: str, include: str | None) -> Any:
    """lm-eval's ``TaskManager`` that knows ``task``: the include folder's own when the task
    is there (no index of lm-eval's ~15,000 shipped tasks), else lm-eval's with the folder."""
    from lm_eval.tasks import TaskManager

    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if task in local.all_tasks:
            return local
    manager = TaskManager(include_path=include)
    if task not in manager.all_tasks:
        where = f" nor in '{include}'" if include else " (data.lm_eval_include adds a folder)"
        raise ConfigError(
            f"data.lm_eval_task: lm-eval has no task '{task}'{where}"
            f"{did_you_mean(task, manager.all_tasks)}"
        )
    return manager


def _number(value: Any) -> float | None:
    """lm-eval's value as a float; its "N/A" (no stderr) and NaN as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def results_row(out: dict[str, Any], task: str, metric: str | None) -> dict[str, Any]:
    """The ``lm_eval`` columns from ``simple_evaluate``'s output for ``task``."""
    res = out["results"][task]
    keys = [k for k in res if "," in k and "_stderr," not in k]  # "acc,none", not "alias"
    names = [k.removesuffix(",none") for k in keys]
    if not names:
        raise ConfigError(f"lm-eval task '{task}' reported no metrics")
    chosen = metric or names[0]
    if chosen not in names:
        raise ConfigError(
            f"data.lm_eval_metric: task '{task}' has no metric '{chosen}'"
            f"{did_you_mean(chosen, names)}; it has {', '.join(names)}"
        )
    name, _, filt = keys[names.index(chosen)].partition(",")
    counts = out.get("n-samples", {})  # a group has none of its own: its tasks' sum
    n = (
        counts[task]["effective"]
        if task in counts
        else sum(c["effective"] for c in counts.values())
    )
    every = {k.replace(",none", ""): _number(v) for k, v in res.items() if "," in k}
    return {
        "lm_eval_task": task,
        "lm_eval_metric": chosen,
        "lm_eval_value": _number(res[f"{name},{filt}"]),
        "lm_eval_stderr": _number(res.get(f"{name}_stderr,{filt}")),
        "lm_eval_n": int(n),
        "lm_eval_results": json.dumps(every),
    }


def measure_lm_eval(case: Case) -> dict[str, Any]:
    """Evaluate the case's model on ``data.lm_eval_task``; the ``lm_eval`` row (and the
    conversion's columns when the case converts a checkpoint)."""
    import torch

    from revbench.measure.device import resolve_device
    from revbench.tasks.lm_eval import harness_model
    from revbench.tasks.metric import case_model
    from revbench.tasks.text import get_tokenizer

    data, tr = case.data, case.train
    check_settings(data)
    from lm_eval import simple_evaluate

    task = data.lm_eval_task
    manager = task_manager(task, data.lm_eval_include)
    torch.manual_seed(tr.seed)
    if tr.threads:
        torch.set_num_threads(tr.threads)
    tokenizer = get_tokenizer(data.tokenizer, tr.pretrained)
    model, row = case_model(case, tokenizer)
    model = model.to(resolve_device(tr.device)).eval()
    out = simple_evaluate(
        model=harness_model(model, tokenizer),
        tasks=[task],
        task_manager=manager,
        limit=data.lm_eval_limit,
        num_fewshot=data.lm_eval_num_fewshot,
        log_samples=False,
    )
    if out is None:
        raise RuntimeError("lm-eval returned no results (not rank 0)")
    return row | results_row(out, task, data.lm_eval_metric)
