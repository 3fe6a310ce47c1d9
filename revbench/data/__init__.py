"""Reference data shipped with revbench: figures the papers report, never measured rows.

``paper_figures.csv`` (long format, one reported number a row, with its ``source`` citation)
holds Gal et al.'s Tables 3 and 4 and RevFFN's headline numbers (shared/PAPER-FIGURES.md). The
dashboard and the reports show them beside measured results, labelled "reported by the paper".
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

REPORTED_LABEL = "reported by the paper"


def paper_figures() -> pd.DataFrame:
    """Every reported number: source, reference, gpu, n_layers, d_model, arch, metric, value,
    unit, note."""
    with resources.files(__package__).joinpath("paper_figures.csv").open("rb") as fh:
        df = pd.read_csv(fh, dtype={"n_layers": "Int64", "d_model": "Int64"})
    df["gpu"] = df["gpu"].fillna("")
    return df


def paper_max_batch() -> pd.DataFrame:
    """Gal et al. Table 3 as a wide table: GPU, baseline and midpoint max batch, their ratio."""
    ref = paper_figures()
    t3 = ref[(ref["reference"] == "Table 3") & (ref["metric"] == "max_batch_size")]
    wide = t3.pivot(index="gpu", columns="arch", values="value")
    wide = wide.reindex(pd.unique(t3["gpu"]))  # the paper's row order
    out = wide.reset_index()
    out.columns.name = None
    out["ratio"] = out["midpoint"] / out["baseline"]
    out["source"] = f"{t3['source'].iloc[0]}, Table 3 ({REPORTED_LABEL})"
    return out


def paper_depth() -> pd.DataFrame:
    """Gal et al. Table 4 as a wide table: layers, baseline and midpoint max batch, throughput
    gain of midpoint at its own max batch."""
    ref = paper_figures()
    t4 = ref[ref["reference"] == "Table 4"]
    batch = t4[t4["metric"] == "max_batch_size"].pivot(
        index="n_layers", columns="arch", values="value"
    )
    gain = t4[t4["metric"] == "throughput_gain_pct"].set_index("n_layers")["value"]
    out = batch.assign(throughput_gain_pct=gain).reset_index()
    out.columns.name = None
    out["source"] = f"{t4['source'].iloc[0]}, Table 4 ({REPORTED_LABEL})"
    return out
