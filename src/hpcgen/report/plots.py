"""The figures, each written as PNG and SVG (matplotlib, no display needed).

Every figure kind is a function ``(view, folder, stem, title, task, **options) -> [png, svg]``
registered in ``KINDS`` with its file name, default title, a one-line caption (what it shows, with
the paper's axes) and, for the kinds that redo one of the paper's figures, what the paper found
("the paper": the data-arrangement paper, He et al., arXiv:2406.11721, for the loss kinds; the
diversity paper, Zhang, Wang and Charton, arXiv:2402.10891, for the exact-match kinds). A
kind whose data is absent raises ``NoData`` with the reason; the report notes it and goes on. A
kind drawn against matrix axes resolves them first (``Kind.options``: the figure's ``axis`` and
``y_axis``, or the one the runs vary), so that its caption can name them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hpcgen.report.curves import (  # noqa: E402
    MEASURE_NAMES,
    MEASURES,
    RunCurve,
    Setting,
    band,
    correlation,
    measure_at_snapshots,
    sd_at_snapshots,
)

EM_AXIS = "Exact-Match (greedy answers)"
ITEMS_AXIS = "training items seen"

METRIC_NAMES = {"exact_match": "Exact-Match", "rouge1": "ROUGE-1", "rougeL": "ROUGE-L", "reward": "RM score"}
LOSS_AXIS = "averaged test loss (unseen tasks)"
STEP_AXIS = "training step"


class NoData(Exception):
    """The data a figure needs is not there (the reason is the message)."""


@dataclass
class View:
    """What every figure draws from: the settings, which one is the baseline, the early window."""

    settings: list[Setting]
    baseline: list[Setting] = field(default_factory=list)  # the baseline setting(s), possibly none
    early_until: float | None = None
    early_fraction: float = 0.3
    palette: dict[str, str] = field(default_factory=dict)  # setting name -> colour, the same in every figure

    def __post_init__(self) -> None:
        if not self.palette:
            others = [s.name for s in self.settings if not self.is_baseline(s)]
            self.palette = {name: f"C{i % 10}" for i, name in enumerate(others)}

    @property
    def curves(self) -> list[RunCurve]:
        return [c for s in self.settings for c in s.runs]

    def is_baseline(self, s: Setting) -> bool:
        return any(s is b for b in self.baseline)

    def style(self, s: Setting) -> dict:
        """One colour per setting in every figure; the baseline black, dashed and thicker."""
        if self.is_baseline(s):
            return {"color": "black", "linestyle": "--", "linewidth": 2.0, "zorder": 5}
        return {"color": self.palette.get(s.name, "C9"), "linestyle": "-", "linewidth": 1.4, "zorder": 3}

    def legend(self, s: Setting) -> str:
        return s.legend + (" (baseline)" if self.is_baseline(s) else "")

    def setting_of(self, c: RunCurve) -> Setting:
        return next(s for s in self.settings if any(r is c for r in s.runs))


def _save(fig, folder: Path, name: str) -> list[Path]:
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, editable
        fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _task_values(task: str | None) -> Callable[[RunCurve], np.ndarray | None]:
    if task is None:
        return lambda c: c.loss
    return lambda c: c.per_task.get(task)


def _check_task(view: View, task: str | None) -> None:
    if task is not None and not any(task in c.per_task for c in view.curves):
        known = sorted({t for c in view.curves for t in c.per_task})
        raise NoData(f"no run has the unseen task {task!r} (tasks: {', '.join(known[:8])}"
                     f"{' ...' if len(known) > 8 else ''})")


def _setting_lines(ax, view: View, values, shade: bool = True, markers: bool = True, label: bool = True) -> int:
    """One line per setting (mean over its seeds) and its min-max seed band; returns lines drawn."""
    drawn = 0
    for s in view.settings:
        runs = [c for c in s.runs if values(c) is not None]
        if not runs:
            continue
        steps, mean, lo, hi = band(runs, values)
        if not np.isfinite(mean).any():
            continue
        st = view.style(s)
        ax.plot(steps, mean, marker="o" if markers else None, markersize=3, label=view.legend(s) if label else None,
                **st)
        if shade and len(runs) > 1:
            ax.fill_between(steps, lo, hi, color=st["color"], alpha=0.15, linewidth=0)
        drawn += 1
    return drawn


def _finish_grid(fig, axes, used: int, title: str) -> None:
    """A grid of panels: unused panels off, the step axis under the last row, one legend, a title."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(STEP_AXIS, fontsize=7)
    _outside_legend(fig, axes.flat[0])
    fig.suptitle(title)


