"""DeepSpeed configs: a preset name from ``jobs/deepspeed/`` or a path, plus the experiment's
overrides. Read at ``plan`` time (cheaply: no DeepSpeed import), so that a misspelt preset or a
ZeRO stage that does not exist is refused before anything is queued; DeepSpeed validates the
rest of the config itself when training starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcgen.config.profiles import jobs_dir
from hpcgen.errors import ConfigError

ZERO_STAGES = (0, 1, 2, 3)


def presets() -> list[str]:
    return sorted(p.stem for p in (jobs_dir() / "deepspeed").glob("*.json"))


def preset_path(name: str) -> Path:
    """``zero2`` -> jobs/deepspeed/zero2.json; anything with a suffix is a path."""
    path = Path(name).expanduser()
    return path if path.suffix else jobs_dir() / "deepspeed" / f"{name}.json"


def load_deepspeed(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset (or file) with ``overrides`` merged one level deep; ConfigError on a missing or
    malformed file and on a ZeRO stage DeepSpeed does not have."""
    path = preset_path(name)
    fix = f"use one of {', '.join(presets())}, or a path to a DeepSpeed JSON config"
    try:
        text = path.read_text()
    except FileNotFoundError:
        what = f"no DeepSpeed preset {name!r} ({path} does not exist)" if not Path(name).suffix else \
            f"DeepSpeed config {str(path)!r} does not exist"
        raise ConfigError(what, key="train.deepspeed", fix=fix) from None
    except OSError as exc:
        raise ConfigError(f"cannot read DeepSpeed config {str(path)!r} ({exc.strerror})", key="train.deepspeed",
                          fix=fix) from None
    try:
        ds = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})",
                          key="train.deepspeed", fix="fix the file") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"DeepSpeed config {str(path)!r} is not a JSON object", key="train.deepspeed",
                          fix="a DeepSpeed config is a mapping of settings")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(ds.get(key), dict):
            ds[key] = {**ds[key], **value}
        else:
            ds[key] = value
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError("zero_optimization must be a mapping", key="train.deepspeed_overrides",
                          fix="write it as {stage: N, ...}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        source = "train.deepspeed_overrides" if "zero_optimization" in overrides else "train.deepspeed"
        raise ConfigError(f"ZeRO stage {stage!r} does not exist (in {path.name} with the overrides)", key=source,
                          fix="use stage 0, 1, 2 or 3")
    return ds
