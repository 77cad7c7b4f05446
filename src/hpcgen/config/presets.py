"""Experiment-wide presets: ``preset: paper`` at the top of an experiment file.

A preset sets defaults in several sections at once, beneath everything the file sets: a key the
file gives wins, and a preset's key wins over a section's own preset (``train.preset: demo``), so
``preset: paper`` with the demo model trains the demo model the authors' way.
"""

from __future__ import annotations

from typing import Any

from hpcgen.errors import ConfigError

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # What the authors of the data-arrangement paper used where it differs from hpcgen's defaults
    # (see the README's "Fidelity" section): their training script's warm-up, schedule floor,
    # AdamW epsilon and maximum length; no decontamination; their "\nAssistant: " template.
    # TMA, eq. 13's scaled WSD and the crossing-round budget are already the defaults.
    "paper": {
        "data": {"allow_contamination": True, "template": "<s>User: {prompt}\nAssistant: {answer}</s>"},
        "train": {"warmup_steps": 0, "min_lr_ratio": 0.1, "adam_eps": 1e-5, "max_length": 2048},
    },
}


def apply(data: dict[str, Any], name: Any, where: tuple[str | None, int | None]) -> dict[str, Any]:
    """``data`` with the preset's values beneath its own."""
    file, line = where
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", file=file, line=line, key="preset",
                          fix="valid presets: " + ", ".join(PRESETS))
    out = dict(data)
    for section, values in PRESETS[name].items():
        own = out.get(section)
        if own is None:
            own = {}
        if not isinstance(own, dict):
            continue  # the section's own check reports it, with its line
        out[section] = {**values, **own}
    return out