def _outside_legend(fig, ax) -> None:
    """The settings' legend beside a grid of panels, off the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)


def _early_line(ax, view: View) -> None:
    if view.early_until is not None:
        ax.axvline(view.early_until, color="grey", linestyle=":", linewidth=1,
                   label=f"end of the first {view.early_fraction * 100:g} % of steps")


def loss_curves(view: View, folder: Path, stem: str, title: str, task: str | None = None) -> list[Path]:
    """Figs. 3, 6, 7, 17: averaged test loss against step, one line per setting."""
    _check_task(view, task)
    values = _task_values(task)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _setting_lines(ax, view, values)
    for s in view.settings:
        present = [(c, vals) for c in s.runs if (vals := values(c)) is not None]
        nan = [st for c, vals in present for st, v in zip(c.steps, vals) if np.isnan(v)]
        if nan:
            finite = [v for _, vals in present for v in vals if np.isfinite(v)]
            y = max(finite) if finite else 0.0
            ax.plot(nan, [y] * len(nan), "x", color=view.style(s)["color"], label=f"{s.name}: NaN points")
    _early_line(ax, view)
    ax.set_xlabel(STEP_AXIS)
    ax.set_ylabel(f"test loss on {task}" if task else LOSS_AXIS)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, stem)


def per_task(view: View, folder: Path, stem: str, title: str, task: str | None = None,
             max_tasks: int = 12) -> list[Path]:
    """The loss on each unseen task (the first ``max_tasks``), one line per setting."""
    _check_task(view, task)
    # runs may have different test tasks (each rewriting run has its own unseen instructions)
    tasks = [task] if task else list(dict.fromkeys(t for c in view.curves for t in c.per_task))[:max_tasks]
    if not tasks:
        raise NoData("the evaluation outputs name no test task")
    cols = min(4, len(tasks))
    rows = max(1, -(-len(tasks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, t in zip(axes.flat, tasks):
        _setting_lines(ax, view, _task_values(t), markers=False)
        ax.set_title(t[:48], fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test loss", fontsize=7)
    _finish_grid(fig, axes, len(tasks), title)
    return _save(fig, folder, stem)


def sd_vs_loss(view: View, folder: Path, stem: str, title: str, task: str | None = None) -> list[Path]:
    """The similarity distance SD_k of what was seen beside the loss, and their correlation."""
    with_sd = [c for c in view.curves if c.sd is not None and c.sd_interval]
    if not with_sd:
        raise NoData("no arrangement.h5 has an SD_k curve (/sd_curve; arrange.sd_curve: always draws one "
                     "for every strategy)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.2), layout="constrained")
    for c in with_sd:
        s = view.setting_of(c)
        st = view.style(s)
        sd = sd_at_snapshots(c)
        name = s.run_name(c)
        left.plot(c.steps, sd, label=name, color=st["color"], linestyle=st["linestyle"])
        p, rho = correlation(sd, c.loss)
        right.scatter(sd, c.loss, s=12, color=st["color"], label=f"{name}: r={p:.2f}, ρ={rho:.2f}")
    left.set_xlabel(STEP_AXIS)
    left.set_ylabel("SD_k (training items seen vs test set)")
    left.set_title("Similarity distance of the data seen")
    right.set_xlabel("SD_k")
    right.set_ylabel(LOSS_AXIS)
    right.set_title("Similarity distance against loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, folder, stem)


def _measure_axis(name: str) -> str:
    if name.startswith("cosine"):
        return "distance (−cosine similarity)"
    if name.startswith("euclidean"):
        return "Euclidean distance"
    return "KL divergence"


def measures(view: View, folder: Path, stem: str, title: str, task: str | None = None) -> list[Path]:
    """Fig. 15: the loss beside each of the nine similarity distance measures, against step."""
    table = "per_task" if task else "overall"
    with_m = [c for c in view.curves if (c.measures_per_task if task else c.measures)]
    if task is not None:
        with_m = [c for c in with_m if task in c.measure_tasks]
    if not with_m:
        raise NoData("no arrangement.h5 has similarity measures (/measures/" + table
                     + (f" for the task {task!r}" if task else "") + ")")
    present = [m for m in MEASURES if any(m in (c.measures_per_task if task else c.measures) for c in with_m)]
    keep = [Setting(s.name, s.label, s.context, [c for c in s.runs if c in with_m]) for s in view.settings]
    keep = [s for s in keep if s.runs]
    sub = View(settings=keep, baseline=[s for s in keep if any(s.name == b.name for b in view.baseline)],
               early_until=view.early_until, early_fraction=view.early_fraction, palette=view.palette)
    panels = ["loss", *present]
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, name in zip(axes.flat, panels):
        if name == "loss":
            _setting_lines(ax, sub, _task_values(task), markers=False)
            ax.set_title("test loss" + (f" ({task[:30]})" if task else ""), fontsize=8)
            ax.set_ylabel(LOSS_AXIS if not task else "test loss", fontsize=7)
        else:
            _setting_lines(ax, sub, lambda c, n=name: measure_at_snapshots(c, n, task), markers=False, label=False)
            ax.set_title(MEASURE_NAMES[name], fontsize=8)
            ax.set_ylabel(_measure_axis(name), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    _finish_grid(fig, axes, len(panels), title)
    return _save(fig, folder, stem)


def window_label(w: tuple[int, int]) -> str:
    return f"[{w[0]}, {w[1]})"


def windows(view: View, folder: Path, stem: str, title: str, task: str | None = None) -> list[Path]:
    """Fig. 8: one line per TMA round window [i, j); beside it the minimum and final loss of each."""
    _check_task(view, task)
    values = _task_values(task)
    groups: dict[tuple, list[RunCurve]] = {}
    for s in view.settings:
        for c in s.runs:
            if c.window is not None and values(c) is not None:
                groups.setdefault((c.window, s.name), []).append(c)
    if not groups:
        raise NoData("no arrangement is a TMA round window (arrange.window is null in every run's params)")
    per_window: dict[tuple, int] = {}
    for w, _ in groups:
        per_window[w] = per_window.get(w, 0) + 1
    keys = sorted(groups, key=lambda k: (k[0], k[1]))
    labels = {k: window_label(k[0]) + (f" — {k[1]}" if per_window[k[0]] > 1 else "") for k in keys}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.3), gridspec_kw={"width_ratios": [3, 2]},
                                      layout="constrained")
    cmap = plt.get_cmap("viridis")
    mins, finals = [], []
    for i, k in enumerate(keys):
        runs = groups[k]
        steps, mean, lo, hi = band(runs, values)
        color = cmap(i / max(1, len(keys) - 1) * 0.9)
        n = len(runs)
        left.plot(steps, mean, color=color, marker="o", markersize=3,
                  label=labels[k] + (f" ({n} seeds)" if n > 1 else ""))
        if n > 1:
            left.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
        scored = [arr for c in runs if (arr := values(c)) is not None and np.isfinite(arr).any()]  # groups hold no None
        per_run_min = [np.nanmin(v) for v in scored]
        per_run_final = [v[np.isfinite(v)][-1] for v in scored]
        mins.append(float(np.mean(per_run_min)) if per_run_min else np.nan)
        finals.append(float(np.mean(per_run_final)) if per_run_final else np.nan)
    for b in view.baseline:
        if all(c.window is None for c in b.runs):
            steps, mean, _, _ = band(b.runs, values)
            left.plot(steps, mean, label=view.legend(b), **view.style(b))
    x = np.arange(len(keys))
    right.plot(x, mins, marker="o", label="minimum loss")
    right.plot(x, finals, marker="s", label="final loss")
    right.set_xticks(x, [labels[k] for k in keys], rotation=30, fontsize=7)
    right.set_xlabel("TMA rounds of the training data")
    right.set_ylabel(LOSS_AXIS if not task else "test loss")
    right.set_title("Minimum and final loss per window")
    left.set_xlabel(STEP_AXIS)
    left.set_ylabel(LOSS_AXIS if not task else f"test loss on {task}")
    left.set_title("Loss by round window")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, folder, stem)


def generation_metrics(view: View, folder: Path, stem: str, title: str, task: str | None = None) -> list[Path]:
    """Fig. 2: loss, Exact-Match, ROUGE-1, ROUGE-L (and RM score) against step, a panel each."""
    present = [m for m in METRIC_NAMES if any(m in c.metrics for c in view.curves)]
    if not present:
        raise NoData("no generation metrics were scored (eval.generate: true scores Exact-Match and ROUGE)")
    panels = ["loss", *present]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, panels):
        if name == "loss":
            _setting_lines(ax, view, lambda c: c.loss)
            ax.set_ylabel(LOSS_AXIS, fontsize=8)
            ax.set_title("loss", fontsize=9)
        else:
            _setting_lines(ax, view, lambda c, m=name: c.metrics.get(m), label=False)
            ax.set_ylabel(f"{METRIC_NAMES[name]} (unseen tasks)", fontsize=8)
            ax.set_title(METRIC_NAMES[name], fontsize=9)
        ax.set_xlabel(STEP_AXIS, fontsize=8)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title)
    return _save(fig, folder, stem)


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_seed_axis(path: str) -> bool:
    """Axes named like *seed* (``train.seed``, ``data.sources.0.seed``) repeat a setting; they are
    never the x axis, and their runs are one setting's seeds (see ``group_settings``)."""
    return "seed" in path


