"""Suite files: load (safe YAML), validate, expand the matrix into cases.

A suite is::

    name: quickstart                  # [A-Za-z0-9_.-], no leading dot; the results folder
    description: ...
    defaults:                         # every setting of a case, by section
      model: {arch: baseline, d_model: 64, ...}    # revbench.models.ModelConfig fields
      data: {batch_size: 8, seq_len: 128}          # DataSettings
      train: {dtype: float32, optimizer: adamw}    # TrainSettings
    measure: {warmup: 1, steps: 3, repeats: 1, timeout_s: 300}   # MeasureSettings
    matrix:                           # cartesian product; keys are bare setting names
      arch: [baseline, midpoint]
      n_layers: [2, 4]
    cases:                            # optional explicit cases, each a set of overrides
      - {name: ckpt, arch: baseline, checkpointing: true}
    metrics: [peak_memory, throughput]
    resources: {GPU: 1, H100: 1}      # optional: what each case run asks of a Ray/Slurm cluster

Setting names are unique across sections, so ``n_layers`` in a matrix or case needs no section.
Every error is a ``SuiteError`` whose message names the file, the field path
(``matrix.n_layers[2]``), the bad value and what is allowed; nothing is run before the whole
suite validates.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from revbench import limits, safe_yaml
from revbench.case import Case
from revbench.errors import ConfigError, RevbenchError, SuiteError
from revbench.limits import quote
from revbench.measure.metrics import METRICS
from revbench.models import ARCHITECTURES
from revbench.models.config import archs_where, is_reversible
from revbench.registry import did_you_mean
from revbench.resources import Resources
from revbench.settings import FIELDS, SECTIONS, MeasureSettings
from revbench.units import parse_bytes


class _SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")]
    description: str = ""
    defaults: dict[str, dict[str, Any]] = {}
    measure: dict[str, Any] = {}
    matrix: dict[str, list[Any]] = {}
    cases: list[dict[str, Any]] = []
    metrics: Annotated[list[str], Field(min_length=1)]
    resources: dict[str, Any] = {}
    max_case_runs: Annotated[int, Field(ge=1, le=limits.INT64_MAX)] = limits.MAX_CASE_RUNS


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    cases: tuple[Case, ...]
    resources: Resources = dataclasses.field(default_factory=Resources)
    """What each case run asks of a Ray or Slurm cluster (``resources.py``)."""


# --- loading -------------------------------------------------------------------------------


def _fmt_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed(err: dict[str, Any]) -> str:
    return err["msg"].replace("Input should be", "must be")


def _check_value(where: str, key: str, value: Any) -> Any:
    """Validate one setting's value; ``where`` is the field path used in messages."""
    _, adapter = FIELDS[key]
    try:
        value = adapter.validate_python(value)
    except ValidationError as e:
        raise SuiteError(f"{where}: {_allowed(e.errors()[0])}, got {quote(value)}") from None
    why = limits.check_number(key, value)
    if why:
        raise SuiteError(f"{where}: {why}")
    if key == "arch":
        try:
            ARCHITECTURES.get(value)
        except ConfigError as e:
            raise SuiteError(f"{where}: {e}") from None
    if key in ("budget", "memory_cap") and value is not None:
        size = parse_bytes(value)
        if not 0 < size <= limits.INT64_MAX:
            raise SuiteError(
                f"{where}: must be a memory size above 0 (e.g. 24GiB), got {quote(value)}"
            )
    return value


