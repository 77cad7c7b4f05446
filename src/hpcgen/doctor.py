"""``hpcgen doctor``: what this environment (a node, a container image) can run, and whether it has
what a job needs. The image recipes run it as their ``%test``; on a new cluster run it on a login
node and, through the image, on a compute node.

Requirements given as flags turn into the exit code: 0 when all hold, 1 otherwise, with one line
per missing piece. Without flags it fails only on a broken install (torch missing, or no bundled
resource profiles where hpcgen looks for them).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from hpcgen.pipeline import container as images
from hpcgen.pipeline.store import git_commit, package_versions
from hpcgen.version import __version__


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        return {"error": str(exc)}
    info: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            info["gpus"].append({"name": torch.cuda.get_device_name(i), "capability": f"{major}.{minor}"})
        x = torch.ones(4096, device="cuda", dtype=torch.bfloat16)  # what training runs in
        info["bf16_ok"] = float(x.sum()) == 4096.0
        info["compiled_for"] = torch.cuda.get_arch_list()
    return info


def _cupy() -> dict[str, Any]:
    from hpcgen.similarity.xp import gpu_available

    try:
        import cupy
    except ImportError:
        return {"installed": False, "usable": False}
    return {"installed": True, "version": cupy.__version__, "usable": gpu_available()}


def _deepspeed() -> dict[str, Any]:
    try:
        import deepspeed
        from deepspeed.git_version_info import installed_ops
    except ImportError as exc:
        return {"error": str(exc)}
    return {"version": deepspeed.__version__, "prebuilt_ops": sorted(k for k, v in installed_ops.items() if v),
            "accelerator": os.environ.get("DS_ACCELERATOR", "auto")}


def _slurm() -> dict[str, Any]:
    if not shutil.which("sbatch"):
        return {"sbatch": None}
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        ping = f"scontrol failed: {exc}"
    return {"sbatch": shutil.which("sbatch"), "controller": ping}


class _ToStderr(io.TextIOBase):
    """A stand-in for ``sys.stdout`` that passes everything on to stderr and keeps the lines."""

    def __init__(self) -> None:
        self.text = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[_ToStderr]:
    """While the libraries are imported and probed, what they print to stdout goes to stderr.

    DeepSpeed's logger writes to ``sys.stdout`` (a handler made at import, which keeps the stream
    it found: this stand-in, which still passes on to stderr after the block), and compiled code
    may write to file descriptor 1, redirected to 2 for the block. ``doctor --json`` keeps stdout
    for the JSON; the Python-level lines are also kept (``.text``) for its ``warnings``."""
    sys.stdout.flush()
    saved = None
    with contextlib.suppress(OSError):
        saved = os.dup(1)
        os.dup2(2, 1)
    stand_in = _ToStderr()
    try:
        with contextlib.redirect_stdout(stand_in):
            yield stand_in
    finally:
        if saved is not None:
            with contextlib.suppress(OSError):
                os.dup2(saved, 1)
            os.close(saved)


def collect() -> dict[str, Any]:
    """What the environment has. Libraries' own output (DeepSpeed's accelerator warning) goes to
    stderr, not stdout, and its lines are listed under ``warnings``."""
    from hpcgen.config.profiles import bundled, jobs_dir

    with stdout_to_stderr() as printed:
        info = {
            "hpcgen": __version__, "git": git_commit(), "packages": package_versions(),
            "container": images.observed(), "apptainer": shutil.which("apptainer"),
            "torch": _torch(), "cupy": _cupy(), "deepspeed": _deepspeed(), "slurm": _slurm(),
            "jobs_dir": str(jobs_dir()), "profiles": bundled(),
        }
    info["warnings"] = [line for line in printed.text.splitlines() if line.strip()]
    return info


def problems(info: dict[str, Any], *, gpu: bool = False, cuda_build: bool = False,
             ops: tuple[str, ...] = ()) -> list[str]:
    """What the environment lacks of what was required (empty: all there)."""
    out = []
    torch_info, ds = info["torch"], info["deepspeed"]
    if "error" in torch_info:
        out.append(f"torch cannot be imported ({torch_info['error']})")
    elif cuda_build and not torch_info["cuda_build"]:
        out.append(f"torch {torch_info['version']} is not a CUDA build")
    if gpu:
        if not torch_info.get("gpus"):
            out.append("no GPU is visible (on a GPU node? with --nv for Apptainer?)")
        elif not torch_info.get("bf16_ok"):
            out.append("a bf16 sum on the GPU gave a wrong result")
        if not info["cupy"]["usable"]:
            out.append("CuPy cannot use the GPU (install hpcgen[gpu], matching the CUDA version)")
    if ops:
        if "error" in ds:
            out.append(f"deepspeed cannot be imported ({ds['error']})")
        else:
            missing = [op for op in ops if op not in ds["prebuilt_ops"]]
            if missing:
                out.append(f"DeepSpeed ops not pre-built: {', '.join(missing)} (DS_BUILD_<OP>=1 when installing)")
    if not info["profiles"]:
        out.append(f"no resource profiles under {info['jobs_dir']}")
    return out


def render(info: dict[str, Any]) -> list[str]:
    git = info["git"] or {}
    t, cp, ds = info["torch"], info["cupy"], info["deepspeed"]
    box = info["container"]
    lines = [
        f"hpcgen {info['hpcgen']}" + (f" (commit {git['commit'][:12]})" if git.get("commit") else ""),
        "container: " + (f"{box['running_in']}" if box else "none"),
        "torch: " + (t.get("error") or f"{t['version']}, CUDA build {t['cuda_build'] or 'no'}, "
                     + (", ".join(f"{g['name']} ({g['capability']})" for g in t["gpus"]) or "no GPU visible")),
        "cupy: " + (f"{cp['version']}, " + ("GPU usable" if cp["usable"] else "no usable GPU: NumPy is used")
                    if cp["installed"] else "not installed: NumPy is used"),
        "deepspeed: " + (ds.get("error") or f"{ds['version']}, pre-built ops: {', '.join(ds['prebuilt_ops']) or 'none'}"
                         f" (others compile at first use)"),
        "slurm: " + (f"{info['slurm']['sbatch']}, controller: {info['slurm']['controller']}"
                     if info["slurm"]["sbatch"] else "no sbatch on PATH: the local executor is used"),
        "apptainer: " + (info["apptainer"] or "not on PATH"),
        f"profiles: {', '.join(info['profiles']) or 'none'} in {info['jobs_dir']}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v and "." not in k),
    ]
    return lines
