"""``harness compare``: a run against a baseline, with statistics, for regression gating.

- ``verdicts``: match two runs' measurements, per-pair statistics over invocations (ratio of geometric
  means of invocation medians, t interval), verdicts, the machine's drift and the gate
  (``Comparison.exit_code``);
- ``baselines``: which run is the baseline (``baseline.json``, or the automatic choice);
- ``rendering``: a comparison as terminal table cells, Markdown and JSON.
"""

from harness.compare.baselines import (
    BASELINE_FILE,
    auto_baseline,
    baseline_file,
    resolve_baseline,
    set_baseline,
    stored_baseline,
)
from harness.compare.rendering import (
    COLUMNS,
    criteria,
    drift_lines,
    headline,
    markdown,
    row_cells,
    row_order,
    to_json,
)
from harness.compare.verdicts import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    VERDICTS,
    Comparison,
    Options,
    compare_runs,
    judge,
)

__all__ = [
    "BASELINE_FILE", "COLUMNS", "DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "VERDICTS", "Comparison", "Options",
    "auto_baseline", "baseline_file", "compare_runs", "criteria", "drift_lines", "headline", "judge",
    "markdown", "resolve_baseline", "row_cells", "row_order", "set_baseline", "stored_baseline", "to_json",
]
