"""The Apptainer recipes in containers/. They cannot be built here (no Apptainer on these machines:
see containers/README.md), so this checks what can be checked without building: the structure,
that build arguments are declared, that %files copies files this repository tracks, the shell
syntax of every script section, and that the recipes agree with the code they package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

RECIPES = sorted((ROOT / "containers").glob("*.def"))
SCRIPT_SECTIONS = ("post", "test", "runscript", "environment")


def parse(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(header keywords, section name -> lines) of a definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m.group(1)
            assert current not in sections, f"{path.name}: %{current} twice"
            sections[current] = []
        elif current is None:
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return header, sections


def arguments(sections: dict[str, list[str]]) -> dict[str, str]:
    out = {}
    for line in sections.get("arguments", []):
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def substituted(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: args[m.group(1)], text)


def test_there_is_a_gpu_and_a_cpu_recipe():
    assert {p.name for p in RECIPES} == {"hpcgen.def", "hpcgen-cpu.def"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_structure_and_build_arguments(recipe):
    header, sections = parse(recipe)
    assert header["Bootstrap"] == "docker" and header["From"] == "{{ BASE_IMAGE }}"
    for name in ("arguments", "files", "environment", "post", "labels", "runscript", "test", "help"):
        assert name in sections, f"{recipe.name} has no %{name}"
    args = arguments(sections)
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", recipe.read_text()))
    assert used == set(args), f"used {sorted(used)} but declared {sorted(args)}"
    assert all(args.values()), "every build argument has a default"
    labels = "\n".join(sections["labels"] + sections["post"])
    for label in ("org.opencontainers.image.title", "org.hpcgen.version", "org.hpcgen.git-commit",
                  "org.hpcgen.variant"):
        assert label in labels
    assert 'exec python3 -m hpcgen "$@"' in "\n".join(sections["runscript"])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_files_copies_tracked_files_of_this_repository(recipe):
    _, sections = parse(recipe)
    tracked = set(subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                                 check=True).stdout.split())
    sources = []
    for line in sections["files"]:
        if line.strip():
            source, dest = line.split()
            assert dest == f"/opt/hpcgen/{source}"
            assert (ROOT / source).exists(), source
            assert source in tracked or any(t.startswith(source + "/") for t in tracked), f"{source} is not tracked"
            sources.append(source)
    # what `pip install /opt/hpcgen` needs, and the data the default experiment reads
    assert {"pyproject.toml", "README.md", "src", "jobs", "examples", "experiments.yaml"} <= set(sources)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_script_sections_are_valid_shell(recipe, tmp_path):
    _, sections = parse(recipe)
    args = arguments(sections)
    for name in SCRIPT_SECTIONS:
        script = tmp_path / f"{name}.sh"
        script.write_text(substituted("\n".join(sections[name]), args) + "\n")
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{recipe.name} %{name}: {res.stderr}"


def test_gpu_recipe_builds_the_ops_its_test_requires_for_a800_and_h100():
    _, sections = parse(ROOT / "containers" / "hpcgen.def")
    args = arguments(sections)
    assert set(args["CUDA_ARCHS"].split(";")) >= {"8.0", "9.0"}
    post = "\n".join(sections["post"])
    assert 'TORCH_CUDA_ARCH_LIST="{{ CUDA_ARCHS }}"' in post
    built = {m.lower() for m in re.findall(r"DS_BUILD_(\w+)=1", post)}
    required = set()
    for m in re.findall(r"--require-ops (\S+)", "\n".join(sections["test"])):
        required |= set(m.split(","))
    assert required and required <= built, (required, built)
    assert "--require-cuda-build" in "\n".join(sections["test"])
    assert 'python3 -m pip install "/opt/hpcgen[gpu]"' in post, "CuPy comes with the gpu extra"
    assert "keep-torch.txt" in post, "the base image's CUDA torch must not be replaced"


def test_cpu_recipe_pins_the_torch_this_project_tests_with():
    _, sections = parse(ROOT / "containers" / "hpcgen-cpu.def")
    pin = re.search(r"torch==([\w.+]+)", (ROOT / "constraints-cpu.txt").read_text()).group(1)
    assert arguments(sections)["TORCH_VERSION"] == pin
    assert "export DS_ACCELERATOR=cpu" in "\n".join(sections["environment"])
    assert "--index-url https://download.pytorch.org/whl/cpu" in "\n".join(sections["post"])


def test_build_commit_reaches_the_markers():
    # the variable the recipes set at build time is the one provenance reads inside an image
    store_source = (ROOT / "src" / "hpcgen" / "pipeline" / "store.py").read_text()
    assert 'os.environ.get("HPCGEN_BUILD_COMMIT")' in store_source
    for recipe in RECIPES:
        assert 'echo "export HPCGEN_BUILD_COMMIT={{ GIT_COMMIT }}" >> "$APPTAINER_ENVIRONMENT"' in recipe.read_text()


def test_cpu_recipe_test_section_runs_here_and_misses_only_the_prebuilt_op(tmp_path):
    """%test of the CPU image, run natively: everything it checks holds on this machine except the
    CPU Adam op that only the image build compiles in, and that is what it must report."""
    _, sections = parse(ROOT / "containers" / "hpcgen-cpu.def")
    script = tmp_path / "test.sh"
    script.write_text("\n".join(sections["test"]) + "\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", DS_ACCELERATOR="cpu")
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300)
    missing = [ln for ln in res.stderr.splitlines() if ln.startswith("missing: ")]
    assert res.returncode == 1, res.stdout + res.stderr
    assert missing == ["missing: DeepSpeed ops not pre-built: cpu_adam (DS_BUILD_<OP>=1 when installing)"]
    assert "profiles: a800x8, cpu, h100x8" in res.stdout
