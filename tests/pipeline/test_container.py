"""Jobs inside an Apptainer image: the command, the checks at submit, and what markers record.

The real ``apptainer`` cannot run on these machines; the ``apptainer`` fixture puts a stand-in on
PATH (tests/cluster/apptainer) that records each call and runs the command natively. The same
path through the real Slurm cluster is in test_slurm.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from hpcgen.config.schema import Container
from hpcgen.pipeline import container as images
from hpcgen.pipeline import files
from hpcgen.pipeline import store as store_mod
from hpcgen.pipeline.store import read_json
from tests.pipeline.test_executors import upstream_map

EXP = """
name: boxed
output_dir: out
cluster:
  executor: {executor}
  container:
    image: {image}
    bind: [/tmp]
    env: {{HPCGEN_TEST_IN_IMAGE: "yes"}}
embed: {{tasks: 2}}
arrange: {{strategy: tma}}
eval: {{tasks: 2}}
"""


def markers(root):
    return [read_json(p) for p in sorted((root / "out" / "store").glob("*/*/completions/*.json"))]


def test_local_jobs_run_inside_the_image_and_markers_say_which(cli, write_exp, events, apptainer, pipeline, tmp_path):
    path = write_exp(EXP.format(executor="local", image="images/hpcgen.sif"))  # relative to the experiment file
    code, out, err = cli("submit", path)
    assert code == 0, out + err
    _, ups = upstream_map(path, pipeline)
    calls = apptainer.calls()
    # one container per task, each started the way the sbatch script / local executor says
    assert len(calls) == len(ups)
    for call in calls:
        assert call["image"] == str(apptainer.image)
        assert call["bind"] == ["/tmp"] and call["env"] == {"HPCGEN_TEST_IN_IMAGE": "yes"} and not call["nv"]
        assert call["command"][:4] == ["python3", "-u", "-m", "submitit.core._submit"]
    started = events("start")
    assert {e["task"] for e in started} == set(ups)
    assert all(e["container"] == str(apptainer.image) and e["in_image"] == "yes" for e in started)
    digest = hashlib.sha256(apptainer.image.read_bytes()).hexdigest()
    found = markers(tmp_path)
    assert len(found) == len(ups)
    for marker in found:
        box = marker["provenance"]["container"]
        assert box["image"] == str(apptainer.image) and box["sha256"] == digest
        assert box["bytes"] == apptainer.image.stat().st_size
        assert box["labels"] == apptainer.labels  # read once at submit with `apptainer inspect`
        assert box["running_in"] == str(apptainer.image) and box["name"] == "hpcgen.sif"
        packages = marker["provenance"]["packages"]
        assert {"hpcgen", "torch", "deepspeed", "transformers", "sentence-transformers", "cupy"} <= set(packages)
        assert packages["hpcgen"] and packages["torch"]


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_missing_image_is_refused_at_submit_before_anything_is_written(cli, write_exp, tmp_path, executor):
    path = write_exp(EXP.format(executor=executor, image="images/nope.sif"))
    code, out, err = cli("submit", path)
    assert code == 2
    line = err.strip()
    assert "\n" not in line
    assert line.endswith(f"exp.yaml:7: cluster.container.image: container image "
                         f"'{tmp_path / 'images' / 'nope.sif'}' not found; "
                         "build it (see containers/README.md) or fix the path"), line
    assert not (tmp_path / "out").exists(), "nothing queued, nothing written"


def test_an_image_url_or_sandbox_directory_is_refused(cli, write_exp, tmp_path):
    path = write_exp(EXP.format(executor="local", image="docker://ghcr.io/lab/hpcgen:1"))
    code, _, err = cli("submit", path)
    assert code == 2 and "is not a local file; pull it once (apptainer pull hpcgen.sif" in err
    (tmp_path / "sandbox").mkdir()
    path = write_exp(EXP.format(executor="local", image="sandbox"))
    code, _, err = cli("submit", path)
    assert code == 2 and "is not a file" in err
    assert not (tmp_path / "out").exists()


def test_the_debug_executor_says_it_does_not_use_the_image(cli, write_exp, apptainer, tmp_path):
    path = write_exp(EXP.format(executor="debug", image="images/hpcgen.sif"))
    code, out, err = cli("submit", path)
    assert code == 0, out + err
    assert "runs tasks in this process: cluster.container" in out + err
    assert apptainer.calls() == []
    assert all(m["provenance"]["container"] is None for m in markers(tmp_path))


def test_image_digest_is_computed_once_per_version_of_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = tmp_path / "a.sif"
    image.write_bytes(b"first image" * 1000)
    hashed = []
    real = files.sha256_file

    def counting(path, *args, **kwargs):
        hashed.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "sha256_file", counting)
    spec = Container(image=str(image))
    first = images.describe(spec)
    again = images.describe(spec)
    assert first["sha256"] == again["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert len(hashed) == 1, "the second submit reads the digest from the cache"
    image.write_bytes(b"rebuilt image, other size")
    rebuilt = images.describe(spec)
    assert rebuilt["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest() != first["sha256"]
    assert len(hashed) == 2
    cache = json.loads((tmp_path / "cache" / "hpcgen" / "digests.json").read_text())  # hpcgen.pipeline.fingerprint
    assert list(cache.values()) == [rebuilt["sha256"]], "stale entries of the same path are dropped"


def test_labels_come_from_apptainer_inspect_when_it_is_there(apptainer, monkeypatch):
    assert images.image_labels(apptainer.image) == apptainer.labels
    monkeypatch.setenv("PATH", "/nonexistent")
    assert images.image_labels(apptainer.image) is None


def test_a_job_records_the_container_it_finds_itself_in(tmp_path, monkeypatch):
    monkeypatch.delenv("APPTAINER_CONTAINER", raising=False)
    monkeypatch.delenv("SINGULARITY_CONTAINER", raising=False)
    assert images.provenance(None) is None
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"org.hpcgen.version": "0.1.0"}))
    monkeypatch.setattr(images, "LABELS_FILE", labels)
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/hpcgen.sif")
    monkeypatch.setenv("APPTAINER_NAME", "hpcgen.sif")
    seen = images.provenance(None)  # started inside an image by hand, not by hpcgen
    assert seen == {"running_in": "/images/hpcgen.sif", "name": "hpcgen.sif",
                    "labels_inside": {"org.hpcgen.version": "0.1.0"}}
    submitted = {"image": "/images/hpcgen.sif", "sha256": "ab" * 32}
    assert images.provenance(submitted) == {**submitted, **seen}


def test_git_commit_falls_back_to_the_one_the_image_was_built_from(monkeypatch):
    store_mod.git_commit.cache_clear()
    monkeypatch.setenv("GIT_DIR", "/nonexistent")  # as inside an image, where no checkout is
    monkeypatch.setenv("HPCGEN_BUILD_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    try:
        assert store_mod.git_commit() == {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": None,
                                          "source": "image build"}
        monkeypatch.delenv("HPCGEN_BUILD_COMMIT")
        store_mod.git_commit.cache_clear()
        assert store_mod.git_commit() is None
    finally:
        store_mod.git_commit.cache_clear()


def test_the_stand_in_refuses_what_real_apptainer_would(apptainer, tmp_path):
    # the stand-in must not be more forgiving than the real thing on what hpcgen relies on
    res = subprocess.run(["apptainer", "exec", str(tmp_path / "missing.sif"), "true"], capture_output=True, text=True)
    assert res.returncode == 255 and "could not open image" in res.stderr
    res = subprocess.run(["apptainer", "exec", "--fakeroot", str(apptainer.image), "true"], capture_output=True,
                         text=True)
    assert res.returncode == 255
    res = subprocess.run(["apptainer", "exec", "--env", "A=1", str(apptainer.image), "sh", "-c",
                          "echo $A $APPTAINER_NAME"], capture_output=True, text=True)
    assert res.stdout.split() == ["1", "hpcgen.sif"]
    assert Counter(c["image"] for c in apptainer.calls()) == Counter({str(apptainer.image): 1})


def test_bind_paths_decide_what_the_image_sees(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    box = Container(image="x.sif", bind=["/data:/mnt/data:ro,/scratch", "~/models"])
    assert images.visible_inside(tmp_path / "out", box)  # the working directory is bound by default
    assert images.visible_inside(Path("/data/run1"), box) and images.visible_inside(Path("/scratch"), box)
    assert images.visible_inside(Path.home() / "models" / "m", box)
    assert not images.visible_inside(Path("/datasets/run1"), box) and not images.visible_inside(Path("/srv"), box)


def test_submit_warns_when_the_output_root_is_not_bound(cli, write_exp, apptainer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outside = "/var/tmp/hpcgen-unbound-out"
    path = write_exp(EXP.format(executor="local", image="images/hpcgen.sif").replace("output_dir: out",
                                                                                     f"output_dir: {outside}"))
    code, out, err = cli("submit", path, "--dry-run")
    assert code == 0, out + err
    assert f"the output root {outside} is outside every bind path" in out + err
    code, out, err = cli("submit", write_exp(EXP.format(executor="local", image="images/hpcgen.sif")), "--dry-run")
    assert code == 0 and "outside every bind path" not in out + err


def test_image_paths_are_relative_to_the_experiment_file_or_home(write_exp, apptainer, pipeline, tmp_path,
                                                                   monkeypatch):
    from hpcgen.config import load_experiment

    monkeypatch.chdir("/")
    exp = load_experiment(write_exp(EXP.format(executor="local", image="images/hpcgen.sif")), pipeline)
    assert exp.cluster.container.image == str(apptainer.image)
    monkeypatch.setenv("HOME", str(tmp_path))
    exp = load_experiment(write_exp(EXP.format(executor="local", image="~/images/hpcgen.sif")), pipeline)
    assert exp.cluster.container.image == str(apptainer.image)