def varying_axes(curves: list[RunCurve], numeric: bool = True) -> list[str]:
    """The non-seed matrix axes, in matrix order, with more than one value over the runs (and, with
    ``numeric``, a number in every run)."""
    order = list(dict.fromkeys(k for c in curves for k in c.values if not is_seed_axis(k)))
    out = []
    for a in order:
        if numeric and not all(_numeric(c.values.get(a)) for c in curves):
            continue
        if len({json.dumps(c.values.get(a), sort_keys=True, default=str) for c in curves}) > 1:
            out.append(a)
    return out


def varying_numeric_axis(curves: list[RunCurve]) -> str | None:
    """The one numeric, non-seed matrix axis whose value varies over the runs, if exactly one."""
    varying = varying_axes(curves)
    return varying[0] if len(varying) == 1 else None


def _known_axes(curves: list[RunCurve]) -> str:
    axes = list(dict.fromkeys(k for c in curves for k in c.values))
    return ", ".join(axes) if axes else "none: the runs have no matrix values"


def _check_axis(curves: list[RunCurve], axis: str) -> None:
    if not any(axis in c.values for c in curves):
        raise NoData(f"no run has the matrix axis {axis!r} (axes: {_known_axes(curves)})")


def axis_option(view: View, spec: dict) -> dict:
    """The figure's ``axis``, or the one numeric non-seed axis the runs vary."""
    curves = view.curves
    axis = spec.get("axis")
    if axis:
        _check_axis(curves, axis)
        return {"axis": axis}
    axis = varying_numeric_axis(curves)
    if axis is None:
        numeric = varying_axes(curves)
        why = (f"several numeric axes vary ({', '.join(numeric)})" if numeric else
               "no numeric matrix axis other than seeds varies over the runs")
        raise NoData(f"{why}: set the figure's axis (axes: {_known_axes(curves)})")
    return {"axis": axis}


