"""The store: files are the state.

    OUTPUT_ROOT/
      store/STAGE/KEY/                 one directory per stage node (shared by experiments)
        node.json                      what the node is: stage, key, config, upstream keys
        completions/00042.json         task 42 is complete: checksums and provenance (written last)
        submissions/00042.json         the last submission of task 42 (executor, job id, logs)
        attempts/00042.json            the last attempt's state (running / failed, host, pid, error)
        locks/00042.lock               held while task 42 runs
        <outputs>                      whatever the stage writes, renamed into place on success
      experiments/NAME/
        plan.json                      the graph of the last submit
        submit.lock                    held while a submit of NAME runs
        logs/STAGE/                    scheduler logs (stdout/stderr of every job)

Zero-padded, greppable names; every JSON file is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from hpcgen.pipeline import container as images

# the store's file primitives (``hpcgen.pipeline.files``), which most of hpcgen imports from here
from hpcgen.pipeline.files import read_json as read_json
from hpcgen.pipeline.files import sha256_file as sha256_file
from hpcgen.pipeline.files import write_json as write_json

PROVENANCE_PACKAGES = (
    "hpcgen", "submitit", "torch", "deepspeed", "transformers", "sentence-transformers",
    "h5py", "numpy", "pydantic", "pyarrow",
)
#: import names whose distribution name varies (cupy-cuda12x, cupy-cuda11x, cupy, ...)
PROVENANCE_MODULES = ("cupy",)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def checksums(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, or of every file under a directory."""
    if path.is_dir():
        files = {}
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(sub.relative_to(path))] = {"sha256": sha256_file(sub), "bytes": sub.stat().st_size}
        return {"files": files, "bytes": sum(f["bytes"] for f in files.values())}
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PROVENANCE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    providers = metadata.packages_distributions()
    for module in PROVENANCE_MODULES:
        out[module] = None
        for dist in providers.get(module, []):
            try:
                out[module] = metadata.version(dist)
                out[f"{module}.distribution"] = dist
                break
            except metadata.PackageNotFoundError:
                continue
    return out


@lru_cache(maxsize=1)
def git_commit() -> dict[str, Any] | None:
    """The commit of the hpcgen checkout in use, if it runs from one; inside an image built by
    containers/*.def, the commit the image was built from (``HPCGEN_BUILD_COMMIT``)."""
    here = Path(__file__).resolve().parent
    built = os.environ.get("HPCGEN_BUILD_COMMIT")
    from_image = {"commit": built, "dirty": None, "source": "image build"} if built else None
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return from_image
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return from_image


def scheduler_ids() -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
            "SLURM_PROCID", "SLURM_RESTART_COUNT", "SUBMITIT_LOCAL_JOB_ID")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


def provenance(container: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and with what a task ran. ``container``: the image it was submitted to run in."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "git": git_commit(),
        "container": images.provenance(container),
        "scheduler": scheduler_ids(),
    }


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def node_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def _file(self, stage: str, key: str, kind: str, index: int, ext: str = "json") -> Path:
        return self.node_dir(stage, key) / kind / f"{index:05d}.{ext}"

    def marker(self, stage: str, key: str, index: int) -> Path:
        return self._file(stage, key, "completions", index)

    def submission(self, stage: str, key: str, index: int) -> Path:
        return self._file(stage, key, "submissions", index)

    def attempt(self, stage: str, key: str, index: int) -> Path:
        return self._file(stage, key, "attempts", index)

    def lock(self, stage: str, key: str, index: int) -> Path:
        return self._file(stage, key, "locks", index, "lock")

    def is_complete(self, stage: str, key: str, index: int) -> bool:
        """A marker whose listed outputs all still exist with their recorded size."""
        marker = read_json(self.marker(stage, key, index))
        if not marker:
            return False
        base = self.node_dir(stage, key)
        for name, info in marker.get("outputs", {}).items():
            target = base / name
            if "files" in info:
                if not target.is_dir():
                    return False
            elif not target.is_file() or target.stat().st_size != info.get("bytes"):
                return False
        return True

    def completed(self, stage: str, key: str) -> set[int]:
        """Indices with a marker (one directory listing, no per-task checks)."""
        folder = self.node_dir(stage, key) / "completions"
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return set()
        return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}

    def work_dir(self, stage: str, key: str, index: int) -> Path:
        """Where task ``index`` keeps state across attempts (resumable checkpoints, snapshots)."""
        return self.node_dir(stage, key) / work_name(index)

    def invalidate(self, stage: str, key: str, index: int) -> None:
        """Forget that a task is complete; its outputs are replaced when it reruns."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.marker(stage, key, index))

    def reset(self, stage: str, key: str, index: int) -> bool:
        """Make a task start from nothing (``--force``): forget its completion and set aside its
        work directory, so that a rerun resumes from no old checkpoint. Returns False, touching
        nothing, while the task is running (its lock is held)."""
        base = self.node_dir(stage, key)
        with file_lock(self.lock(stage, key, index), blocking=False) as held:
            if not held:
                return False
            self.invalidate(stage, key, index)
            work = self.work_dir(stage, key, index)
            trash = base / f".tmp.{index:05d}.forced-{uuid.uuid4().hex[:8]}.{work.name}"
            try:
                os.replace(work, trash)  # atomic: the work directory is whole or gone
            except FileNotFoundError:
                return True
        shutil.rmtree(trash, ignore_errors=True)  # what is left is removed by the next start (clean_staging)
        return True

    def clean_staging(self, stage: str, key: str, index: int) -> None:
        """Remove what an interrupted attempt of this task left under temporary names."""
        base = self.node_dir(stage, key)
        prefix = f".tmp.{index:05d}."
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(base):
                if name.startswith(prefix):
                    path = base / name
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def read_progress(node_dir: Path, index: int) -> dict[str, Any] | None:
    """What a running task last said of its progress (``Task.progress``), if anything."""
    try:
        data = json.loads((node_dir / "progress" / f"{index:05d}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"done", "total"} <= set(data) else None


def progress_text(data: dict[str, Any]) -> str:
    """``12,800/101,000 records, 160/s, 10 min left`` from a progress record."""
    done, total, unit = int(data["done"]), int(data["total"]), data.get("unit") or "items"
    text = f"{done:,}/{total:,} {unit}"
    rate = data.get("rate_per_s")
    if isinstance(rate, (int, float)) and rate > 0:
        left = (total - done) / rate
        text += f", {rate:,.0f}/s" + (f", {left / 60:.0f} min left" if left >= 90 else
                                       f", {left:.0f} s left" if done < total else "")
    return text


def work_name(index: int) -> str:
    return f"work-{index:05d}"


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An flock on ``path``: yields True when held, False when busy and not ``blocking``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_holder(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None
