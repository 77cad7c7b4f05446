"""aggregate: one node over all runs of the experiment: curves, plots and the report.

Outputs a ``report/`` directory: curves.csv, curves.h5, one PNG and SVG per figure (the
``report.figures`` list; by default loss_curves, per_task, sd_vs_loss, and measures, windows,
generation_metrics, final_vs_axis, accuracy, accuracy_curves, heatmap, accuracy_by_source where
their data exists), report.md, report.html (self-contained), summary.json and, where Exact-Match
was scored, exact_match_per_instruction.csv. Runs are grouped into settings by their matrix label
(seeds of one label are one setting); the headline is each setting's mean test loss over the
first ``early_fraction`` of the steps minus the baseline's. Exact-Match is reported apart for
unseen instructions (zero-shot) and held-out examples of seen ones, per test source too.
``hpcgen report FILE`` rebuilds the same from whatever is on disk, at any time, through the same
``Aggregate.report`` on the aggregate node's upstreams. It reads the losses
(hpcgen.contracts.losses), arrangements (hpcgen.contracts.arrangement) and train summaries
(hpcgen.contracts.snapshots); hpcgen.contracts.report documents what it writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from hpcgen.config.schema import Model, Resources, SafeStr, StageConfig
from hpcgen.contracts import arrangement, losses, snapshots
from hpcgen.contracts import report as contract
from hpcgen.errors import ConfigError
from hpcgen.pipeline.stage import RunInfo, Stage, Task, TaskMeta, Upstream
from hpcgen.report.curves import RunCurve, build_curve

FigureKind = Literal["loss", "per_task", "sd_vs_loss", "measures", "windows", "metrics", "final_vs_axis",
                     "accuracy", "accuracy_curves", "heatmap", "accuracy_by_source"]
AXIS_KINDS = ("final_vs_axis", "accuracy", "heatmap")  # the kinds drawn against a matrix axis


class FigureSpec(Model):
    """One figure of the report. A plain kind name ("loss") stands for ``{kind: loss}``."""

    kind: FigureKind = Field(
        description="loss: averaged test loss per setting, seed band (Figs. 3, 6, 7, 17); per_task: one panel "
                    "per unseen task; sd_vs_loss: SD_k against loss; measures: the loss beside the nine "
                    "similarity distance measures (Fig. 15); windows: loss per TMA round window (Fig. 8); "
                    "metrics: loss, Exact-Match, ROUGE-1/L per step (Fig. 2); final_vs_axis: last loss against "
                    "the one numeric axis varied; accuracy: final Exact-Match on unseen (and seen) instructions "
                    "against an axis, every seed a point; accuracy_curves: Exact-Match on unseen (solid) and seen "
                    "(dashed) instructions against items seen; heatmap: final unseen Exact-Match on the grid of "
                    "axis × y_axis; accuracy_by_source: final unseen Exact-Match per setting and test source")
    title: SafeStr | None = Field(None, description="the figure's title (default: the kind's own)")
    finding: SafeStr | None = Field(
        None, description="one line: what the paper found, printed in the caption after 'Paper:' (unset: the "
                          "kind's own for measures, windows and metrics; null: none)")
    task: SafeStr | None = Field(None, description="one unseen task instead of the average (loss, per_task, "
                                                   "measures, windows, final_vs_axis)")
    axis: SafeStr | None = Field(
        None, description="the matrix key path on the x axis (accuracy, heatmap, final_vs_axis), e.g. "
                          "data.sources.0.instructions; default: the one numeric matrix axis other than seeds "
                          "with more than one value")
    y_axis: SafeStr | None = Field(
        None, description="the heat map's second key path, on the y axis, e.g. data.sources.0.examples; default: "
                          "the other numeric axis varied besides seeds")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _axes_fit_the_kind(self) -> FigureSpec:
        # a stray axis would be ignored without a word; say so where the figure is configured
        if self.axis is not None and self.kind not in AXIS_KINDS:
            raise ValueError(f"axis is for the kinds {', '.join(AXIS_KINDS)}, not {self.kind}")
        if self.y_axis is not None and self.kind != "heatmap":
            raise ValueError(f"y_axis is for the heatmap kind, not {self.kind}")
        if self.axis is not None and self.axis == self.y_axis:
            raise ValueError(f"axis and y_axis are both {self.axis!r}")
        return self


class ReportConfig(StageConfig):
    title: str | None = Field(None, description="default: the experiment's name")
    at_steps: list[int] | None = Field(None, description="steps for the summary table (default: 1/4, 1/2, end)")
    figures: list[FigureSpec] | None = Field(
        None, description="the figures, in order (default: loss, per_task, sd_vs_loss, and measures, windows, "
                          "metrics, final_vs_axis, accuracy, accuracy_curves, heatmap, accuracy_by_source where "
                          "their data exists); a listed kind without data is skipped with a note")
    baseline: SafeStr | None = Field("RT", description="label of the baseline setting the headline compares with "
                                                       "(null: none)")
    early_fraction: float = Field(0.3, gt=0, le=1, description="the headline's early window: this fraction of "
                                                               "the training steps")


def figure_specs(cfg: ReportConfig) -> list[dict[str, Any]] | None:
    """The figure list as ``write_report`` takes it (an unset ``finding`` keeps the kind's own)."""
    if cfg.figures is None:
        return None
    out = []
    for f in cfg.figures:
        spec: dict[str, Any] = {"kind": f.kind, "title": f.title, "task": f.task, "axis": f.axis, "y_axis": f.y_axis}
        if "finding" in f.model_fields_set:
            spec["finding"] = f.finding
        out.append(spec)
    return out


def collect(runs: Mapping[str, RunInfo | Mapping[str, Any]], evaluate_nodes: Sequence[Upstream],
            arrange_nodes: Sequence[Upstream], train_nodes: Sequence[Upstream] = ()) -> list[RunCurve]:
    """One curve per run from its evaluation outputs (runs without any are left out)."""
    curves = []
    for run_id, info in runs.items():
        ev = next((u for u in evaluate_nodes if run_id in u.runs), None)
        ar = next((u for u in arrange_nodes if run_id in u.runs), None)
        tr = next((u for u in train_nodes if run_id in u.runs), None)
        files = losses.loss_files(ev) if ev is not None else []
        if files:
            curves.append(build_curve(run_id, info.as_dict() if isinstance(info, RunInfo) else dict(info), files,
                                      arrangement.arrangement_path(ar) if ar is not None else None,
                                      snapshots.summary_path(tr) if tr is not None else None))
    return curves


def make_report(meta: TaskMeta | Mapping[str, Any], inputs: Mapping[str, Sequence[Upstream]], folder: Path,
                cfg: ReportConfig | None = None) -> dict[str, Any]:
    """The report of an experiment into ``folder`` (made if missing), from its metadata (a task's
    ``meta``, or ``Experiment.meta()``: runs, experiment, provenance) and its upstream nodes by
    stage. What the aggregate stage runs, in a job or for ``hpcgen report``."""
    meta = TaskMeta.from_dict(meta)
    cfg = cfg if isinstance(cfg, ReportConfig) else ReportConfig()
    curves = collect(meta.runs, inputs.get("evaluate", []), inputs.get("arrange", []), inputs.get("train", []))
    if not curves:
        raise ConfigError("no run has evaluated snapshots yet", key="report", fix="run hpcgen submit first")
    return contract.write_report(folder, curves, title=cfg.title or meta.experiment or "hpcgen report",
                                 at_steps=cfg.at_steps, figures=figure_specs(cfg), baseline=cfg.baseline,
                                 early_fraction=cfg.early_fraction, provenance=meta.provenance)


class Aggregate(Stage):
    name = "aggregate"
    section = "report"
    Config = ReportConfig
    upstream = ("evaluate", "arrange", "train")
    scope = "experiment"
    version = 3  # Exact-Match on unseen / seen instructions and per source, the accuracy figures
    defaults = Resources(nodes=1, tasks_per_node=1, cpus=1, gpus=0, mem=4096, time=30)

    def report(self, meta: TaskMeta | Mapping[str, Any], inputs: Mapping[str, Sequence[Upstream]], folder: Path,
               cfg: ReportConfig | None = None) -> dict[str, Any]:
        """The report into ``folder``: what ``run`` writes, and ``hpcgen report`` with the
        aggregate node's own upstreams and metadata."""
        return make_report(meta, inputs, folder, cfg)

    def run(self, task: Task) -> None:
        result = self.report(task.meta, task.inputs, task.output_dir(contract.REPORT), task.config.report)
        task.log.info("report of %d run(s): %s", len(result["runs"]), ", ".join(result["figures"]))