def _check_key(where: str, key: Any, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if key not in allowed:
        hint = did_you_mean(str(key)[:100], allowed)
        raise SuiteError(f"{where}: unknown setting {quote(key)}{hint}")


def _overrides(where: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a flat ``{setting: value}`` mapping (a case, a matrix point)."""
    out = {}
    for key, value in raw.items():
        _check_key(where, key, FIELDS)
        out[key] = _check_value(f"{where}.{key}", key, value)
    return out


def load_suite(path: str | Path, *, max_case_runs: int | None = None) -> Suite:
    """Read, validate and expand a suite file; raises ``SuiteError`` with a one-line message.

    ``max_case_runs`` (the command line's) overrides the suite's own limit on the number of
    case runs it expands to (``limits.MAX_CASE_RUNS`` by default)."""
    path = Path(path)
    raw = safe_yaml.load(path)
    if not isinstance(raw, dict):
        raise SuiteError(
            f"{path}: a suite must be a YAML mapping with name, defaults, metrics, ..."
        )
    try:
        spec = _SuiteFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = _fmt_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])[:100]
            hint = did_you_mean(key, list(_SuiteFile.model_fields))
            raise SuiteError(f"{path}: unknown key '{loc[:80]}'{hint}") from None
        if err["type"] == "string_pattern_mismatch" and tuple(err["loc"]) == ("name",):
            raise SuiteError(
                f"{path}: name: must be 1 to 100 letters, digits, _ . - not starting with '.' "
                f"(it names the results folder), got {quote(err.get('input'))}"
            ) from None
        if err["type"] == "missing":
            raise SuiteError(f"{path}: missing required key '{loc}'") from None
        got = quote(err.get("input"))
        raise SuiteError(f"{path}: {loc[:80]}: {_allowed(err)}, got {got}") from None
    try:
        return Suite(
            spec.name,
            spec.description,
            path,
            tuple(_expand(spec, max_case_runs or spec.max_case_runs)),
            Resources.parse(spec.resources),
        )
    except SuiteError as e:
        raise SuiteError(f"{path}: {e}") from None


def _case_name(where: str, name: Any) -> str:
    """An explicit case name: text of at most ``MAX_NAME_CHARS`` printable characters."""
    if not isinstance(name, (str, int)) or isinstance(name, bool):
        raise SuiteError(f"{where}.name: must be a string, got {quote(name)}")
    text = str(name)
    if not text.strip() or len(text) > limits.MAX_NAME_CHARS:
        raise SuiteError(
            f"{where}.name: must be 1 to {limits.MAX_NAME_CHARS} characters, got {quote(text)}"
        )
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        raise SuiteError(f"{where}.name: contains a control character, got {quote(text)}")
    return text


def _point_name(pairs: Iterable[tuple[str, Any]], default: str) -> str:
    """The generated name of a matrix point or an unnamed case: ``k=v,...``, control characters
    replaced, cut to ``MAX_NAME_CHARS``."""
    text = ",".join(f"{k}={v}" for k, v in pairs) or default
    text = "".join("?" if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)
    return text[: limits.MAX_NAME_CHARS]


def _count_runs(spec: _SuiteFile, base: dict[str, dict[str, Any]], limit: int) -> int:
    """The number of case runs the suite expands to, computed before expanding anything (and
    before validating each matrix value), refused above ``limit``."""
    default = base["measure"].get("repeats", MeasureSettings.model_fields["repeats"].default)
    for key, values in spec.matrix.items():
        _check_key("matrix", key, FIELDS)
        if not values:
            raise SuiteError(f"matrix.{key}: must list at least one value")
    matrix_runs = 0
    if spec.matrix or not spec.cases:
        reps = spec.matrix.get("repeats")
        rep_sum = (
            sum(_check_value(f"matrix.repeats[{i}]", "repeats", r) for i, r in enumerate(reps))
            if reps
            else default
        )
        matrix_runs = math.prod(len(v) for k, v in spec.matrix.items() if k != "repeats")
        matrix_runs *= rep_sum
    case_runs = 0
    for i, raw in enumerate(spec.cases):
        r = raw.get("repeats", default)
        case_runs += _check_value(f"cases[{i}].repeats", "repeats", r)
    total = matrix_runs + case_runs
    if total > limit:
        raise SuiteError(
            f"expands to {total:,} case runs ({matrix_runs:,} from the matrix, {case_runs:,} "
            f"from cases, repeats included), more than max_case_runs ({limit:,}); shrink the "
            "matrix, or raise the limit with max_case_runs: in the suite or --max-case-runs"
        )
    return total


def _expand(spec: _SuiteFile, max_case_runs: int = limits.MAX_CASE_RUNS) -> list[Case]:
    base: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for section, values in spec.defaults.items():
        _check_key("defaults", section, [s for s in SECTIONS if s != "measure"])
        for key, value in values.items():
            own = [k for k, (s, _) in FIELDS.items() if s == section]
            _check_key(f"defaults.{section}", key, own)
            base[section][key] = _check_value(f"defaults.{section}.{key}", key, value)
    for key, value in spec.measure.items():
        _check_key("measure", key, [k for k, (s, _) in FIELDS.items() if s == "measure"])
        base["measure"][key] = _check_value(f"measure.{key}", key, value)

    metrics = []
    for i, m in enumerate(spec.metrics):
        if m not in METRICS:
            known = ", ".join(METRICS.names())
            hint = did_you_mean(m[:100], METRICS.names())
            raise SuiteError(f"metrics[{i}]: unknown metric {quote(m)}{hint}; known: {known}")
        metrics.append(m)

    _count_runs(spec, base, max_case_runs)
    axes: list[list[tuple[str, Any]]] = []
    for key, values in spec.matrix.items():
        axes.append(
            [(key, _check_value(f"matrix.{key}[{i}]", key, v)) for i, v in enumerate(values)]
        )

    points: list[tuple[str, str, dict[str, Any]]] = []  # (where, name, overrides)
    if axes or not spec.cases:
        for combo in itertools.product(*axes):
            name = _point_name(combo, "default")
            points.append((f"matrix case {quote(name)}", name, dict(combo)))
    for i, raw in enumerate(spec.cases):
        raw = dict(raw)
        name = raw.pop("name", None)
        over = _overrides(f"cases[{i}]", raw)
        name = (
            _case_name(f"cases[{i}]", name)
            if name is not None
            else _point_name(over.items(), f"case{i}")
        )
        points.append((f"cases[{i}] ({quote(name)})", name, over))

    cases: list[Case] = []
    seen: dict[str, str] = {}
    for index, (where, name, over) in enumerate(points):
        sections = {s: dict(v) for s, v in base.items()}
        for key, value in over.items():
            sections[FIELDS[key][0]][key] = value
        case = _resolve(where, spec.name, name, index, sections, tuple(metrics))
        for other, label in (("hash", case.config_hash), ("name", f"name:{case.name}")):
            if label in seen:
                raise SuiteError(f"{where} has the same {other} as {seen[label]}; remove one")
            seen[label] = where
        cases.append(case)
    return cases


def _resolve(
    where: str,
    suite: str,
    name: str,
    index: int,
    sections: dict[str, dict[str, Any]],
    metrics: tuple[str, ...],
) -> Case:
    """Fill defaults and run the cross-field checks of one case."""
    resolved: dict[str, dict[str, Any]] = {}
    pretrained = sections["train"].get("pretrained")
    if pretrained:
        sections = {**sections, "model": _pretrained_model(where, pretrained, sections["model"])}
    task = sections["data"].get("task")
    if task is not None:
        from revbench.tasks import TASKS

        try:
            TASKS.get(task)
        except ConfigError as e:
            raise SuiteError(f"{where}: data.task: {e}") from None
    typed: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        try:
            obj = typed[section] = cls(**sections[section])
        except ValidationError as e:
            err = e.errors()[0]
            loc = _fmt_loc(err["loc"]) or section
            msg = err["msg"].removeprefix("Value error, ")
            raise SuiteError(f"{where}: {loc}: {msg}") from None
        except ValueError as e:  # ConfigError from a registry lookup
            raise SuiteError(f"{where}: {section}: {e}") from None
        resolved[section] = (
            dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj.model_dump()
        )
    if resolved["data"]["seq_len"] > resolved["model"]["max_seq_len"]:
        raise SuiteError(
            f"{where}: seq_len ({resolved['data']['seq_len']}) exceeds max_seq_len "
            f"({resolved['model']['max_seq_len']}); raise max_seq_len or shorten seq_len"
        )
    train = resolved["train"]
    arch = resolved["model"]["arch"]
    if (
        train["distill_trainable"] == "adapters"
        and is_reversible(arch)
        and not ARCHITECTURES.get(arch).adapters
    ):
        owners = ", ".join(archs_where(lambda a: a.adapters))
        raise SuiteError(
            f"{where}: distill_trainable is adapters but arch is {arch}; "
            f"only {owners} has adapters (use all or blocks)"
        )
    if train["parallel"] != "none" and resolved["model"]["force"] != "block":
        raise SuiteError(
            f"{where}: force {resolved['model']['force']} evaluates two blocks in one step, "
            f"which parallel: {train['parallel']} does not support (use force: block)"
        )
    measure = resolved["measure"]
    if measure["min_size"] > measure["max_size"]:
        raise SuiteError(
            f"{where}: min_size ({measure['min_size']}) exceeds max_size ({measure['max_size']}); "
            "swap them or raise max_size"
        )
    nproc = train["nproc_per_node"]
    if nproc > 1:
        most = limits.max_processes(train["device"])
        if nproc > most and (most or train["device"] != "cuda"):  # no local GPU: a cluster's
            raise SuiteError(
                f"{where}: nproc_per_node is {nproc} but this machine runs at most {most} "
                "(one process per CPU core, or per GPU on cuda); lower nproc_per_node"
            )
    task_data = resolved["data"]["task_data"]
    if task_data is not None:
        from revbench.tasks.data import check_spec

        try:
            check_spec(task_data)
        except ConfigError as e:
            raise SuiteError(f"{where}: data.task_data: {e}") from None
    if train["nproc_per_node"] > 1 and train["parallel"] == "none":
        raise SuiteError(
            f"{where}: nproc_per_node is {train['nproc_per_node']} but parallel is none; "
            "set parallel: ddp or fsdp"
        )
    for m in metrics:
        check = METRICS.get(m).check
        if check is not None:
            try:
                check(typed["data"])
            except ConfigError as e:
                raise SuiteError(f"{where}: {e}") from None
    if train["parallel"] != "none":
        serial = [m for m in metrics if not METRICS.get(m).distributed]
        if serial:
            ok = ", ".join(n for n in METRICS.names() if METRICS.get(n).distributed)
            raise SuiteError(
                f"{where}: metric '{serial[0]}' does not run with parallel: "
                f"{train['parallel']}; use {ok} or parallel: none"
            )
    return Case(suite, name, index, metrics=metrics, **typed)


def _pretrained_model(where: str, source: str, explicit: dict[str, Any]) -> dict[str, Any]:
    """The model section of a ``pretrained`` case: read from the checkpoint, with the scheme
    settings the suite gave (any other model setting conflicts with the weights)."""
    from revbench.models.hf import FREE_FIELDS, read_model_config

    clash = sorted(set(explicit) - FREE_FIELDS)
    if clash:
        raise SuiteError(
            f"{where}: model.{clash[0]} comes from pretrained checkpoint '{source}'; remove it "
            f"(settable with pretrained: {', '.join(sorted(FREE_FIELDS))})"
        )
    try:
        cfg = read_model_config(source, **explicit)
    except (RevbenchError, ValueError) as e:
        raise SuiteError(f"{where}: train.pretrained: {e}") from None
    return dataclasses.asdict(cfg)


def select(cases: Iterable[Case], pattern: str | None) -> list[Case]:
    """Cases whose name matches ``pattern``: a glob when it has wildcards, else a substring."""
    cases = list(cases)
    if not pattern:
        return cases
    if any(c in pattern for c in "*?["):
        return [c for c in cases if fnmatch.fnmatchcase(c.name, pattern)]
    return [c for c in cases if pattern in c.name]