def grid_options(view: View, spec: dict) -> dict:
    """``axis`` and ``y_axis`` of a heat map: as given; else the other numeric axis the runs vary
    beside the given one; else the two numeric non-seed axes they vary, in matrix order."""
    curves = view.curves
    axis, y_axis = spec.get("axis"), spec.get("y_axis")
    for a in (axis, y_axis):
        if a:
            _check_axis(curves, a)
    if axis and y_axis:
        if axis == y_axis:
            raise NoData(f"axis and y_axis are both {axis!r}")
        return {"axis": axis, "y_axis": y_axis}
    free = [a for a in varying_axes(curves) if a not in (axis, y_axis)]
    need = 1 if axis or y_axis else 2
    if len(free) != need:
        have = ", ".join(free) or "none"
        raise NoData(f"a heat map needs {'another' if need == 1 else 'two'} numeric matrix "
                     f"ax{'i' if need == 1 else 'e'}s varied besides seeds (varied: {have}): set the figure's axis "
                     f"and y_axis (axes: {_known_axes(curves)})")
    if axis:
        return {"axis": axis, "y_axis": free[0]}
    if y_axis:
        return {"axis": free[0], "y_axis": y_axis}
    return {"axis": free[0], "y_axis": free[1]}


def final_vs_axis(view: View, folder: Path, stem: str, title: str, task: str | None = None,
                  axis: str | None = None) -> list[Path]:
    """The last snapshot's loss (and Exact-Match, when scored) against a numeric matrix axis (by
    default the one the runs vary), e.g. the number of training instructions of the diversity study."""
    axis = axis or axis_option(view, {})["axis"]
    curves = [c for c in view.curves if _numeric(c.values.get(axis))]
    if not curves:
        raise NoData(f"no run has a number for the matrix axis {axis!r}")
    _check_task(view, task)
    values = _task_values(task)

    def last(v):
        v = v[np.isfinite(v)] if v is not None else np.array([])
        return float(v[-1]) if v.size else np.nan

    xs = sorted({float(c.values[axis]) for c in curves})
    loss = [np.nanmean([last(values(c)) for c in curves if float(c.values[axis]) == x] or [np.nan]) for x in xs]
    fig, left = plt.subplots(figsize=(6.5, 4.2))
    left.plot(xs, loss, marker="o", label="test loss")
    left.set_xlabel(axis)
    left.set_ylabel("test loss at the last snapshot")
    if all(c.em_unseen is not None for c in curves):  # the records of unseen tasks only, as the label says
        em = [_finite_mean([c.final_em("unseen") for c in curves if float(c.values[axis]) == x]) for x in xs]
        right = left.twinx()
        right.plot(xs, em, marker="s", color="C1", label="exact match")
        right.set_ylabel("Exact-Match on unseen tasks")
    if min(xs) > 0 and max(xs) / min(xs) >= 20:
        left.set_xscale("log")
    left.set_title(title)
    left.grid(alpha=0.3)
    return _save(fig, folder, stem)

