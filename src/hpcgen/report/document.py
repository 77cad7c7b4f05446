"""The report: Markdown and a self-contained HTML page (plots embedded), from the curves.

It speaks the language of the data-arrangement paper: runs are grouped into settings by their
matrix label ("RT", "NFT", "TMA-FFT" ...; seeds of one label are one setting with a spread),
the headline is each setting's mean test loss over the first ``early_fraction`` of the steps
against the baseline's (zero-shot generalization happens early), and each figure carries a
caption saying what it shows and, where given, what the paper found. Where Exact-Match was
scored (the instruction diversity study), each run and setting also gets its final Exact-Match on
unseen instructions apart from held-out examples of seen ones, per test source, and every
instruction's is written to exact_match_per_instruction.csv.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import h5py
import numpy as np

from hpcgen.report import plots
from hpcgen.report.curves import (
    MEASURE_NAMES,
    MEASURES,
    RunCurve,
    Setting,
    correlation,
    early_end,
    finite_or_none,
    group_settings,
    measure_correlations,
    sd_at_snapshots,
    seed_range,
    seed_stats,
    summary,
)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def _finite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


@dataclass
class Table:
    """Columns named for humans, rows of values (formatted when written)."""

    columns: list[str]
    rows: list[list]

    def markdown(self) -> list[str]:
        def cell(v) -> str:
            return _fmt(v).replace("|", "\\|")

        return (["| " + " | ".join(cell(c) for c in self.columns) + " |",
                 "|" + "".join("---:|" if self._numeric(i) else "---|" for i in range(len(self.columns)))]
                + ["| " + " | ".join(cell(v) for v in r) + " |" for r in self.rows])

    def _numeric(self, i: int) -> bool:
        vals = [r[i] for r in self.rows if r[i] is not None]
        return bool(vals) and all(_num(v) for v in vals)

    def html(self) -> str:
        num = [self._numeric(i) for i in range(len(self.columns))]
        head = "".join(f"<th class='num'>{html.escape(c)}</th>" if n else f"<th>{html.escape(c)}</th>"
                       for c, n in zip(self.columns, num))
        body = "".join("<tr>" + "".join(
            f"<td class='num'>{html.escape(_fmt(v))}</td>" if _num(v) or (n and v is None)
            else f"<td>{html.escape(_fmt(v))}</td>" for v, n in zip(r, num)) + "</tr>" for r in self.rows)
        return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "x"


# --------------------------------------------------------------------------------------------
# The baseline and the early window


def find_baseline(settings: list[Setting], baseline: str | None) -> list[Setting]:
    """The settings labelled ``baseline`` (case-insensitively where no label matches exactly);
    several when a non-seed axis splits the label (one per context)."""
    if not baseline:
        return []
    exact = [s for s in settings if (s.label or s.name) == baseline]
    return exact or [s for s in settings if (s.label or s.name).lower() == baseline.lower()]


def baseline_of(s: Setting, baselines: list[Setting]) -> Setting | None:
    same = [b for b in baselines if b.context == s.context]
    if same:
        return same[0]
    return baselines[0] if len(baselines) == 1 else None


def _against(value: float, stats: dict) -> str:
    if not _finite(value) or not _finite(stats["min"]):
        return "—"
    if value < stats["min"]:
        return "lower than every seed"
    if value > stats["max"]:
        return "higher than every seed"
    return "within the seed range"


# --------------------------------------------------------------------------------------------
# Figures


def default_figures() -> list[dict]:
    """Every kind: the ones marked ``auto="data"`` are drawn only when their data is there."""
    return [{"kind": k, "auto": v.auto} for k, v in plots.KINDS.items()]


class DrawnFigure(TypedDict):
    kind: str
    stem: str
    title: str
    caption: str
    finding: str | None
    paths: list[Path]


class SkippedFigure(TypedDict):
    kind: str
    title: str
    reason: str
    noted: bool  # said in the report's notes (a figure with auto="data" is left out silently)


def _draw_figures(specs: list[dict], view: plots.View, folder: Path,
                  early_fraction: float) -> tuple[list[DrawnFigure], list[SkippedFigure]]:
    drawn: list[DrawnFigure] = []
    skipped: list[SkippedFigure] = []
    stems: set[str] = set()
    base = view.baseline[0].name if view.baseline else None
    for spec in specs:
        kind = plots.KINDS[spec["kind"]]
        task = spec.get("task")
        title = spec.get("title") or (f"{kind.title}: {task}" if task else kind.title)
        stem = kind.stem + (f"_{_slug(task)}" if task else "")
        n = 2
        while stem in stems:
            stem, n = f"{kind.stem}{'_' + _slug(task) if task else ''}_{n}", n + 1
        finding = spec["finding"] if "finding" in spec else kind.finding
        try:
            why = kind.default_skip(view) if spec.get("auto") == "data" and kind.default_skip else None
            if why:
                raise plots.NoData(why)
            options = kind.options(view, spec) if kind.options is not None else {}
            caption = kind.caption.format(
                baseline=f"the baseline {base} is black and dashed;" if base else "",
                early=_pct(early_fraction), **options).replace("  ", " ")
            if task:
                caption += f" Unseen task: {task}."
            if finding:
                caption += f" Paper: {finding}"
            paths = kind.draw(view, folder, stem, title, task, **options)
        except plots.NoData as e:
            skipped.append({"kind": spec["kind"], "title": title, "reason": str(e),
                            "noted": spec.get("auto", True) is True})
            continue
        stems.add(stem)
        drawn.append({"kind": spec["kind"], "stem": stem, "title": title, "caption": caption, "finding": finding,
                      "paths": paths})
    return drawn, skipped


# --------------------------------------------------------------------------------------------
# Provenance


def provenance_items(p: dict | None, n_curves: int) -> tuple[list[tuple[str, str | list[str]]], str | None]:
    """(label, value) lines of the provenance block, and the matrix text (or None)."""
    items: list[tuple[str, str | list[str]]] = []
    p = p if isinstance(p, dict) else {}
    if p.get("hpcgen_version") or p.get("commit"):
        items.append(("hpcgen", f"{p.get('hpcgen_version') or '?'}"
                      + (f" (commit {p['commit']})" if p.get("commit") else " (commit unknown)")))
    if p.get("experiment_file"):
        items.append(("experiment file", str(p["experiment_file"])))
    if "overrides" in p:
        items.append(("overrides", [str(o) for o in p["overrides"] or []] or "none"))
    if p.get("data"):
        items.append(("data", [str(d) for d in p["data"]]))
    if p.get("model"):
        items.append(("model", str(p["model"])))
    if "embedding_model" in p:
        items.append(("embedding model", str(p["embedding_model"]) if p["embedding_model"] else "none"))
    total = p.get("runs")
    items.append(("runs", f"{n_curves} with evaluated snapshots" + (f" of {total}" if total is not None else "")))
    matrix = p.get("matrix")
    return items, (str(matrix) if matrix else None)


# --------------------------------------------------------------------------------------------
# Exact-Match on unseen and seen instructions


def exact_match_row(c: RunCurve) -> dict:
    """A run's final Exact-Match (the last snapshot where any record was scored) on unseen and on
    seen instructions, overall and per test source; null where not computed (no /exact_match, no
    record of the group, or none scored)."""
    tasks = c.em_per_task
    return {
        "final_exact_match_unseen": finite_or_none(c.final_em("unseen")),
        "final_exact_match_seen": finite_or_none(c.final_em("seen")),
        "final_exact_match_by_source": {src: {g: finite_or_none(c.final_em(g, src)) for g in ("unseen", "seen")}
                                        for src in c.em_by_source},
        "final_exact_match_step": c.em_final_step,
        "unseen_test_instructions": len({t.task for t in tasks if not t.seen}) if c.em_final is not None else None,
        "seen_test_instructions": len({t.task for t in tasks if t.seen}) if c.em_final is not None else None,
    }


def shared_values(s: Setting) -> dict:
    """The non-seed matrix values all runs of a setting share (what the setting is, as numbers)."""
    first = s.runs[0].values
    return {k: v for k, v in first.items()
            if not plots.is_seed_axis(k) and all(c.values.get(k, object()) == v for c in s.runs)}


def exact_match_setting(s: Setting) -> dict:
    """Per setting: the mean, lowest and highest seed of the final Exact-Match on unseen and on seen
    instructions, overall and per test source (see ``seed_range``)."""
    sources = list(dict.fromkeys(src for c in s.runs for src in c.em_by_source))
    return {
        "final_exact_match_unseen": seed_range([c.final_em("unseen") for c in s.runs]),
        "final_exact_match_seen": seed_range([c.final_em("seen") for c in s.runs]),
        "final_exact_match_by_source": {src: {g: seed_range([c.final_em(g, src) for c in s.runs])
                                              for g in ("unseen", "seen")} for src in sources},
    }


def _range_text(r: dict, seeds: int) -> str | None:
    if seeds < 2 or r["min"] is None:
        return None
    return f"{r['min']:.4f} – {r['max']:.4f}"


def _exact_match_tables(settings: list[Setting], stats: dict) -> list[tuple[str, Table]]:
    """Per setting with Exact-Match: final unseen and seen EM, mean over seeds and their range; and,
    where there are several test sources, the unseen EM of each."""
    scored = [s for s in settings if any(c.em_final is not None for c in s.runs)]
    if not scored:
        return []
    rows = []
    for s in scored:
        u, v = stats[s.name]["final_exact_match_unseen"], stats[s.name]["final_exact_match_seen"]
        gap = v["mean"] - u["mean"] if u["mean"] is not None and v["mean"] is not None else None
        rows.append([s.legend, s.seeds, u["mean"], _range_text(u, s.seeds), v["mean"], _range_text(v, s.seeds), gap])
    out = [("Exact-Match of the greedy answers at the last scored snapshot, on the unseen instructions (no "
            "training records) and on held-out examples of the seen instructions: the mean over seeds and the "
            "lowest – highest seed. Gap: seen minus unseen.",
            Table(["setting", "seeds", "unseen EM", "unseen EM, seed range", "seen EM", "seen EM, seed range",
                   "gap (seen − unseen)"], rows))]
    sources = plots.unseen_sources([c for s in scored for c in s.runs])
    if len(sources) > 1:
        by_source = []
        for s in scored:
            per = stats[s.name]["final_exact_match_by_source"]
            by_source.append([s.legend, s.seeds, *(per[src]["unseen"]["mean"] if src in per else None
                                                   for src in sources)])
        out.append(("Exact-Match on the unseen instructions of each test source at the last scored snapshot, mean "
                    "over seeds.", Table(["setting", "seeds", *sources], by_source)))
    return out


def _write_task_scores(curves: list[RunCurve], setting_of: dict[str, Setting], folder: Path) -> None:
    """exact_match_per_instruction.csv: per run, test source and instruction, its final Exact-Match
    over its scored records (``records`` test records, ``nan_records`` of them not scored)."""
    with open(folder / "exact_match_per_instruction.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "label", "source", "instruction", "seen", "records", "final_exact_match", "run_id",
                    "setting", "nan_records", "step"])
        for c in curves:
            for t in c.em_per_task:
                w.writerow([c.name, c.label or "", t.source, t.task, t.seen, t.records, t.exact_match, c.run_id,
                            setting_of[c.run_id].name, t.nan_records, c.em_final_step])


# --------------------------------------------------------------------------------------------
# The report


def write_report(curves: list[RunCurve], folder: Path, title: str, at_steps: list[int] | None = None, *,
                 figures: list[dict] | None = None, baseline: str | None = "RT", early_fraction: float = 0.3,
                 provenance: dict | None = None) -> dict:
    """Every output of the aggregate stage into ``folder`` (which exists); returns the summary.

    ``figures``: dicts with ``kind`` and optional ``title``, ``finding`` (absent: the kind's own;
    None: none), ``task``, ``axis`` and ``y_axis`` (matrix key paths; absent: the axes the runs
    vary); None draws the default set."""
    if not curves:
        raise ValueError("no run has evaluated snapshots yet")
    notes: list[str] = []
    settings = group_settings(curves)
    last = int(max(c.steps.max() for c in curves))
    at_steps = at_steps or sorted({max(1, last // 4), max(1, last // 2), last})
    until = early_end(curves, early_fraction)
    horizon = max(max(c.planned_steps or 0 for c in curves), last)
    pct = _pct(early_fraction)

    # per run, grouped by setting
    rows: list[dict] = []
    setting_of: dict[str, Setting] = {}
    for s in settings:
        for c in s.runs:
            setting_of[c.run_id] = s
            row = {"setting": s.name, "run_label": s.run_name(c), "seeds": s.seeds,
                   **summary(c, at_steps, early_fraction, until)}
            row["pearson_sd_loss"], row["spearman_sd_loss"] = correlation(sd_at_snapshots(c), c.loss)
            for metric, values in c.metrics.items():
                row[f"final_{metric}"] = float(values[-1])
            row.setdefault("values", c.values)
            row.update(exact_match_row(c))
            rows.append(row)
    by_id = {r["run_id"]: r for r in rows}

    # settings and the baseline
    stats = {s.name: {"setting": s.name, "label": s.label, "legend": s.legend, "seeds": s.seeds,
                      "runs": [c.run_id for c in s.runs], "values": shared_values(s),
                      "early_means": [by_id[c.run_id]["early_mean"] for c in s.runs],
                      **seed_stats([by_id[c.run_id]["early_mean"] for c in s.runs]),
                      **exact_match_setting(s)} for s in settings}
    baselines = find_baseline(settings, baseline)
    result: dict = {"title": title, "runs": rows, "settings": list(stats.values()), "at_steps": at_steps,
                    "early": {"fraction": early_fraction, "until_step": until, "horizon": horizon}}
    if baseline is None:
        notes.append("No baseline is set (report.baseline), so no setting is compared with one.")
    elif not baselines:
        names = ", ".join(s.name for s in settings)
        notes.append(f"No setting is labelled {baseline!r} (report.baseline; settings here: {names}): "
                     "the comparison with a baseline is left out.")
    if baselines:
        def info(b: Setting) -> dict:
            st = stats[b.name]
            return {"label": b.label or b.name, "setting": b.name, "seeds": b.seeds, "early_means": st["early_means"],
                    "early_mean": st["early_mean"], "std": st["std"], "spread": st["spread"]}

        result["baseline"] = info(baselines[0])
        if len(baselines) > 1:
            result["baselines"] = [info(b) for b in baselines]
        vs = {}
        for s in settings:
            b = baseline_of(s, baselines)
            if b is None:
                notes.append(f"{s.name}: no baseline {baseline!r} with the same axes to compare with.")
                continue
            st, bst = stats[s.name], stats[b.name]
            vs[s.name] = {"label": s.label, "early_mean": st["early_mean"],
                          "delta": st["early_mean"] - bst["early_mean"], "seeds": s.seeds,
                          "early_means": st["early_means"], "std": st["std"], "baseline": b.name,
                          "against_baseline_seeds": "—" if s is b else _against(st["early_mean"], bst)}
            for c in s.runs:
                by_id[c.run_id]["delta_early"] = by_id[c.run_id]["early_mean"] - bst["early_mean"]
        result["early_vs_baseline"] = vs

    # similarity measures against the loss
    corr = {c.run_id: measure_correlations(c) for c in curves}
    corr = {k: v for k, v in corr.items() if v}
    result["measure_correlations"] = {
        rid: {"run": next(c.name for c in curves if c.run_id == rid), "setting": setting_of[rid].name,
              "measures": v} for rid, v in corr.items()}

    # figures
    view = plots.View(settings=settings, baseline=baselines, early_until=until, early_fraction=early_fraction)
    specs = default_figures() if figures is None else [dict(f) for f in figures]
    drawn, skipped = _draw_figures(specs, view, folder, early_fraction)
    for skip in skipped:
        if skip["noted"]:
            notes.append(f"Figure “{skip['title']}” ({skip['kind']}) is not drawn: {skip['reason']}.")
    result["figures"] = {f["stem"]: {"kind": f["kind"], "title": f["title"], "caption": f["caption"],
                                     "files": [p.name for p in f["paths"]]} for f in drawn}
    result["skipped_figures"] = [{k: s[k] for k in ("kind", "title", "reason")} for s in skipped]
    result["notes"] = notes
    if provenance is not None:
        result["provenance"] = provenance

    if any(c.seen_records for c in curves):
        notes.append("The test sets hold held-out examples of seen instructions: the loss and the generation "
                     "metrics average over every test record; the Exact-Match table and the accuracy figures "
                     "keep unseen and seen instructions apart.")

    _write_curves(curves, setting_of, folder)
    if any(c.em_final is not None for c in curves):
        _write_task_scores(curves, setting_of, folder)

    # tables
    run_table = _run_table(rows, at_steps, baseline if baselines else None, pct, curves)
    head_table = _headline_table(settings, stats, result.get("early_vs_baseline"), baseline, pct)
    corr_tables = _correlation_tables(curves, setting_of, corr)
    em_tables = _exact_match_tables(settings, stats)
    prov, matrix = provenance_items(provenance, len(curves))
    headline_text = _headline_text(result, until, horizon, pct)

    _write_markdown(folder, title, prov, matrix, provenance, notes, headline_text, head_table, em_tables, drawn,
                    corr_tables, run_table, curves, setting_of)
    _write_html(folder, title, prov, matrix, provenance, notes, headline_text, head_table, em_tables, drawn,
                corr_tables, run_table, curves, setting_of)
    (folder / "summary.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def _write_curves(curves: list[RunCurve], setting_of: dict[str, Setting], folder: Path) -> None:
    """curves.csv (long format, one row per run and snapshot) and curves.h5 (a group per run)."""
    with open(folder / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["setting", "label", "run", "run_id", "step", "items_seen", "loss", "generalist_loss",
                    "nan_records", "exact_match_unseen", "exact_match_seen"])
        for c in curves:
            s = setting_of[c.run_id]
            for i, step in enumerate(c.steps):
                em = ["" if v is None else v[i] for v in (c.em_unseen, c.em_seen)]
                w.writerow([s.name, c.label or "", c.name, c.run_id, int(step), int(c.items_seen[i]), c.loss[i],
                            c.generalist[i], int(c.n_nan[i]), *em])
    with h5py.File(folder / "curves.h5", "w") as f:
        for c in curves:
            g = f.create_group(c.run_id)
            g.attrs["name"] = c.name
            g.attrs["setting"] = setting_of[c.run_id].name
            g.attrs["label"] = c.label or ""
            g.attrs["values"] = json.dumps(c.values, default=str)
            for key in ("steps", "items_seen", "loss", "generalist", "n_nan"):
                g.create_dataset(key, data=getattr(c, key))
            t = g.create_group("per_task")
            for task, values in c.per_task.items():
                t.create_dataset(task.replace("/", "_"), data=values)
            if c.sd is not None:
                g.create_dataset("sd_curve", data=c.sd)
            for key in ("em_unseen", "em_seen"):
                if getattr(c, key) is not None:
                    g.create_dataset(key, data=getattr(c, key))
            if c.em_per_instruction is not None:  # every instruction at every snapshot
                keys, values = c.em_per_instruction
                e = g.create_group("em_per_instruction")
                e.create_dataset("source", data=[k[0] for k in keys], dtype=h5py.string_dtype())
                e.create_dataset("instruction", data=[k[1] for k in keys], dtype=h5py.string_dtype())
                e.create_dataset("seen", data=np.asarray([k[2] for k in keys], dtype=bool))
                e.create_dataset("exact_match", data=values)


def _run_table(rows: list[dict], at_steps: list[int], baseline: str | None, pct: str, curves) -> Table:
    cols = [("run_label", "setting"), ("run", "run"), ("snapshots", "snapshots"), ("nan_points", "NaN points"),
            ("nan_records", "NaN records"), ("records_truncated", "records truncated"),
            ("records_too_long", "records too long")]
    cols += [(f"loss@{s}", f"loss at step {s}") for s in at_steps]
    cols += [("auc", "AUC (mean loss over steps)"), ("min_loss", "min loss"), ("min_step", "step of min loss"),
             ("early_mean", f"mean loss, first {pct} of steps")]
    if baseline:
        cols.append(("delta_early", f"Δ vs {baseline} (first {pct})"))
    cols += [("pearson_sd_loss", "r(SD_k, loss)"), ("spearman_sd_loss", "ρ(SD_k, loss)")]
    metrics = list(dict.fromkeys(m for c in curves for m in c.metrics))
    cols += [(f"final_{m}", f"final {plots.METRIC_NAMES.get(m, m)}") for m in metrics]
    return Table([h for _, h in cols], [[r.get(k) for k, _ in cols] for r in rows])


def _headline_table(settings, stats, vs, baseline, pct) -> Table:
    """Per setting: its early mean over seeds and their spread; with a baseline, Δ against it."""
    early = f"mean loss, first {pct} of steps"
    if vs is None:
        return Table(["setting", "seeds", early, "seed std", "seed spread (max − min)"],
                     [[s.legend, s.seeds, stats[s.name]["early_mean"], stats[s.name]["std"] if s.seeds > 1 else None,
                       stats[s.name]["spread"] if s.seeds > 1 else None] for s in settings])
    cols = ["setting", "seeds", early, f"Δ vs {baseline} (first {pct})", "seed std",
            "seed spread (max − min)", f"against {baseline}'s seeds"]
    rows = []
    for s in settings:
        if s.name not in vs:
            continue
        st, v = stats[s.name], vs[s.name]
        rows.append([s.legend, s.seeds, v["early_mean"], v["delta"], st["std"] if s.seeds > 1 else None,
                     st["spread"] if s.seeds > 1 else None, v["against_baseline_seeds"]])
    return Table(cols, rows)


def _headline_text(result: dict, until: float, horizon: int, pct: str) -> str:
    window = f"the snapshots at steps ≤ {until:g} (the first {pct} of {horizon} training steps)"
    b = result.get("baseline")
    if not b:
        return f"Mean test loss on the unseen tasks over {window}."
    means = ", ".join(_fmt(x) for x in b["early_means"])
    spread = (f"; std {_fmt(b['std'])}, spread (max − min) {_fmt(b['spread'])}" if b["seeds"] > 1 else
              " (one seed: no spread)")
    return (f"Mean test loss on the unseen tasks over {window}, each setting minus the baseline {b['setting']} "
            f"(the mean over its {b['seeds']} seed{'s' if b['seeds'] != 1 else ''}). "
            f"{b['setting']}'s seeds: {means}{spread}. "
            "Negative Δ: lower loss early, i.e. earlier zero-shot generalization.")


def _correlation_tables(curves, setting_of, corr) -> list[tuple[str, Table]]:
    if not corr:
        return []
    runs = [c for c in curves if c.run_id in corr]
    names = [setting_of[c.run_id].run_name(c) for c in runs]
    present = [m for m in MEASURES if any(m in corr[c.run_id] for c in runs)]

    def cell(c, m, a, b):
        v = corr[c.run_id].get(m)
        if v is None or not (_finite(v[a]) or _finite(v[b])):
            return None
        return f"{_fmt(v[a])} ({_fmt(v[b])})"

    overall = Table(["measure", *names], [[MEASURE_NAMES[m], *(cell(c, m, "pearson", "spearman") for c in runs)]
                                          for m in present])
    per_task = Table(["measure", *names], [[MEASURE_NAMES[m], *(cell(c, m, "per_task_pearson", "per_task_spearman")
                                                                for c in runs)] for m in present])
    out = [("Pearson r (Spearman ρ) between each measure at every snapshot and the averaged test loss, per run. "
            "Positive: the loss falls as the distance of the data seen to the test set falls.", overall)]
    if any(v.get("tasks") for c in runs for v in corr[c.run_id].values()):
        out.append(("Mean over the unseen tasks of the per-task Pearson r (Spearman ρ) between the task's measure "
                    "and the task's loss, per run.", per_task))
    return out


EM_SECTION = "## Exact-Match on unseen and seen instructions"


def _run_line(c: RunCurve, s: Setting) -> tuple[str, str, str]:
    return c.run_id, s.run_name(c), json.dumps(c.values, default=str)


def _write_markdown(folder, title, prov, matrix, provenance, notes, headline, head_table, em_tables, drawn,
                    corr_tables, run_table, curves, setting_of) -> None:
    md = [f"# {title}", "", "## Provenance", ""]
    if provenance is None:
        md += ["Provenance: not recorded (these outputs predate it).", ""]
    for label, value in prov:
        if isinstance(value, list):
            md.append(f"- **{label}**:")
            md += [f"  - `{v}`" for v in value]
        else:
            md.append(f"- **{label}**: {value}")
    if matrix:
        md += ["", "Matrix:", "", "```yaml", matrix, "```"]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md += ["", "## Headline: early test loss", "", headline, ""]
    if head_table is not None:
        md += head_table.markdown()
    if em_tables:
        md += ["", EM_SECTION, ""]
        for text, table in em_tables:
            md += [text, ""] + table.markdown() + [""]
    md += ["", "## Figures", ""]
    for f in drawn:
        md += [f"### {f['title']}", "", f"![{f['title']}]({f['paths'][0].name})", "", f"*{f['caption']}*", ""]
    if corr_tables:
        md += ["## Similarity measures against loss", ""]
        for text, table in corr_tables:
            md += [text, ""] + table.markdown() + [""]
    md += ["## Runs", "", "Loss = mean answer-token cross-entropy on the unseen test tasks.", ""]
    md += run_table.markdown()
    md += ["", "## Run list", ""]
    for c in curves:
        rid, name, values = _run_line(c, setting_of[c.run_id])
        md.append(f"- `{rid}` **{name}** — {c.name}: {values}")
    (folder / "report.md").write_text("\n".join(md) + "\n")


CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;max-width:1150px;"
    "margin:2em auto;padding:0 1.2em;color:#1f2328;line-height:1.5;font-size:15px}"
    "h1{font-size:1.8em;margin:0 0 .4em}h2{font-size:1.3em;border-bottom:1px solid #e5e7eb;padding-bottom:.25em;"
    "margin-top:2.2em}h3{font-size:1.05em;margin:1.6em 0 .4em}"
    "table{border-collapse:collapse;font-size:13px;margin:.6em 0 1.2em}"
    "th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;vertical-align:top}"
    "th{background:#f6f8fa;font-weight:600;text-align:left}td.num,th.num{text-align:right;"
    "font-variant-numeric:tabular-nums;white-space:nowrap}.wide{overflow-x:auto}"
    "figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eef0f2;border-radius:4px}"
    "figcaption{color:#6a737d;font-size:13.5px;margin-top:.5em;max-width:900px}"
    "dl.prov{display:grid;grid-template-columns:11em 1fr;gap:.2em 1em;margin:.5em 0}dl.prov dt{font-weight:600;"
    "color:#444}dl.prov dd{margin:0}dl.prov ul{margin:0;padding-left:1.1em}"
    "pre{background:#f6f8fa;padding:.8em 1em;border-radius:4px;overflow:auto;font-size:12.5px}"
    "code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}"
    ".notes{background:#fff8e6;border-left:3px solid #e3b341;padding:.5em 1em;color:#5c4813}"
    ".notes ul{margin:.2em 0;padding-left:1.2em}.muted{color:#6a737d}"
    ".headline{font-size:14.5px}ul.runs{font-size:13.5px}"
)


def _write_html(folder, title, prov, matrix, provenance, notes, headline, head_table, em_tables, drawn,
                corr_tables, run_table, curves, setting_of) -> None:
    e = html.escape
    parts = [f"<h1>{e(title)}</h1>", "<h2>Provenance</h2>"]
    if provenance is None:
        parts.append("<p class='muted'>Provenance: not recorded (these outputs predate it).</p>")
    items = []
    for label, value in prov:
        shown = ("<ul>" + "".join(f"<li><code>{e(v)}</code></li>" for v in value) + "</ul>"
                 if isinstance(value, list) else e(value))
        items.append(f"<dt>{e(label)}</dt><dd>{shown}</dd>")
    parts.append("<dl class='prov'>" + "".join(items) + "</dl>")
    if matrix:
        parts.append(f"<p class='muted'>Matrix:</p><pre><code>{e(matrix)}</code></pre>")
    if notes:
        parts.append("<div class='notes'><strong>Notes</strong><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes)
                     + "</ul></div>")
    parts += ["<h2>Headline: early test loss</h2>", f"<p class='headline'>{e(headline)}</p>"]
    if head_table is not None:
        parts.append(head_table.html())
    if em_tables:
        parts.append(f"<h2>{e(EM_SECTION[3:])}</h2>")
        for text, table in em_tables:
            parts += [f"<p class='muted'>{e(text)}</p>", table.html()]
    parts.append("<h2>Figures</h2>")
    for f in drawn:
        data = base64.b64encode(f["paths"][0].read_bytes()).decode()
        parts.append(f"<figure><h3>{e(f['title'])}</h3><img alt=\"{e(f['title'])}\" "
                     f"src=\"data:image/png;base64,{data}\"><figcaption>{e(f['caption'])}</figcaption></figure>")
    if corr_tables:
        parts.append("<h2>Similarity measures against loss</h2>")
        for text, table in corr_tables:
            parts += [f"<p class='muted'>{e(text)}</p>", table.html()]
    parts += ["<h2>Runs</h2>", "<p class='muted'>Loss = mean answer-token cross-entropy on the unseen test tasks."
              "</p>", run_table.html(), "<h2>Run list</h2>", "<ul class='runs'>"]
    for c in curves:
        rid, name, values = _run_line(c, setting_of[c.run_id])
        parts.append(f"<li><code>{e(rid)}</code> <strong>{e(name)}</strong> — {e(c.name)}: "
                     f"<span class='muted'>{e(values)}</span></li>")
    parts.append("</ul>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    (folder / "report.html").write_text(page)
