"""The experiment file's schema.

The top level is fixed (``name``, ``output_dir``, ``cluster``, ``matrix``); every other section
belongs to a stage, which brings its own pydantic model (see ``hpcgen.pipeline.stage``). The
schema is assembled from the pipeline's stages, so adding a stage adds its section.

Its building blocks live in modules of their own and are re-exported here, where stages and
sources import them from: the ``Model`` base and value types (``hpcgen.config.base``),
``Resources`` and their layering (``hpcgen.config.resources``), resource profiles
(``hpcgen.config.profiles``), walking the schema and validation (``hpcgen.config.validation``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer, SerializationInfo, ValidationInfo, create_model

from hpcgen.config.base import Model, SafeStr, Slug, no_control
from hpcgen.config.profiles import ProfileRef
from hpcgen.config.resources import Resources, layered, signal_delay
from hpcgen.config.validation import STRAY_ERRORS, check_path, child_schema, suggest, valid_keys, validate
from hpcgen.pipeline.fingerprint import portable

__all__ = [
    # defined here
    "InputPath", "ModelRef", "StageResources", "Container", "Cluster", "StageConfig", "RESERVED",
    "experiment_model",
    # re-exported
    "Model", "SafeStr", "ProfileRef", "Resources", "layered", "signal_delay", "STRAY_ERRORS", "check_path",
    "child_schema", "suggest", "valid_keys", "validate",
]

# --------------------------------------------------------------------------------------------
# Input paths


def _input_path(value: str, info: ValidationInfo) -> str:
    """An input file or directory: relative paths are relative to the experiment file."""
    no_control(value)
    base = (info.context or {}).get("base_dir")
    if base is None or value.startswith(("/", "hf://")) or "://" in value:
        return value
    path = Path(value).expanduser()  # "~/data" is the user's, not a folder named "~"
    return str(path if path.is_absolute() else (Path(base) / path).resolve())


def _portable(value: str, info: SerializationInfo) -> str:
    """In keys and run ids (dumps with ``context={"portable": True}``) a local input is its
    content, ``content:<sha256>``, never its absolute path: a copied checkout keeps its keys."""
    if (info.context or {}).get("portable"):
        return portable(value)
    return value


InputPath = Annotated[str, AfterValidator(_input_path), PlainSerializer(_portable)]


def _model_ref(value: str, info: ValidationInfo) -> str:
    """A model by hub name or by directory. A directory is named like every input path: relative
    to the file that names it (``./models/llama`` or ``models/llama`` when that exists there),
    absolute, or ``~/...``; anything else is a hub name, kept as written."""
    no_control(value)
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if base is None:
        return value
    local = Path(base) / path
    if value.startswith(("./", "../")) or local.exists():
        return str(local.resolve())
    return value


ModelRef = Annotated[str, AfterValidator(_model_ref), PlainSerializer(_portable)]


# --------------------------------------------------------------------------------------------
# The sections


class StageResources(Resources):
    profile: ProfileRef | None = Field(
        default=None, description="a profile in jobs/profiles/ (or a file) for this stage instead of cluster.profile")


class Container(Model):
    """An Apptainer image every job's Python runs in."""

    image: InputPath = Field(description="a .sif file; relative to the experiment file")
    bind: list[SafeStr] = Field(default_factory=list)
    env: dict[SafeStr, SafeStr] = Field(default_factory=dict)
    gpu: bool | None = Field(default=None, description="pass --nv; default: for the jobs of stages with gpus > 0")


class Cluster(Resources):
    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    max_requeues: int = Field(default=3, ge=0, description="requeues after preemption or time-out")
    max_array_size: int | None = Field(
        default=None, ge=1, description="largest array to submit (default: the cluster's MaxArraySize - 1)"
    )
    container: Container | None = None
    profile: ProfileRef | None = Field(
        default=None, description="resource profile: a name in jobs/profiles/ (a800x8, h100x8, cpu) or a YAML file")


class StageConfig(Model):
    """Base of every stage section. ``resources`` never enters a stage's key."""

    resources: StageResources = Field(default_factory=StageResources)


RESERVED = ("name", "output_dir", "cluster", "matrix", "include", "preset")


def experiment_model(sections: dict[str, type[StageConfig]]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "name": (Slug, ...),
        "output_dir": (SafeStr, "outputs"),
        "cluster": (Cluster, Field(default_factory=Cluster)),
    }
    for section, model in sections.items():
        fields[section] = (model, Field(default_factory=model))
    return create_model("Experiment", __base__=Model, **fields)