# --------------------------------------------------------------------------------------------
# Exact-Match on unseen and seen instructions (the instruction diversity study)


def _finite_mean(xs) -> float:
    ok = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(ok)) if ok else float("nan")


def _em_curves(view: View) -> list[RunCurve]:
    curves = [c for c in view.curves if c.em_final is not None]
    if not curves:
        raise NoData("no Exact-Match was scored (/exact_match: eval.generate or eval.forced_exact_match)")
    return curves


def _fmt_value(v) -> str:
    return f"{v:g}" if _numeric(v) else str(v)


def _positions(curves: list[RunCurve], axis: str) -> tuple[list, dict[str, float], bool]:
    """The axis values in order (sorted numbers, else first seen), each one's x position, and
    whether the axis is numeric (then the position is the value itself)."""
    values: list[Any] = [c.values.get(axis) for c in curves]  # any YAML value (None where a run lacks the axis)
    keys = {json.dumps(v, sort_keys=True, default=str): v for v in values}
    numeric = all(_numeric(v) for v in values)
    order = sorted(keys.values()) if numeric else list(keys.values())
    pos = {json.dumps(v, sort_keys=True, default=str): (float(v) if numeric else float(i)) for i, v in enumerate(order)}
    return order, pos, numeric


def _log_x(values: list) -> bool:
    """A log axis where the (positive) numbers span ten times or more: 10 ... 3000 instructions."""
    return bool(values) and all(_numeric(v) for v in values) and min(values) > 0 and max(values) / min(values) >= 10


def series(curves: list[RunCurve], drawn: tuple[str, ...]) -> list[tuple[str, list[RunCurve]]]:
    """The runs split by every non-seed axis that varies beside the ``drawn`` ones (one line or
    panel each), in run order. A part is named by the label all its runs share where each part has
    its own, else by its values of those axes; "" when there is one part."""
    others = [a for a in varying_axes(curves, numeric=False) if a not in drawn]
    parts: dict[str, list[RunCurve]] = {}
    for c in curves:
        key = ", ".join(f"{a.rsplit('.', 1)[-1]}={_fmt_value(c.values.get(a))}" for a in others)
        parts.setdefault(key, []).append(c)
    labels = {k: {c.label for c in runs} for k, runs in parts.items()}
    # the parts whose runs all have one label
    named = {k: label for k, v in labels.items() if len(v) == 1 for label in v if label is not None}
    own = len(named) == len(parts) and len(set(named.values())) == len(parts)
    return [(named[k] if own and len(parts) > 1 else k, runs) for k, runs in parts.items()]


def _cell(runs: list[RunCurve], group: str, source: str | None = None) -> tuple[float, list[float]]:
    """The mean over seeds of the final Exact-Match of ``group``, and each seed's value."""
    values = [c.final_em(group, source) for c in runs]
    return _finite_mean(values), values


def _axis_points(ax, curves: list[RunCurve], axis: str, group: str, color: str, label: str | None,
                 pos: dict[str, float]) -> bool:
    """Each seed's final Exact-Match as a point, the mean over seeds at each axis value as a line."""
    by_x: dict[float, list[float]] = {}
    for c in curves:
        by_x.setdefault(pos[json.dumps(c.values.get(axis), sort_keys=True, default=str)], []).append(
            c.final_em(group))
    xs = sorted(by_x)
    means = [_finite_mean(by_x[x]) for x in xs]
    if not any(math.isfinite(m) for m in means):
        return False
    px = [x for x in xs for v in by_x[x] if math.isfinite(v)]
    py = [v for x in xs for v in by_x[x] if math.isfinite(v)]
    ax.scatter(px, py, s=18, color=color, alpha=0.55, zorder=4, linewidths=0)
    keep = [(x, m) for x, m in zip(xs, means) if math.isfinite(m)]
    ax.plot([x for x, _ in keep], [m for _, m in keep], marker="o", markersize=4, color=color, label=label,
            zorder=5)
    return True


