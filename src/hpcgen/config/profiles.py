"""Resource profiles: what each stage asks a given cluster for, in one file per cluster shape.

An experiment names a profile once (``cluster.profile: a800x8``) and moves to another cluster by
changing that line; a stage may name its own (``evaluate: {resources: {profile: cpu}}``). A
profile is a YAML file::

    description: 8x A800 80 GB per node
    defaults: {partition: cpu, cpus: 4, mem: 16G, time: "4:00:00"}   # every stage
    stages:
      train: {partition: gpu, nodes: 2, tasks_per_node: 8, gpus: 8}  # on top of defaults

A bare name is a file in ``jobs/profiles/``; anything with a ``/`` or a ``.yaml`` suffix is a path,
relative to the experiment file. Precedence, lowest first: the stage's built-in needs, the
profile, the ``cluster`` section, the stage section's ``resources``: what the experiment file says
outright always wins over the profile.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo

from hpcgen.config.base import Model, no_control
from hpcgen.config.resources import Resources, layered
from hpcgen.config.validation import suggest, validate
from hpcgen.config.yamlio import load as read_yaml
from hpcgen.errors import ConfigError


def jobs_dir() -> Path:
    """Where ``jobs/`` (DeepSpeed configs, profiles) lives: the source checkout, or the copy a
    wheel installs under ``<scheme data>/share/hpcgen/jobs``. ``HPCGEN_JOBS_DIR`` overrides both."""
    if os.environ.get("HPCGEN_JOBS_DIR"):
        return Path(os.environ["HPCGEN_JOBS_DIR"])
    checkout = Path(__file__).resolve().parents[3] / "jobs"
    if checkout.is_dir():
        return checkout
    return _installed_jobs() or Path(sys.prefix) / "share" / "hpcgen" / "jobs"


@lru_cache(maxsize=1)
def _installed_jobs() -> Path | None:
    # The install's own record says where the data files went (/usr/local/share on Debian's
    # Python, <venv>/share in a virtual environment, ...).
    try:
        files = metadata.distribution("hpcgen").files or []
    except metadata.PackageNotFoundError:
        return None
    marker = "share/hpcgen/jobs/"
    for f in files:
        text = f.as_posix()
        if marker in text:
            return Path(f.locate()).resolve().parents[len(text.split(marker, 1)[1].split("/")) - 1]
    return None


def bundled() -> list[str]:
    folder = jobs_dir() / "profiles"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


class Profile(Model):
    description: str = ""
    defaults: Resources = Field(default_factory=Resources, description="every stage")
    stages: dict[str, Resources] = Field(default_factory=dict, description="per stage, over defaults")

    def for_stage(self, stage: str, section: str | None = None) -> Resources:
        """The resources of ``stage``, whose entry may also be named by its ``section``."""
        entry = self.stages.get(stage)
        if entry is None and section:
            entry = self.stages.get(section)
        return layered(self.defaults, entry)


def chosen(own: Resources | None, cluster: Resources) -> str | None:
    """The profile file a stage takes its resources from: its own, else the cluster's."""
    return getattr(own, "profile", None) or getattr(cluster, "profile", None)


def resolve(ref: str, base_dir: str | None) -> Path:
    """The file a profile reference names; ValueError (with the choices) if there is none."""
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        if not path.is_file():
            raise ValueError(f"profile file {str(path)!r} not found (paths are relative to the experiment file)")
        return path.resolve()
    path = jobs_dir() / "profiles" / f"{ref}.yaml"
    if not path.is_file():
        names = bundled()
        hint = suggest(ref, names) or (f"bundled: {', '.join(names)}" if names else "no profiles are bundled")
        raise ValueError(f"no profile {ref!r} in {jobs_dir() / 'profiles'} ({hint}; or give a path to a file)")
    return path.resolve()


def load(path: str | Path, stages: list[str] | None = None, aliases: dict[str, str] | None = None) -> Profile:
    """A validated profile; errors name the profile file and line. ``aliases`` maps other names
    of a stage (its section's: ``eval``) to the stage (``evaluate``); entries are stored under
    the stage's name."""
    path = Path(path)
    st = path.stat()
    return _load(str(path), st.st_mtime_ns, st.st_size, tuple(stages) if stages else None,
                 tuple(sorted((aliases or {}).items())))


@lru_cache(maxsize=64)
def _load(path: str, _mtime: int, _size: int, stages: tuple[str, ...] | None,
          aliases: tuple[tuple[str, str], ...] = ()) -> Profile:
    doc = read_yaml(path)
    profile = validate(Profile, doc.data, doc.where)
    other = dict(aliases)
    entries: dict[str, Resources] = {}
    for name, entry in profile.stages.items():
        stage = other.get(name, name)
        file, line = doc.where(("stages", name))
        if stages is not None and stage not in stages:
            raise ConfigError(f"no stage {name!r} in this pipeline", file=file, line=line, key=f"stages.{name}",
                              fix=suggest(name, [*stages, *other]) or "remove it")
        if stage in entries:
            raise ConfigError(f"stage {stage!r} is given twice ({name!r} is another name for it)", file=file,
                              line=line, key=f"stages.{name}", fix="keep one entry")
        entries[stage] = entry
    return profile.model_copy(update={"stages": entries})


def profile_ref(value: str, info: ValidationInfo) -> str:
    """A resource profile named in a config: a name in jobs/profiles/ or a file; stored as the
    resolved file. The experiment's context gives the folder of relative paths and the pipeline's
    stages, which the profile's entries must name."""
    no_control(value)
    context = info.context or {}
    path = resolve(value, context.get("base_dir"))
    load(path, context.get("stages"), context.get("stage_aliases"))  # errors name the profile's line
    return str(path)


ProfileRef = Annotated[str, AfterValidator(profile_ref)]
