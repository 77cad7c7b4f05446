"""Loss curves of the runs, their summary numbers, and similarity-loss correlations.

A NaN loss (a test record that could not be scored) is counted per step and left out of that
step's mean; it is never turned into 0. The same holds for Exact-Match, which is kept apart for
the test records of unseen instructions (no training records: zero-shot generalization) and of
seen ones (held-out examples: the gap between the two), overall and per test source.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcgen.contracts import arrangement as arrangement_contract
from hpcgen.contracts import snapshots as snapshots_contract
from hpcgen.contracts.losses import Losses, load_losses

#: the nine similarity distance measures of the paper's Appendix B.4 (Figure 15), in its order
MEASURES = ("cosine_min", "cosine_max", "cosine_avg", "cosine_centroid",
            "euclidean_min", "euclidean_max", "euclidean_avg", "euclidean_centroid", "bigram_kl")
MEASURE_NAMES = {"cosine_min": "Cosine-Min", "cosine_max": "Cosine-Max", "cosine_avg": "Cosine-Avg",
                 "cosine_centroid": "Cosine-Centroid", "euclidean_min": "Euclidean-Min",
                 "euclidean_max": "Euclidean-Max", "euclidean_avg": "Euclidean-Avg",
                 "euclidean_centroid": "Euclidean-Centroid", "bigram_kl": "bigram KL"}


@dataclass(frozen=True)
class TaskScore:
    """The final Exact-Match of one instruction of one test source."""

    source: str
    task: str
    seen: bool
    records: int  # the instruction's test records
    nan_records: int  # of which not scored at the final snapshot (left out of ``exact_match``)
    exact_match: float  # NaN where none was scored


@dataclass(eq=False)  # compared by identity (its arrays have no truth value)
class RunCurve:
    run_id: str
    name: str
    values: dict
    steps: np.ndarray
    items_seen: np.ndarray
    loss: np.ndarray  # mean over the test records, per step
    generalist: np.ndarray  # mean over the generalist subset, per step
    n_nan: np.ndarray  # NaN records per step
    per_task: dict[str, np.ndarray] = field(default_factory=dict)
    sd: np.ndarray | None = None  # SD_k at the arrangement's sd_interval
    sd_interval: int | None = None
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # exact_match, rouge1, rougeL per step
    label: str | None = None  # the matrix's zip column ``label`` ("RT", "NFT", "TMA-FFT" ...)
    strategy: str | None = None
    window: tuple[int, int] | None = None  # TMA round window [i, j) of the arrangement
    measure_items: np.ndarray | None = None  # items seen at each measure checkpoint
    measure_tasks: list[str] = field(default_factory=list)
    measures: dict[str, np.ndarray] = field(default_factory=dict)  # overall test set, (K,)
    measures_per_task: dict[str, np.ndarray] = field(default_factory=dict)  # (K, T)
    train: dict = field(default_factory=dict)  # the train stage's summary.json (may be empty)
    # Exact-Match per step over the records of unseen / seen instructions (None without /exact_match;
    # NaN at a step where the group has no record or none was scored)
    em_unseen: np.ndarray | None = None
    em_seen: np.ndarray | None = None
    em_by_source: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # source -> unseen/seen
    em_final: int | None = None  # index of the last snapshot with any Exact-Match scored
    em_per_task: list[TaskScore] = field(default_factory=list)  # at ``em_final``, per source and instruction
    # per (source, instruction, seen), its mean Exact-Match at every snapshot: (keys, (k, len(keys)))
    em_per_instruction: tuple[list[tuple[str, str, bool]], np.ndarray] | None = None
    seen_records: int = 0  # test records of seen instructions (in the loss's mean, as every record is)

    @property
    def em_final_step(self) -> int | None:
        return int(self.steps[self.em_final]) if self.em_final is not None else None

    def final_em(self, group: str, source: str | None = None) -> float:
        """Exact-Match of ``group`` ("unseen" or "seen") at the final scored snapshot, over every
        source or one; NaN where the group has no scored record there (or nothing was scored)."""
        if self.em_final is None:
            return float("nan")
        if source is None:
            values = self.em_unseen if group == "unseen" else self.em_seen
        else:
            values = self.em_by_source.get(source, {}).get(group)
        return float(values[self.em_final]) if values is not None else float("nan")

    @property
    def records_truncated(self) -> int | None:
        v = self.train.get("records_truncated")
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def records_too_long(self) -> int | None:
        v = self.train.get("records_too_long")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
        old = self.train.get("too_long")  # older train outputs list the rows
        return len(old) if isinstance(old, list) else None

    @property
    def planned_steps(self) -> int | None:
        v = self.train.get("steps")
        return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN; a row of only NaN stays NaN (no warning)."""
    counts = np.sum(~np.isnan(x), axis=1)
    sums = np.nansum(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def read_arrangement(curve: RunCurve, path: Path) -> None:
    """The SD_k curve, the nine measures (``/measures``), the strategy and the round window."""
    a = arrangement_contract.read_arrangement(path)
    if a.sd_curve is not None:
        curve.sd = a.sd_curve
        curve.sd_interval = a.sd_interval
    if a.strategy is not None:
        curve.strategy = a.strategy
    if "params" in a.attrs:
        curve.window = a.window
    if a.measures is not None:
        curve.measure_items = a.measures.items_seen
        curve.measure_tasks = a.measures.tasks
        for name in MEASURES:
            if name in a.measures.overall:
                curve.measures[name] = a.measures.overall[name]
            if name in a.measures.per_task:
                curve.measures_per_task[name] = a.measures.per_task[name]


def _group_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per step, the mean over the records in ``mask`` ignoring NaN (NaN where it holds none)."""
    return nanmean_rows(x[:, mask]) if mask.any() else np.full(x.shape[0], np.nan)


def read_exact_match(curve: RunCurve, ev: Losses) -> None:
    """Exact-Match per step on unseen and seen instructions, overall and per source, and per
    instruction at the final snapshot: the last one where any record was scored (a snapshot
    evaluated without generation has only NaN and is not the result of the run)."""
    em = ev.metrics["exact_match"].astype(np.float64)
    seen, source = ev.seen, ev.source
    assert seen is not None and source is not None  # Losses.__post_init__ fills both
    curve.em_unseen, curve.em_seen = _group_mean(em, ~seen), _group_mean(em, seen)
    for src in dict.fromkeys(source.tolist()):
        here = source == src
        curve.em_by_source[src] = {"unseen": _group_mean(em, here & ~seen), "seen": _group_mean(em, here & seen)}
    keys = list(dict.fromkeys(zip(source.tolist(), ev.task.tolist(), seen.tolist())))
    column = {key: j for j, key in enumerate(keys)}
    cols = np.asarray([column[key] for key in zip(source.tolist(), ev.task.tolist(), seen.tolist())])
    ok = np.isfinite(em)
    sums = np.zeros((em.shape[0], len(keys)))
    counts = np.zeros((em.shape[0], len(keys)))
    for step in range(em.shape[0]):  # every snapshot, every instruction: one pass over the records
        np.add.at(sums[step], cols[ok[step]], em[step, ok[step]])
        np.add.at(counts[step], cols[ok[step]], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve.em_per_instruction = ([(a, b, bool(c)) for a, b, c in keys],
                                    np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
    scored = np.flatnonzero(ok.any(axis=1))
    if not scored.size:
        return
    curve.em_final = int(scored[-1])
    final = em[curve.em_final]
    groups: dict[tuple[str, str, bool], list[float]] = {}  # one pass: there may be thousands of instructions
    for src, task, s, v in zip(source.tolist(), ev.task.tolist(), seen.tolist(), final.tolist()):
        groups.setdefault((src, task, bool(s)), []).append(v)
    for (src, task, s), values in groups.items():
        finite = [v for v in values if math.isfinite(v)]
        curve.em_per_task.append(TaskScore(src, task, s, len(values), len(values) - len(finite),
                                           float(np.mean(finite)) if finite else float("nan")))


def build_curve(run_id: str, meta: dict, loss_files: list[Path], arrangement: Path | None,
                train_summary: Path | None = None) -> RunCurve:
    ev = load_losses(loss_files)
    loss, generalist = ev.loss, ev.generalist
    assert ev.seen is not None  # Losses.__post_init__ fills it
    general = nanmean_rows(loss[:, generalist]) if generalist.any() else np.full(len(ev.steps), np.nan)
    curve = RunCurve(run_id=run_id, name=meta["name"], values=meta.get("values") or {}, steps=ev.steps,
                     items_seen=ev.items_seen, loss=nanmean_rows(loss), generalist=general,
                     n_nan=np.isnan(loss).sum(axis=1), label=meta.get("label") or None,
                     seen_records=int(ev.seen.sum()))
    for t in dict.fromkeys(ev.task):
        curve.per_task[str(t)] = nanmean_rows(loss[:, ev.task == t])
    curve.metrics = {m: nanmean_rows(v) for m, v in ev.metrics.items()}
    if "exact_match" in ev.metrics:
        read_exact_match(curve, ev)
    if arrangement is not None and arrangement.is_file():
        read_arrangement(curve, arrangement)
    curve.train = snapshots_contract.read_summary(train_summary)
    return curve


# --------------------------------------------------------------------------------------------
# Settings: the runs of one label, over seeds


def _non_seed(values: dict) -> dict:
    return {k: v for k, v in values.items() if "seed" not in k}


def _key(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _short(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


@dataclass(eq=False)
class Setting:
    """The runs that differ only in axes named like *seed*: one setting with a seed spread."""

    name: str  # "RT", "RT, source=niv2" or (without a label) "strategy=tma,direction=reverse"
    label: str | None
    context: tuple = ()  # (axis, value) of the axes that vary among runs of the same label
    runs: list[RunCurve] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def legend(self) -> str:
        return f"{self.name} ({self.seeds} seeds)" if self.seeds > 1 else self.name

    def run_name(self, curve: RunCurve) -> str:
        """The setting's name, with the seed axes of this run when the setting has several."""
        if self.seeds == 1:
            return self.name
        # zipped seeds (data.sources.0.seed with train.seed) often agree: name each pair once
        seeds = ",".join(dict.fromkeys(f"{_short(k)}={v}" for k, v in curve.values.items() if "seed" in k))
        return f"{self.name} ({seeds or curve.name})"


def group_settings(curves: list[RunCurve]) -> list[Setting]:
    """Runs grouped into settings, in the order of their first run. A run with a label belongs to
    its label's setting (split further by any non-seed axis that varies among the runs of that
    label); a run without one is named by its non-seed axis values, as before labels existed."""
    labelled = [c for c in curves if c.label]
    context_axes = sorted({
        a for c in labelled for a in _non_seed(c.values)
        if len({_key(d.values.get(a)) for d in labelled if d.label == c.label}) > 1})
    out: dict[tuple[str, ...], Setting] = {}
    for c in curves:
        key: tuple[str, ...]
        ctx: tuple[tuple[str, object], ...]
        if c.label:
            ctx = tuple((a, c.values[a]) for a in context_axes if a in c.values)
            name = c.label + ("".join(f", {_short(a)}={v}" for a, v in ctx))
            key = ("label", c.label, _key(ctx))
            label = c.label
        else:
            name = ",".join(f"{_short(k)}={v}" for k, v in _non_seed(c.values).items()) or c.name
            key, ctx, label = ("values", name), (), None
        out.setdefault(key, Setting(name=name, label=label, context=ctx)).runs.append(c)
    return list(out.values())


def seed_groups(curves: list[RunCurve]) -> dict[str, list[RunCurve]]:
    """Settings by name (see ``group_settings``)."""
    return {s.name: s.runs for s in group_settings(curves)}


def common_steps(curves: list[RunCurve]) -> np.ndarray:
    return np.asarray(sorted(set.intersection(*(set(c.steps.tolist()) for c in curves))))


def stack_at(curves: list[RunCurve], steps: np.ndarray, values=lambda c: c.loss) -> np.ndarray:
    """(runs x steps): each run's ``values`` at the given steps (all of which it has)."""
    return np.stack([np.asarray([values(c)[list(c.steps).index(s)] for s in steps], dtype=np.float64)
                     for c in curves]) if len(steps) else np.zeros((len(curves), 0))


def band(curves: list[RunCurve], values=lambda c: c.loss, x=lambda c: c.steps):
    """Steps common to the runs (all their steps where they share none); the mean over the runs
    and the lowest and highest run (the seed spread) at each, ignoring NaN. ``values(curve)`` is
    a per-snapshot array, or None for a run that lacks it; ``x(curve)`` the per-snapshot position
    (``items_seen`` puts runs of different batch sizes on one axis)."""
    xs = [np.asarray(x(c)) for c in curves]
    steps = np.asarray(sorted(set.intersection(*(set(v.tolist()) for v in xs)))) if xs else np.zeros(0)
    if not len(steps):
        steps = np.asarray(sorted(set().union(*(v.tolist() for v in xs))))
    stack = np.full((len(curves), len(steps)), np.nan)
    for i, c in enumerate(curves):
        v = values(c)
        if v is None:
            continue
        pos = {s: j for j, s in enumerate(xs[i].tolist())}
        for j, s in enumerate(steps.tolist()):
            if s in pos:
                stack[i, j] = v[pos[s]]
    ok = np.isfinite(stack)
    cnt = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, np.where(ok, stack, 0.0).sum(axis=0) / np.maximum(cnt, 1), np.nan)
    lo = np.where(cnt > 0, np.where(ok, stack, np.inf).min(axis=0, initial=np.inf), np.nan)
    hi = np.where(cnt > 0, np.where(ok, stack, -np.inf).max(axis=0, initial=-np.inf), np.nan)
    return steps, mean, lo, hi


