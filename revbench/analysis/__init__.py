"""What the results show: the views, each one module holding its table, figure, report sections
and dashboard panel, used alike by the dashboard, ``revbench report`` and ``revbench compare``.

A view module has
- ``TITLE``: its dashboard tab;
- ``table(df)``: the view's points (pandas, from the rows ``results.load`` returns);
- ``figure(...)``: a plotly figure of that table (a view that is only a table, ``runs``, has
  none);
- ``sections(df) -> list[Section]``: its tables and figures in the report (none when the rows
  hold nothing for it);
- ``panel(df, st)``: its dashboard tab, drawn with ``st`` (the streamlit module; passed in, so
  that nothing here imports Streamlit).

Shared layers: ``points`` (rows -> points, filters, captions), ``formats`` (``Section``, cell
formatting, markdown / LaTeX / HTML tables), ``style`` (colours and layout of every figure).
``compare`` is the two-result-set view; ``report`` writes the report files.

Adding a view: a module of the shape above, and its place in ``VIEWS``.
"""

from __future__ import annotations

from revbench.analysis import depth, drift, max_batch, prediction, quality, runs, tradeoff

VIEWS = (tradeoff, max_batch, depth, prediction, quality, drift, runs)
"""The views in the order of the dashboard's tabs and the report's sections."""
