"""One-mutation fuzz of the bundled experiment files: every value of any type at any key is either
accepted (exit 0) or refused with one line ``FILE:LINE: KEY: reason; fix`` (exit 2), never a
traceback, and nothing is written."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from hpcgen.cli import main
from tests.conftest import ROOT

#: wrong-typed values: a mapping, lists, strings, numbers out of any range, null, a control character
WRONG = [{"nested": [1, 2]}, [1, 2], [{"a": 1}], "abc", "", -1, 1.5, 10**40, True, None, "x\ny"]
BUNDLED = [ROOT / "experiments.yaml", *sorted((ROOT / "examples").rglob("*.yaml"))]


def walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def replaced(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


def mutations(doc):
    """Every mapping given an unknown key; every value given each wrong type that is not its own."""
    for path, value in walk(doc):
        if isinstance(value, dict):
            extra = copy.deepcopy(doc)
            node = extra
            for p in path:
                node = node[p]
            node["zz_not_a_key"] = 1
            yield ".".join(map(str, path)) + ".zz_not_a_key", extra
        if not path:
            continue
        for wrong in WRONG:
            if type(wrong) is type(value) and not isinstance(wrong, (dict, list)):
                continue
            yield f"{'.'.join(map(str, path))}={wrong!r}", replaced(doc, path, wrong)


@pytest.mark.parametrize("source", BUNDLED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_one_value_mutation_is_accepted_or_refused_in_one_line(source, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    # relative paths in the file (data, includes) resolve as they do beside the original: the
    # mutated copy sits at the same place in a tree of links to the repository's files
    rel = source.relative_to(ROOT)
    for entry in ("examples", "experiments.yaml"):
        if entry != rel.parts[0]:
            (tmp_path / entry).symlink_to(ROOT / entry)
    parent = tmp_path
    for part in rel.parts[:-1]:
        here = ROOT / parent.relative_to(tmp_path) / part
        parent = parent / part
        parent.mkdir()
        for child in here.iterdir():
            if child.name not in rel.parts:
                (parent / child.name).symlink_to(child)
    doc = yaml.safe_load(source.read_text())
    target = tmp_path / rel
    shape = re.compile(rf"^error: {re.escape(str(target))}:\d+: \S+: .+")
    refused = accepted = 0
    problems = []
    for what, mutated in mutations(doc):
        target.write_text(yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True))
        code = main(["plan", str(target)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if code == 0:
            accepted += 1
        elif code == 2 and len(lines) == 1 and shape.match(lines[0]):
            refused += 1
        else:
            problems.append(f"{what}: exit {code}: {err.strip()[-300:]}")
    assert not problems, "\n".join(problems[:20])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples", "experiments.yaml"]  # nothing written
    if target.parent != tmp_path:
        assert sorted(p.name for p in target.parent.iterdir()) == sorted(p.name for p in source.parent.iterdir())
    assert refused > 3 * accepted  # the mutations are wrong on purpose: most must be refused


def test_a_validator_that_trips_on_a_type_is_reported_at_its_section():
    """The net under every validation: a TypeError inside a nested section's validator (the class
    of bug a mapping given as ``train.preset`` once showed) becomes a one-line error at its key."""
    from pydantic import model_validator

    from hpcgen.config.schema import Model, validate
    from hpcgen.errors import ConfigError

    class Inner(Model):
        name: str = "a"

        @model_validator(mode="before")
        @classmethod
        def _lookup(cls, data):
            {"a": 1}.get(data.get("name"))  # unhashable when name is a mapping
            return data

    class Outer(Model):
        inner: Inner = Inner()

    lines = {("inner",): 7, ("inner", "name"): 8}
    where = lambda loc: ("exp.yaml", lines.get(tuple(loc)))  # noqa: E731
    assert validate(Outer, {"inner": {"name": "a"}}, where).inner.name == "a"
    with pytest.raises(ConfigError) as info:
        validate(Outer, {"inner": {"name": {"x": 1}}}, where)
    assert str(info.value).startswith("exp.yaml:7: inner: a value of an unexpected type (TypeError: unhashable")