def accuracy(view: View, folder: Path, stem: str, title: str, task: str | None = None,
             axis: str | None = None) -> list[Path]:
    """Final Exact-Match on unseen instructions against a matrix axis (e.g. the number of training
    instructions), and on held-out examples of seen instructions beside it: each seed a point, the
    mean over seeds a line (one line per value of any other axis that varies)."""
    axis = axis or axis_option(view, {})["axis"]
    curves = [c for c in _em_curves(view) if axis in c.values]
    if not curves:
        raise NoData(f"no run with Exact-Match has the matrix axis {axis!r}")
    order, pos, numeric = _positions(curves, axis)
    with_seen = any(math.isfinite(c.final_em("seen")) for c in curves)
    groups = [("unseen", "unseen instructions")] + ([("seen", "seen instructions (held-out examples)")]
                                                    if with_seen else [])
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups) + 1.5, 4.2), squeeze=False, sharey=True,
                             layout="constrained")
    parts = series(curves, (axis,))
    for ax, (group, name) in zip(axes.flat, groups):
        for i, (part, runs) in enumerate(parts):
            _axis_points(ax, runs, axis, group, f"C{i % 10}", part or "mean over seeds", pos)
        ax.set_title(f"Exact-Match on {name}", fontsize=10)
        ax.set_xlabel(axis)
        if numeric and _log_x(order):
            ax.set_xscale("log")
        if numeric:
            ax.set_xticks([float(v) for v in order], [_fmt_value(v) for v in order], fontsize=8)
            ax.minorticks_off()
        else:
            ax.set_xticks(list(range(len(order))), [_fmt_value(v) for v in order], fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel(f"{EM_AXIS}, last scored snapshot")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, folder, stem)


def accuracy_curves(view: View, folder: Path, stem: str, title: str, task: str | None = None) -> list[Path]:
    """Exact-Match on unseen (solid) and seen (dashed) instructions against the items seen, one
    colour per setting, the mean over its seeds (the unseen line with its min–max band, for up to
    four settings)."""
    with_em = {id(c) for c in _em_curves(view)}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    seen_drawn = False
    drawn = [(s, [c for c in s.runs if id(c) in with_em]) for s in view.settings]
    drawn = [(s, runs) for s, runs in drawn if runs]
    shade = len(drawn) <= 4  # more bands hide one another (a log grid of six instruction counts)
    for s, runs in drawn:
        color = view.style(s)["color"]
        for group, style in (("unseen", "-"), ("seen", "--")):
            x, mean, lo, hi = band(runs, lambda c, g=group: c.em_unseen if g == "unseen" else c.em_seen,
                                   x=lambda c: c.items_seen)
            ok = np.isfinite(mean)
            if not ok.any():
                continue
            ax.plot(x[ok], mean[ok], linestyle=style, marker="o" if group == "unseen" else None, markersize=3,
                    color=color, label=view.legend(s) if group == "unseen" else None)
            if shade and group == "unseen" and len(runs) > 1:
                ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.12, linewidth=0)
            seen_drawn = seen_drawn or group == "seen"
    ax.plot([], [], color="grey", linestyle="-", label="unseen instructions")
    if seen_drawn:
        ax.plot([], [], color="grey", linestyle="--", label="seen instructions (held-out examples)")
    ax.set_xlabel(ITEMS_AXIS)
    ax.set_ylabel(EM_AXIS)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, folder, stem)


