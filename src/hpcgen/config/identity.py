"""Ids and keys: the canonical JSON of config sections, and the one hash that names runs and nodes.

A run id hashes every section of a run's config but the scheduler's (``run_identity``); a stage
node's key hashes its stage, the sections it reads, its input fingerprint and its upstream keys
(``hpcgen.pipeline.graph``). Both are ``short_hash``, cut to the length of their kind. The lengths
never change: node keys name the directories of existing stores (``store/STAGE/KEY``) and run ids
are recorded in them, so other lengths would orphan every store made so far.

Sections enter as canonical JSON without ``resources`` (scheduler settings never change results),
local inputs (``InputPath``, ``ModelRef``) as ``content:<sha256>``, never as their absolute paths
(``hpcgen.pipeline.fingerprint``): a copied checkout keeps its ids and keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

#: hex digits of each kind of id (fixed for good: see the module docstring)
HEX_DIGITS = {"run": 10, "node": 16}

IDENTITY_EXCLUDED = ("name", "output_dir", "cluster")
#: the dump context of identities: local inputs by content (see ``hpcgen.config.schema._portable``)
PORTABLE = {"portable": True}


def short_hash(text: str, kind: Literal["run", "node"]) -> str:
    """The sha256 of ``text``, in hex, cut to the length of ``kind``: every id and key."""
    return hashlib.sha256(text.encode()).hexdigest()[: HEX_DIGITS[kind]]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def section_json(section: Any) -> str:
    """Canonical JSON of one config section (a model or a plain value), without ``resources``."""
    if hasattr(section, "model_dump"):
        fields = type(section).model_fields
        data = section.model_dump(mode="json", exclude={"resources"} if "resources" in fields else None,
                                  context=PORTABLE)
    else:
        data = section
    return canonical_json(data)


@dataclass(eq=False)
class Section:
    """One validated config section and, once asked for, its canonical JSON.

    Expansion makes one per distinct section and the runs that agree on it share it, so a
    10,000-run matrix validates and dumps each distinct section once.
    """

    value: Any

    @cached_property
    def json(self) -> str:
        return section_json(self.value)


def run_identity(sections: Mapping[str, Section]) -> str:
    """The id of a run with these sections (all of its config): what it computes, without the
    scheduler settings."""
    names = sorted(n for n in sections if n not in IDENTITY_EXCLUDED)
    text = "{" + ",".join(f'"{n}":{sections[n].json}' for n in names) + "}"
    return short_hash(text, "run")
