"""Inputs are keyed by content: a copied or moved checkout keeps its run ids and stage keys and
finds its store complete; a changed input file changes them, a touched one does not."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from hpcgen.cli import main
from hpcgen.config import load_experiment
from hpcgen.config.identity import section_json
from hpcgen.pipeline import fingerprint
from hpcgen.pipeline.fingerprint import content_digest, portable
from hpcgen.pipeline.graph import build_graph
from hpcgen.similarity.model import DEFAULT_MODEL
from hpcgen.stages import default_pipeline
from tests.conftest import ROOT

SAMPLE = ROOT / "examples" / "data" / "niv2-sample"
TASK = Path("data") / "niv2" / "tasks" / "task1146_country_capital.json"
WEIGHTS = Path("models") / "tiny" / "model.safetensors"

EXPERIMENT = """
name: portable
output_dir: outputs
data:
  sources:
    - {format: niv2, path: data/niv2}
  max_per_train_task: 2
  max_per_test_task: 1
train:
  model: models/current
matrix:
  arrange.strategy: [random, nft]
"""


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A digest cache of this test's own (the real one is the user's)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)  # hpcgen's own stages


def checkout(root: Path) -> Path:
    """An experiment directory: its file, the NIV2 sample, a (fake) local model behind a
    relative symlink, outputs inside it as with the default ``output_dir: outputs``."""
    shutil.copytree(SAMPLE, root / "data" / "niv2")
    model = root / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2, "vocab_size": 256}))
    (root / WEIGHTS).write_bytes(os.urandom(4096))
    (root / "models" / "current").symlink_to("tiny")
    (root / "exp.yaml").write_text(EXPERIMENT)
    return root / "exp.yaml"


def plan_of(path: Path):
    pipeline = default_pipeline()
    exp = load_experiment(path, pipeline, check_output=False)
    return exp, build_graph(exp, pipeline)


def identities(path: Path) -> tuple[list[str], list[str]]:
    exp, graph = plan_of(path)
    return [r.id for r in exp.runs], sorted(graph.nodes)


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)  # copy2: modification times kept, as with cp -a
    return dst


def run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_copied_checkout_has_the_same_run_ids_and_keys(tmp_path):
    exp_file = checkout(tmp_path / "a" / "checkout")
    copy = copy_of(tmp_path / "a" / "checkout", tmp_path / "elsewhere" / "deeper" / "checkout")
    assert identities(exp_file) == identities(copy / "exp.yaml")
    runs, nodes = identities(exp_file)
    assert len(runs) == 2 and {n.split("/")[0] for n in nodes} >= {"prepare", "embed", "train", "aggregate"}


def test_no_absolute_path_enters_a_key_or_run_id(tmp_path):
    exp_file = checkout(tmp_path / "checkout")
    exp, graph = plan_of(exp_file)
    config = exp.runs[0].config
    assert config.data.sources[0].path == str(tmp_path / "checkout" / "data" / "niv2"), "jobs get the real path"
    assert config.train.model == str(tmp_path / "checkout" / "models" / "tiny")
    texts = [section_json(getattr(config, s)) for s in ("data", "embed", "train", "eval", "arrange")]
    assert texts == [exp.runs[0].sections[s].json for s in ("data", "embed", "train", "eval", "arrange")]
    texts += [line for node in graph.nodes.values() for line in node.stage.fingerprint(node.config)]
    assert not any(str(tmp_path) in t for t in texts)
    data = json.loads(texts[0])
    assert data["sources"][0]["path"] == "content:" + content_digest(tmp_path / "checkout" / "data" / "niv2")
    assert json.loads(texts[2])["model"] == "content:" + content_digest(tmp_path / "checkout" / "models" / "tiny")
    # the embed model is a hub name that resolves to a package directory at run time: keyed by its name
    assert json.loads(texts[1])["model"] == DEFAULT_MODEL


def test_a_copied_store_is_complete(tmp_path, capsys):
    exp_file = checkout(tmp_path / "checkout")
    code, out, err = run(["submit", exp_file, "--executor", "debug", "--until", "prepare"], capsys)
    assert code == 0, err
    [marker] = (tmp_path / "checkout" / "outputs" / "store" / "prepare").glob("*/completions/00000.json")
    copy = copy_of(tmp_path / "checkout", tmp_path / "elsewhere" / "checkout")
    os.rename(tmp_path / "checkout", tmp_path / "moved-away")  # nothing of the copy points back
    code, out, err = run(["status", copy / "exp.yaml", "--json"], capsys)
    assert code == 0, err
    states = {t["id"]: t["state"] for t in json.loads(out)["tasks"]}
    assert [s for t, s in states.items() if t.startswith("prepare/")] == ["done"]
    copied = copy / marker.relative_to(tmp_path / "checkout")
    before = copied.read_bytes()
    code, out, err = run(["submit", copy / "exp.yaml", "--executor", "debug", "--until", "prepare"], capsys)
    assert code == 0, err
    assert "1 complete, 0 already queued, 0 to run" in out
    assert copied.read_bytes() == before, "nothing ran again"


def test_a_changed_byte_changes_keys_and_run_ids(tmp_path):
    exp_file = checkout(tmp_path / "checkout")
    runs, nodes = identities(exp_file)
    task = tmp_path / "checkout" / TASK
    text = task.read_bytes()
    st = task.stat()
    changed = text.replace(b"Paris", b"Lyonn", 1)
    assert changed != text and len(changed) == len(text)
    task.write_bytes(changed)
    os.utime(task, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, another mtime
    runs2, nodes2 = identities(exp_file)
    assert set(runs2).isdisjoint(runs)
    prepare = lambda ids: {n for n in ids if n.startswith("prepare/")}  # noqa: E731
    assert prepare(nodes2).isdisjoint(prepare(nodes))
    # a weight of the model: train changes, prepare does not
    weights = tmp_path / "checkout" / WEIGHTS
    blob = bytearray(weights.read_bytes())
    blob[100] ^= 0xFF
    weights.write_bytes(bytes(blob))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    _, nodes3 = identities(exp_file)
    assert prepare(nodes3) == prepare(nodes2)
    train = lambda ids: {n for n in ids if n.startswith("train/")}  # noqa: E731
    assert train(nodes3).isdisjoint(train(nodes2))


def test_touching_an_input_keeps_keys(tmp_path):
    exp_file = checkout(tmp_path / "checkout")
    before = identities(exp_file)
    task = tmp_path / "checkout" / TASK
    st = task.stat()
    os.utime(task, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert identities(exp_file) == before
    cache = json.loads(fingerprint.cache_file().read_text())
    idents = [k for k in cache if k.startswith(f"{task}|")]
    assert idents == [f"{task}|{st.st_size}|{st.st_mtime_ns + 5 * 10**9}"], "the stale entry is dropped"


def test_directory_digest_is_names_and_file_digests(tmp_path):
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_bytes(b"bee")
    (root / "sub" / "a.txt").write_bytes(b"ay")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: x")
    (root / ".hidden").write_text("editor state")
    (root / "loop").symlink_to(".")  # a link back up the tree is not followed forever

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    expected = hashlib.sha256(b"hpcgen-dir-v1\n" + f"b.txt\0{sha(b'bee')}\n".encode()
                              + f"sub/a.txt\0{sha(b'ay')}\n".encode()).hexdigest()
    assert content_digest(root) == expected
    assert content_digest(root / "b.txt") == sha(b"bee") == fingerprint.file_digest(str(root / "b.txt"))
    (root / "sub" / "a.txt").rename(root / "sub" / "c.txt")
    assert content_digest(root) != expected, "names are part of a directory's content"


def test_portable_maps_local_paths_only(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(b"x")
    assert portable(str(tmp_path / "f")) == "content:" + hashlib.sha256(b"x").hexdigest()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2").mkdir(parents=True)
    for value in (DEFAULT_MODEL, "hf://bigscience/P3", "relative/name", str(tmp_path / "missing")):
        assert portable(value) == value


def test_digests_are_cached_across_processes_and_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(b"data" * 1000)
    real = content_digest(path)
    cache = fingerprint.cache_file()
    entries = json.loads(cache.read_text())
    assert list(entries.values()) == [real]
    # what a new process does: read the cache file instead of hashing (shown by a planted digest)
    [ident] = entries
    cache.write_text(json.dumps({ident: "0" * 64}))
    monkeypatch.setattr(fingerprint, "_memo", {})
    monkeypatch.setattr(fingerprint, "_loaded", set())
    assert content_digest(path) == "0" * 64
    # an XDG_CACHE_HOME that cannot hold the cache
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    other = tmp_path / "other.bin"
    other.write_bytes(b"other")
    assert content_digest(other) == hashlib.sha256(b"other").hexdigest()
