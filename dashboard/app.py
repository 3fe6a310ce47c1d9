"""Thin entry for ``streamlit run dashboard/app.py -- RESULTS_DIR`` in a checkout.

The dashboard itself is ``revbench/dashboard_app.py``, shipped inside the package so that an
installed revbench has it too; ``revbench dashboard`` runs that file directly.
"""

import runpy

from revbench.dashboard import APP

runpy.run_path(str(APP), run_name="__main__")
