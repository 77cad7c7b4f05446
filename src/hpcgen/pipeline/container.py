"""Apptainer images: the command that starts a job's Python inside one, and what is known about
the image for the completion markers.

At submit time the image is checked, hashed (sha256, cached by path, size and mtime, since an
image is several GB: ``hpcgen.pipeline.fingerprint``) and its labels read with ``apptainer
inspect``; every task carries that description. Inside the job Apptainer itself says which image
is running (``APPTAINER_CONTAINER``) and what its labels are (``/.singularity.d/labels.json``);
the marker keeps both, so a marker shows what was asked for and what actually ran.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hpcgen.config.schema import Container
from hpcgen.errors import ConfigError
from hpcgen.pipeline.fingerprint import file_digest

#: where Apptainer keeps an image's labels inside the running container
LABELS_FILE = Path("/.singularity.d/labels.json")


def python_command(container: Container | None, gpus: int = 0) -> str | None:
    """The command that starts Python for a job: plain (None), or inside the Apptainer image.

    ``--nv`` (the host's GPU driver inside the image) follows from the job's GPUs unless
    ``container.gpu`` says otherwise. submitit appends ``-u -m submitit.core._submit FOLDER`` and,
    for a multi-process job, runs the whole line once per task under ``srun``: every rank gets its
    own container."""
    if container is None:
        return None
    parts = ["apptainer", "exec"]
    if container.gpu or (container.gpu is None and gpus > 0):
        parts.append("--nv")
    for bind in container.bind:
        parts += ["--bind", bind]
    for key, value in sorted(container.env.items()):
        parts += ["--env", f"{key}={value}"]
    parts += [container.image, "python3"]
    return shlex.join(parts)


def visible_inside(path: Path, container: Container) -> bool:
    """Whether ``path`` is under a directory the image sees: a bind source, or what Apptainer
    binds by default ($HOME, /tmp, the working directory). Site-wide binds are not known here."""
    roots = [Path.home(), Path("/tmp"), Path.cwd()]
    for spec in container.bind:
        for one in spec.split(","):
            source = one.split(":", 1)[0].strip()
            if source:
                roots.append(Path(source).expanduser())
    target = Path(os.path.realpath(path))
    return any(target == Path(os.path.realpath(r)) or Path(os.path.realpath(r)) in target.parents for r in roots)


def image_digest(path: Path) -> str:
    """sha256 of an image file, computed once per (path, size, mtime) and cached, like every
    input's digest (``hpcgen.pipeline.fingerprint``; an unwritable cache only costs the next
    submit another pass over the image)."""
    return file_digest(path)


def image_labels(path: Path) -> dict[str, str] | None:
    """The image's labels from ``apptainer inspect --json --labels``; None where that cannot run."""
    if not shutil.which("apptainer"):
        return None
    try:
        out = subprocess.run(["apptainer", "inspect", "--json", "--labels", str(path)], capture_output=True,
                             text=True, timeout=120)
        labels = json.loads(out.stdout)["data"]["attributes"]["labels"] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None


def check_image(container: Container) -> Path:
    """The image file, resolved; ConfigError (with the key, for the caller to locate) when it is
    not a local file. Cheap: ``plan`` checks it, ``submit`` then hashes it."""
    if "://" in container.image:
        raise ConfigError(f"container image {container.image!r} is not a local file", key="cluster.container.image",
                          fix=f"pull it once (apptainer pull hpcgen.sif {container.image}) and give the .sif path")
    path = Path(container.image).expanduser()
    if not path.exists():
        raise ConfigError(f"container image {container.image!r} not found", key="cluster.container.image",
                          fix="build it (see containers/README.md) or fix the path")
    if not path.is_file():
        raise ConfigError(f"container image {container.image!r} is not a file (a sandbox directory cannot be "
                          "hashed for provenance)", key="cluster.container.image",
                          fix="build a .sif image (see containers/README.md)")
    return path.resolve()


def describe(container: Container) -> dict[str, Any]:
    """What every marker of this submission records about the image (ConfigError when missing)."""
    path = check_image(container)
    st = path.stat()
    return {
        "image": str(path), "sha256": image_digest(path), "bytes": st.st_size,
        "modified": datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat(timespec="seconds"),
        "labels": image_labels(path), "bind": list(container.bind), "env": dict(container.env),
        "gpu": container.gpu,
    }


def observed() -> dict[str, Any] | None:
    """What this process can see of the container it runs in (None outside any container)."""
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if not image:
        return None
    labels = None
    try:
        labels = json.loads(LABELS_FILE.read_text())
    except (OSError, ValueError):
        pass
    return {"running_in": image, "name": os.environ.get("APPTAINER_NAME") or os.environ.get("SINGULARITY_NAME"),
            "labels_inside": labels if isinstance(labels, dict) else None}


def provenance(submitted: dict[str, Any] | None) -> dict[str, Any] | None:
    """The marker's ``container`` entry: the submitted description plus what the job saw."""
    seen = observed()
    if submitted is None and seen is None:
        return None
    out: dict[str, Any] = dict(submitted or {})
    out.update(seen or {"running_in": None})
    return out
