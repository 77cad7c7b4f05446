"""Where a result came from: hpcgen's version and commit, the experiment file, its data, models
and matrix. The report prints this at its top; every stage marker already records the version."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from hpcgen.version import __version__


@lru_cache(maxsize=1)
def commit() -> str | None:
    """The git commit of the hpcgen source in use ("+dirty" with uncommitted changes), or None
    when hpcgen is installed from a wheel."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _source(src: Any) -> str:
    path = getattr(src, "path", None)
    label = src.label() if hasattr(src, "label") else getattr(src, "format", "?")
    return f"{getattr(src, 'format', '?')} {label}" + (f" ({path})" if path else "")


def _model(cfg: Any) -> str:
    t = getattr(cfg, "train", None)
    if t is None or not hasattr(t, "architecture"):  # a pipeline without hpcgen's train stage
        return "?"
    if getattr(t, "model", None):
        return t.model
    return (f"{t.architecture} from scratch: {t.layers} layers, hidden {t.hidden}, {t.heads} heads, "
            f"{t.tokenizer} tokenizer" + (f" ({t.vocab_size})" if t.tokenizer == "bpe" else ""))


def describe(exp: Any) -> dict[str, Any]:
    """The provenance of an experiment (``hpcgen.config.Experiment``)."""
    cfg = exp.runs[0].config
    data = getattr(cfg, "data", None)
    embed = getattr(cfg, "embed", None)
    matrix = (yaml.safe_dump(exp.raw_matrix, sort_keys=False, width=100, default_flow_style=None).strip()
              if exp.raw_matrix else "")
    sources = getattr(data, "sources", None)
    return {
        "hpcgen_version": __version__,
        "commit": commit(),
        "experiment_file": str(Path(exp.file).resolve()),
        "overrides": list(exp.overrides),
        "data": [_source(s) for s in sources] if isinstance(sources, (list, tuple)) else [],
        "model": _model(cfg),
        "embedding_model": str(getattr(embed, "model", "")) or None,
        "matrix": matrix,
        "runs": len(exp.runs),
    }