def mean_std(curves: list[RunCurve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps common to all the runs, and the mean and standard deviation of their losses there."""
    steps = common_steps(curves)
    stack = stack_at(curves, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every run is NaN stays NaN
        return steps, np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)


# --------------------------------------------------------------------------------------------
# Summary numbers


def early_end(curves: list[RunCurve], early_fraction: float) -> float:
    """The last step of the early window shared by all runs: ``early_fraction`` of the longest
    training (planned steps where training finished, else the last snapshot), and at least the
    latest first snapshot, so that every run has a point in it."""
    horizon = max(max(c.planned_steps or 0 for c in curves), max(float(c.steps.max()) for c in curves if len(c.steps)))
    firsts = [float(c.steps[np.isfinite(c.loss)][0]) for c in curves if np.isfinite(c.loss).any()]
    return max(early_fraction * horizon, max(firsts) if firsts else 0.0)


def summary(curve: RunCurve, at_steps: list[int], early_fraction: float = 0.3, until: float | None = None) -> dict:
    """Loss at chosen steps (the last snapshot at or before each), area under the curve (mean
    loss over the steps, trapezoid rule), minimum and its step, and the mean over the snapshots
    at steps <= ``until`` (default: ``early_fraction`` of this run's last step, at least its first)."""
    ok = ~np.isnan(curve.loss)
    s, y = curve.steps[ok], curve.loss[ok]
    row: dict[str, str | int | float | None] = {
        "run": curve.name, "run_id": curve.run_id, "label": curve.label, "snapshots": int(len(curve.steps)),
        "nan_points": int((~ok).sum()), "nan_records": int(curve.n_nan.sum()),
        "records_truncated": curve.records_truncated, "records_too_long": curve.records_too_long}
    for at in at_steps:
        before = s[s <= at]
        row[f"loss@{at}"] = float(y[s <= at][-1]) if before.size else float("nan")
    if y.size >= 2:
        row["auc"] = float(np.trapezoid(y, s) / (s[-1] - s[0]))
    else:
        row["auc"] = float(y[0]) if y.size else float("nan")
    row["min_loss"] = float(y.min()) if y.size else float("nan")
    row["min_step"] = int(s[int(y.argmin())]) if y.size else -1
    if until is None:
        until = max(early_fraction * float(s[-1]), float(s[0])) if s.size else 0.0
    early = y[s <= until]
    row["early_mean"] = float(early.mean()) if early.size else float("nan")
    return row


def seed_range(values: list[float]) -> dict:
    """Mean, lowest and highest of seed values, ignoring NaN (None where none is finite), and the
    values themselves (None for a seed without one): JSON as it stands."""
    ok = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": float(np.mean(ok)) if ok else None, "min": min(ok) if ok else None,
            "max": max(ok) if ok else None, "seeds": [finite_or_none(v) for v in values]}


def finite_or_none(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _mean(xs) -> float:
    xs = [x for x in xs if isinstance(x, float) and math.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def seed_stats(early_means: list[float]) -> dict:
    """Mean, sample standard deviation (ddof 1; NaN for one seed) and max - min of seed values."""
    xs = np.asarray([x for x in early_means if math.isfinite(x)], dtype=np.float64)
    return {"early_mean": float(xs.mean()) if xs.size else float("nan"),
            "std": float(xs.std(ddof=1)) if xs.size > 1 else float("nan"),
            "spread": float(xs.max() - xs.min()) if xs.size else float("nan"),
            "min": float(xs.min()) if xs.size else float("nan"),
            "max": float(xs.max()) if xs.size else float("nan")}


# --------------------------------------------------------------------------------------------
# Correlations


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # ties share their mean rank
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def correlation(sd: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """(Pearson, Spearman) over the points where both are finite (NaN under 3 points or when
    either is constant)."""
    sd, loss = np.asarray(sd, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(sd) & np.isfinite(loss)
    if ok.sum() < 3:
        return float("nan"), float("nan")
    a, b = sd[ok], loss[ok]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    pearson = float(np.corrcoef(a, b)[0, 1])
    spearman = float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])
    return pearson, spearman


def sd_at_snapshots(curve: RunCurve) -> np.ndarray:
    """The SD_k of the interval holding each snapshot's last item (NaN without a curve)."""
    if curve.sd is None or not curve.sd_interval:
        return np.full(len(curve.steps), np.nan)
    k = np.clip((curve.items_seen - 1) // curve.sd_interval, 0, len(curve.sd) - 1)
    return curve.sd[k]


def measure_index(curve: RunCurve) -> np.ndarray | None:
    """Per snapshot, the first measure checkpoint that has seen at least the snapshot's items (the
    same convention as ``sd_at_snapshots``); None without measures."""
    if curve.measure_items is None or not len(curve.measure_items):
        return None
    k = np.searchsorted(curve.measure_items, curve.items_seen, side="left")
    return np.clip(k, 0, len(curve.measure_items) - 1)


def measure_at_snapshots(curve: RunCurve, name: str, task: str | None = None) -> np.ndarray | None:
    """The measure over the overall test set (or one unseen task) at each snapshot."""
    k = measure_index(curve)
    if k is None:
        return None
    if task is None:
        return curve.measures[name][k] if name in curve.measures else None
    if name not in curve.measures_per_task or task not in curve.measure_tasks:
        return None
    return curve.measures_per_task[name][k, curve.measure_tasks.index(task)]


def measure_correlations(curve: RunCurve) -> dict[str, dict]:
    """Per measure: Pearson and Spearman of the measure at each snapshot against the loss on the
    overall test set, and the mean over unseen tasks of the per-task correlation of the per-task
    measure against the per-task loss."""
    out = {}
    for name in MEASURES:
        overall = measure_at_snapshots(curve, name)
        if overall is None and name not in curve.measures_per_task:
            continue
        p, s = correlation(overall, curve.loss) if overall is not None else (float("nan"), float("nan"))
        tp, ts = [], []
        for t in curve.measure_tasks:
            m = measure_at_snapshots(curve, name, t)
            if m is not None and t in curve.per_task:
                a, b = correlation(m, curve.per_task[t])
                tp.append(a)
                ts.append(b)
        out[name] = {"pearson": p, "spearman": s, "per_task_pearson": _mean(tp), "per_task_spearman": _mean(ts),
                     "tasks": int(sum(math.isfinite(x) for x in tp))}
    return out
