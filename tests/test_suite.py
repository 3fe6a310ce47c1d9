"""Suite validation and matrix expansion (no case is run here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_suite

from revbench.case import config_hash
from revbench.errors import SuiteError
from revbench.models import ModelConfig
from revbench.settings import HASHED_IF_SET, SECTIONS
from revbench.suite import load_suite, select

GOOD = """
name: tiny
description: two archs, two depths
defaults:
  model: {vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 16}
  data: {batch_size: 2, seq_len: 16}
  train: {lr: 1e-3}
measure: {warmup: 0, steps: 1}
matrix:
  arch: [baseline, midpoint]
  n_layers: [1, 3]
cases:
  - {name: ckpt, arch: baseline, checkpointing: true}
metrics: [peak_memory, throughput]
"""


def test_expansion_is_the_cartesian_product_plus_explicit_cases(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, GOOD))
    names = [c.name for c in suite.cases]
    assert names == [
        "arch=baseline,n_layers=1",
        "arch=baseline,n_layers=3",
        "arch=midpoint,n_layers=1",
        "arch=midpoint,n_layers=3",
        "ckpt",
    ]
    assert [c.index for c in suite.cases] == [0, 1, 2, 3, 4]
    c = suite.cases[3]
    assert (c.model.arch, c.model.n_layers, c.model.d_model) == ("midpoint", 3, 32)
    assert c.model.d_ff == 128  # derived: 4 * d_model for gpt2
    assert c.train.lr == 1e-3  # YAML 1.1 would read "1e-3" as a string
    assert c.measure.steps == 1 and c.metrics == ("peak_memory", "throughput")
    assert suite.cases[4].model.checkpointing is True
    assert suite.cases[4].model.n_layers == 4  # ModelConfig default, not the matrix
    assert len({c.config_hash for c in suite.cases}) == 5


def test_config_hash_ignores_timeout_and_repeats_only(tmp_path: Path) -> None:
    base = load_suite(write_suite(tmp_path, GOOD)).cases[0].config_hash
    longer = load_suite(
        write_suite(tmp_path, GOOD.replace("steps: 1}", "steps: 1, timeout_s: 9, repeats: 3}"))
    ).cases[0]
    assert longer.config_hash == base
    more_steps = load_suite(write_suite(tmp_path, GOOD.replace("steps: 1", "steps: 2"))).cases[0]
    assert more_steps.config_hash != base


def test_settings_added_later_keep_old_hashes_at_their_defaults(tmp_path: Path) -> None:
    """A case resolved before a setting of HASHED_IF_SET existed (the key absent) has the hash
    it had then; the setting changes the hash only away from its default."""
    case = load_suite(write_suite(tmp_path, GOOD)).cases[0]
    before = config_hash(
        {
            s: {k: v for k, v in values.items() if k not in HASHED_IF_SET}
            for s, values in case.sections().items()
        },
        case.metrics,
    )
    assert set(HASHED_IF_SET) <= {k for s in case.sections().values() for k in s}
    assert before == case.config_hash
    for key, default in HASHED_IF_SET.items():
        other = {bool: not default, int: 2, float: 2.0, str: "ddp", type(None): [0.5]}[
            type(default)
        ]
        sections = case.sections()
        section = next(s for s in SECTIONS if key in sections[s])
        sections[section][key] = other
        # the hash of the plain settings (not every combination validates: a_layers needs
        # midpoint)
        assert config_hash(sections, case.metrics) != case.config_hash, key


def test_shared_expert_width_needs_a_shared_expert() -> None:
    with pytest.raises(ValueError, match="d_ff_shared sets the shared expert's width"):
        ModelConfig(arch="moe", n_experts=4, d_ff_shared=64)


def test_no_matrix_gives_one_default_case(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, "name: one\nmetrics: [throughput]\n"))
    assert [c.name for c in suite.cases] == ["default"]


def test_select_by_substring_and_glob(tmp_path: Path) -> None:
    cases = load_suite(write_suite(tmp_path, GOOD)).cases
    assert [c.name for c in select(cases, "midpoint")] == [
        "arch=midpoint,n_layers=1",
        "arch=midpoint,n_layers=3",
    ]
    assert [c.name for c in select(cases, "*n_layers=3")] == [
        "arch=baseline,n_layers=3",
        "arch=midpoint,n_layers=3",
    ]
    assert select(cases, None) == list(cases)


# (what is wrong, suite text, regex the one-line message must match)
BAD = [
    (
        "typo at top level",
        GOOD.replace("matrix:", "matrx:"),
        r"unknown key 'matrx' \(did you mean 'matrix'\?\)",
    ),
    (
        "typo in a matrix key",
        GOOD.replace("n_layers: [1, 3]", "n_layer: [1, 3]"),
        r"matrix: unknown setting 'n_layer' \(did you mean 'n_layers'\?\)",
    ),
    (
        "typo in defaults.model",
        GOOD.replace("d_model: 32", "d_modle: 32"),
        r"defaults\.model: unknown setting 'd_modle' \(did you mean 'd_model'\?\)",
    ),
    (
        "setting in the wrong section",
        GOOD.replace("data: {batch_size: 2", "data: {lr: 1, batch_size: 2"),
        r"defaults\.data: unknown setting 'lr'",
    ),
    (
        "unknown section",
        GOOD.replace("  train: {lr: 1e-3}", "  trian: {lr: 1e-3}"),
        r"defaults: unknown setting 'trian' \(did you mean 'train'\?\)",
    ),
    (
        "range error in a matrix item",
        GOOD.replace("n_layers: [1, 3]", "n_layers: [1, 3, 0]"),
        r"matrix\.n_layers\[2\]: must be greater than or equal to 1, got 0",
    ),
    (
        "type error in a matrix item",
        GOOD.replace("n_layers: [1, 3]", "n_layers: [1, three]"),
        r"matrix\.n_layers\[1\]: must be a valid integer, got 'three'",
    ),
    (
        "bool where an int is due",
        GOOD.replace("batch_size: 2", "batch_size: true"),
        r"defaults\.data\.batch_size: must be a valid integer, got True",
    ),
    (
        "bad literal",
        GOOD.replace("train: {lr: 1e-3}", "train: {dtype: fp8}"),
        r"defaults\.train\.dtype: must be 'float32', 'float64', 'bfloat16' or 'float16', got 'fp8'",
    ),
    (
        "unknown architecture",
        GOOD.replace("[baseline, midpoint]", "[baseline, midpiont]"),
        r"matrix\.arch\[1\]: unknown architecture 'midpiont' \(did you mean 'midpoint'\?\)",
    ),
    (
        "unknown metric",
        GOOD.replace("[peak_memory, throughput]", "[peak_memory, thruput]"),
        r"metrics\[1\]: unknown metric 'thruput' \(did you mean 'throughput'\?\)",
    ),
    (
        "no metrics",
        GOOD.replace("metrics: [peak_memory, throughput]", "metrics: []"),
        r"metrics: List should have at least 1 item",
    ),
    ("missing name", GOOD.replace("name: tiny", ""), r"missing required key 'name'"),
    (
        "d_model not divisible by n_heads",
        GOOD.replace("n_heads: 2", "n_heads: 3"),
        r"matrix case 'arch=baseline,n_layers=1': model: "
        r"d_model \(32\) must be divisible by n_heads \(3\)",
    ),
    (
        "seq_len beyond max_seq_len",
        GOOD.replace("batch_size: 2, seq_len: 16", "batch_size: 2, seq_len: 32"),
        r"seq_len \(32\) exceeds max_seq_len \(16\)",
    ),
    (
        "typo in an explicit case",
        GOOD.replace("checkpointing: true", "checkpointing: yes please"),
        r"cases\[0\]\.checkpointing: must be a valid boolean, got 'yes please'",
    ),
    (
        "duplicate case",
        GOOD.replace(
            "{name: ckpt, arch: baseline, checkpointing: true}",
            "{name: again, arch: baseline, n_layers: 3}",
        ),
        r"cases\[0\] \('again'\) has the same hash as matrix case 'arch=baseline,n_layers=3'",
    ),
    (
        "empty matrix list",
        GOOD.replace("n_layers: [1, 3]", "n_layers: []"),
        r"matrix\.n_layers: must list at least one value",
    ),
    (
        "bad suite name",
        GOOD.replace("name: tiny", "name: ../evil"),
        r"name: must be 1 to 100 letters, digits",
    ),
    ("not a mapping", "- just\n- a list\n", r"a suite must be a YAML mapping"),
    ("invalid YAML", "name: [unclosed\n", r"invalid YAML at line \d+, column \d+"),
    (
        "python object tag",
        GOOD + "\nx: !!python/object/apply:os.system ['echo hacked']\n",
        r"invalid YAML at line \d+",
    ),
    (
        "matrix value not a list",
        GOOD.replace("n_layers: [1, 3]", "n_layers: 3"),
        r"matrix\.n_layers: must be a valid list, got 3",
    ),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_suite_gets_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = write_suite(tmp_path, text)
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg  # names the file
    assert "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="cannot read suite file"):
        load_suite(tmp_path / "nope.yaml")


def test_shipped_suites_validate() -> None:
    from revbench.shipped import shipped_suites

    assert "quickstart" in shipped_suites()
    for name, path in shipped_suites().items():
        suite = load_suite(path)
        assert suite.cases and suite.name == name, path  # revbench run NAME names its results