def heatmap(view: View, folder: Path, stem: str, title: str, task: str | None = None, axis: str | None = None,
            y_axis: str | None = None) -> list[Path]:
    """The mean over seeds of the final Exact-Match on unseen instructions on the grid of two matrix
    axes (instructions × examples per instruction), each cell annotated; a panel per value of any
    other axis that varies."""
    if axis is None or y_axis is None:
        opts = grid_options(view, {"axis": axis, "y_axis": y_axis})
        axis, y_axis = opts["axis"], opts["y_axis"]
    curves = [c for c in _em_curves(view) if axis in c.values and y_axis in c.values]
    if not curves:
        raise NoData(f"no run with Exact-Match has both matrix axes {axis!r} and {y_axis!r}")
    xs, xpos, _ = _positions(curves, axis)
    ys, ypos, _ = _positions(curves, y_axis)
    xi = {k: i for i, k in enumerate(sorted(xpos, key=xpos.__getitem__))}
    yi = {k: i for i, k in enumerate(sorted(ypos, key=ypos.__getitem__))}
    parts = series(curves, (axis, y_axis))[:6]
    fig, axes = plt.subplots(1, len(parts), figsize=(1.1 * len(xs) * len(parts) + 2.5, 0.8 * len(ys) + 2.2),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = None
    for ax, (part, runs) in zip(axes.flat, parts):
        cells: dict[tuple[int, int], list[RunCurve]] = {}
        for c in runs:
            key = (yi[json.dumps(c.values[y_axis], sort_keys=True, default=str)],
                   xi[json.dumps(c.values[axis], sort_keys=True, default=str)])
            cells.setdefault(key, []).append(c)
        grid = np.full((len(ys), len(xs)), np.nan)
        for (r, k), rs in cells.items():
            grid[r, k] = _cell(rs, "unseen")[0]
        image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for r in range(len(ys)):
            for k in range(len(xs)):
                v = grid[r, k]
                text = f"{v:.2f}" if math.isfinite(v) else "—"
                ax.text(k, r, text, ha="center", va="center", fontsize=8,
                        color="white" if math.isfinite(v) and v < 0.5 else "black")
        ax.set_xticks(range(len(xs)), [_fmt_value(v) for v in xs], fontsize=8)
        ax.set_yticks(range(len(ys)), [_fmt_value(v) for v in ys], fontsize=8)
        ax.set_xlabel(axis)
        ax.set_ylabel(y_axis)
        if part:
            ax.set_title(part, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="Exact-Match on unseen instructions", shrink=0.9)
    fig.suptitle(title)
    return _save(fig, folder, stem)


def unseen_sources(curves: list[RunCurve]) -> list[str]:
    """The test sources with records of unseen instructions in some run, in order."""
    return list(dict.fromkeys(t.source for c in curves for t in c.em_per_task if not t.seen))


def one_source(view: View) -> str | None:
    """Bars by source say something only where more than one test source has unseen records."""
    sources = unseen_sources([c for c in view.curves if c.em_final is not None])
    return None if len(sources) > 1 else f"{len(sources)} test source(s) with unseen records"


def accuracy_by_source(view: View, folder: Path, stem: str, title: str, task: str | None = None) -> list[Path]:
    """Grouped bars: per setting, one bar per test source, the mean over seeds of the final
    Exact-Match on that source's unseen instructions; whiskers from the lowest to the highest seed,
    each seed a dot."""
    curves = _em_curves(view)
    sources = unseen_sources(curves)
    if not sources:
        raise NoData("no test source has records of unseen instructions")
    with_em = {id(c) for c in curves}
    settings = [(s, [c for c in s.runs if id(c) in with_em]) for s in view.settings]
    settings = [(s, runs) for s, runs in settings if runs]
    width = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(settings) * (0.5 + 0.35 * len(sources))), 4.4))
    for j, src in enumerate(sources):
        x = np.arange(len(settings)) + (j - (len(sources) - 1) / 2) * width
        means, lo, hi = [], [], []
        for k, (_, runs) in enumerate(settings):
            mean, values = _cell(runs, "unseen", src)
            ok = [v for v in values if math.isfinite(v)]
            means.append(mean)
            lo.append(mean - min(ok) if ok else 0.0)
            hi.append(max(ok) - mean if ok else 0.0)
            if len(ok) > 1:
                ax.scatter([x[k]] * len(ok), ok, s=8, color="black", zorder=4)
        ax.bar(x, np.nan_to_num(means, nan=0.0), width * 0.95, color=f"C{j % 10}", label=src,
               yerr=[lo, hi], capsize=2, error_kw={"linewidth": 0.8})
        for k, m in enumerate(means):
            if not math.isfinite(m):
                ax.text(x[k], 0.01, "—", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(np.arange(len(settings)), [s.legend for s, _ in settings], rotation=20 if len(settings) > 4 else 0,
                  ha="right" if len(settings) > 4 else "center", fontsize=8)
    ax.set_ylabel(f"{EM_AXIS} on unseen instructions")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(title="test source", fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    return _save(fig, folder, stem)


@dataclass(frozen=True)
class Kind:
    draw: Callable[..., list[Path]]
    stem: str  # the file name, without .png / .svg
    title: str
    caption: str  # one line: what it shows; {baseline} and {early} are filled in
    finding: str | None = None  # what the paper found, for the kinds that redo one of its figures
    auto: bool | str = True  # in the default set: always (True) or only when its data is there ("data")
    # the figure's matrix axes resolved against the data (caption fields and draw keywords), or NoData
    options: Callable[[View, dict], dict] | None = None
    default_skip: Callable[[View], str | None] | None = None  # why the default set leaves it out, or None


KINDS: dict[str, Kind] = {
    "loss": Kind(
        loss_curves, "loss_curves", "Averaged test loss on unseen tasks",
        "Averaged test loss on the unseen tasks against training step, one line per setting: the mean over its "
        "seeds, shaded between its lowest and highest seed (min–max); {baseline} the dotted line ends the first "
        "{early} of steps (cf. the paper's Figs. 3, 6, 7, 17)."),
    "per_task": Kind(
        per_task, "per_task", "Test loss per unseen task",
        "Test loss on each unseen task against training step (up to 12 tasks), one line per setting, mean over "
        "seeds with the min–max seed band (cf. the per-task curves of the paper's Figs. 3, 10–14)."),
    "sd_vs_loss": Kind(
        sd_vs_loss, "sd_vs_loss", "Similarity distance SD_k and test loss",
        "Left: the similarity distance SD_k between the training items seen so far and the test set, at each "
        "snapshot, against training step; right: the averaged test loss against SD_k, with Pearson r and "
        "Spearman ρ per run."),
    "measures": Kind(
        measures, "measures", "Test loss and the nine similarity distance measures",
        "Averaged test loss (first panel) beside each similarity distance measure between the training data seen "
        "so far and the test set (Cosine and Euclidean × min, max, avg, centroid; bigram KL), at every snapshot, "
        "against training step; mean over seeds (cf. the paper's Fig. 15).",
        finding="drops in the minimum distances coincide with the sudden drops of the loss; Cosine and Euclidean "
                "differ little, centroid follows avg, and bigram KL shows no clear pattern (App. B.4).",
        auto="data"),
    "windows": Kind(
        windows, "windows", "Averaged test loss by TMA round window",
        "Averaged test loss against training step of training on the items of TMA rounds [i, j) only, one line "
        "per window (mean over seeds), and the minimum and final loss of each window (cf. the paper's Fig. 8).",
        finding="from rounds [0, 5) to [25, 30) the loss falls more slowly and its minimum is higher: the earlier "
                "TMA selects a sub-training set, the better it generalizes (Takeaway 6).",
        auto="data"),
    "metrics": Kind(
        generation_metrics, "generation_metrics", "Loss and generation metrics on unseen tasks",
        "Averaged test loss, Exact-Match, ROUGE-1 and ROUGE-L (and RM score where scored) of the greedy answers on "
        "the unseen tasks against training step, one panel each, mean over seeds (cf. the paper's Fig. 2).",
        finding="Exact-Match and ROUGE rise within about 10 steps but are unstable; the loss is smooth and reaches "
                "its lowest point within 50 steps, so loss is the stable measure of zero-shot generalization "
                "(Takeaways 1, 2).",
        auto="data"),
    "final_vs_axis": Kind(
        final_vs_axis, "final_vs_axis", "Unseen-task results against the varied axis",
        "Test loss at the last snapshot (and Exact-Match on unseen tasks, where scored) against the matrix axis "
        "{axis}, mean over seeds.",
        auto="data", options=axis_option),
    "accuracy": Kind(
        accuracy, "accuracy", "Final Exact-Match on unseen and seen instructions",
        "Exact-Match of the greedy answers at the last scored snapshot against the matrix axis {axis}: on the "
        "unseen instructions (no training records; left) and on held-out examples of the seen instructions "
        "(right, where the test set has them); each seed a point, the mean over seeds a line.",
        auto="data", options=axis_option),
    "accuracy_curves": Kind(
        accuracy_curves, "accuracy_curves", "Exact-Match during training",
        "Exact-Match of the greedy answers against the training items seen, on unseen instructions (solid; "
        "for up to four settings shaded between the lowest and highest seed) and on held-out examples of seen "
        "instructions (dashed), one colour per setting, mean over its seeds.",
        auto="data"),
    "heatmap": Kind(
        heatmap, "heatmap", "Exact-Match on unseen instructions over the grid",
        "Exact-Match on unseen instructions at the last scored snapshot, mean over seeds, on the grid of "
        "{axis} (x) and {y_axis} (y); each cell holds its value, grey cells (—) have no run.",
        auto="data", options=grid_options),
    "accuracy_by_source": Kind(
        accuracy_by_source, "accuracy_by_source", "Exact-Match on unseen instructions by test source",
        "Exact-Match on the unseen instructions of each test source at the last scored snapshot, one group of "
        "bars per setting: the mean over seeds, whiskers from the lowest to the highest seed (dots), — where the "
        "source has no unseen record.",
        auto="data", default_skip=one_source),
}
