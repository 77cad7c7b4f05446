"""report: the aggregate stage's output, the report of an experiment (and what ``hpcgen report`` writes).

``report/`` (the aggregate node's output directory; ``hpcgen report FILE`` writes the same
into the experiment's directory):
    report.md, report.html  the report (the HTML page self-contained, plots embedded)
    summary.json            title, runs (one row per run: setting, run, snapshots, NaN counts,
                            loss at ``at_steps``, auc, min loss and step, early mean, delta against
                            the baseline, SD_k correlations, final metrics), settings (per label:
                            seeds, runs, values, early means), at_steps, early {fraction,
                            until_step, horizon}, baseline(s), early_vs_baseline,
                            measure_correlations, figures {stem: kind, title, caption, files},
                            skipped_figures, notes, provenance, and Exact-Match per setting where scored
    curves.csv              long format: setting, label, run, run_id, step, items_seen, loss,
                            generalist_loss, nan_records, exact_match_unseen, exact_match_seen
    curves.h5               a group per run id: steps, items_seen, loss, generalist, n_nan,
                            per_task/<task>, sd_curve, em_unseen, em_seen, em_per_instruction/
                            (source, instruction, seen, exact_match); attributes name, setting,
                            label, values (JSON)
    <figure>.png, .svg      one pair per drawn figure (``report.figures``)
    exact_match_per_instruction.csv  where Exact-Match was scored
The writer is ``write_report`` (hpcgen.report.document lays the files out); ``read_summary``
reads summary.json back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT = "report"  # the aggregate node's output directory
SUMMARY = "summary.json"
MARKDOWN = "report.md"
HTML = "report.html"
CURVES_CSV = "curves.csv"
CURVES_H5 = "curves.h5"
EXACT_MATCH_CSV = "exact_match_per_instruction.csv"


def write_report(folder: Path, curves: list, *, title: str, at_steps: list[int] | None = None,
                 figures: list[dict] | None = None, baseline: str | None = "RT", early_fraction: float = 0.3,
                 provenance: dict | None = None) -> dict[str, Any]:
    """Every file above into ``folder`` (made if missing) from the runs' curves
    (hpcgen.report.curves.RunCurve); returns what summary.json holds."""
    from hpcgen.report.document import write_report as write

    folder.mkdir(parents=True, exist_ok=True)
    return write(curves, folder, title, at_steps, figures=figures, baseline=baseline, early_fraction=early_fraction,
                 provenance=provenance)


def read_summary(folder: Path) -> dict[str, Any]:
    """summary.json of a report directory."""
    return json.loads((Path(folder) / SUMMARY).read_text())
