"""Every YAML block and every ``hpcgen`` command of the READMEs is run, so a false snippet fails CI.

What is checked, per snippet (one test case each, named ``FILE:LINE``):

- a ```yaml block is an experiment file (it has a top-level ``name:``) or a fragment of one,
  laid over the bundled ``experiments.yaml``; either must pass ``hpcgen plan``. Relative paths
  in a snippet are relative to the repository root.
- an HTML comment on the line(s) just before the fence chooses another check:
  ``<!-- readme-test: profile -->`` (a resource profile file), ``<!-- readme-test: keys -->``
  (illustrative: its input files do not exist here, but every key must be a key of the schema),
  ``<!-- readme-test: skip REASON -->`` (the reason is required).
- a command is a line of a ```bash / ```sh / ```console block, or an inline code span, that starts
  with ``hpcgen `` or ``python -m hpcgen ``. Usage synopses (``hpcgen plan FILE [--json]``) must
  name an existing subcommand and its options; concrete commands must parse, and ``plan`` /
  ``submit`` of a file of this repository run in-process (``submit`` as ``--dry-run``, its output
  root in a temporary directory). An inline span in prose may leave out the file
  (``hpcgen plan`` names the command).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcgen.cli import build_parser, main
from hpcgen.config import profiles
from hpcgen.config.schema import check_path, child_schema, experiment_model, suggest, valid_keys
from hpcgen.errors import ConfigError
from hpcgen.stages import default_pipeline

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "containers/README.md", "jobs/profiles/README.md", "benchmarks/results/README.md",
           "docs/trainers.md")
MIRRORED = ("examples", "jobs", "containers", "experiments.yaml", "benchmarks")  # linked into the temp root
SNIPPET = "snippet.yaml"

# --------------------------------------------------------------------------------------------
# Extraction: plain regular expressions over lines, keeping line numbers


@dataclass(frozen=True)
class Block:
    file: str  # relative to ROOT
    line: int  # the opening fence's line (1-based)
    lang: str
    text: str
    directives: tuple[str, ...]  # the readme-test comments just before the fence


@dataclass(frozen=True)
class Command:
    file: str
    line: int
    argv: tuple[str, ...]  # after "hpcgen" / "python -m hpcgen"
    text: str  # as written (continuations joined)
    inline: bool  # a code span in prose, not a line of a code block
    directives: tuple[str, ...] = ()
    error: str = ""  # what kept the extractor from reading it


FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(?P<text>.*?)\s*-->")
COMMENT_LINE = re.compile(r"^\s*<!--.*-->\s*$")
YAML_LANGS = ("yaml", "yml")
SHELL_LANGS = ("bash", "sh", "shell", "console")
STARTS_HPCGEN = re.compile(r"^(?:(?:\S*/)?python[0-9.]*\s+-m\s+)?hpcgen\s")
PYTHON = re.compile(r"^(?:\S*/)?python[0-9.]*$")
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


def readme_files() -> list[Path]:
    """The READMEs to check; those under examples/ (provenance notes of data included) only yield
    cases where they hold a yaml block or an hpcgen command."""
    return [ROOT / f for f in READMES] + sorted((ROOT / "examples").glob("**/README.md"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def directives_before(lines: list[str], index: int) -> tuple[str, ...]:
    """readme-test comments on the comment lines directly above line ``index`` (blank lines between
    are allowed)."""
    found: list[str] = []
    i = index - 1
    while i >= 0 and (not lines[i].strip() or COMMENT_LINE.match(lines[i])):
        m = DIRECTIVE.search(lines[i])
        if m:
            found.append(m.group("text"))
        i -= 1
    return tuple(reversed(found))


def parse_markdown(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a README, and its prose lines (number, text) outside them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j].lstrip())
            j += 1
        blocks.append(Block(rel(path), i + 1, m.group("info").lower(), "\n".join(body) + "\n",
                            directives_before(lines, i)))
        prose.append((i + 1, ""))  # a block ends a paragraph
        i = j + 1
    return blocks, prose


def hpcgen_commands(text: str) -> list[tuple[str, ...]] | None:
    """The hpcgen commands of one shell line (``&&`` chains and the like split, other commands
    dropped), each as its arguments; None where the line is not valid shell."""
    try:
        lex = shlex.shlex(text, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
    except ValueError:
        return None
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    out: list[tuple[str, ...]] = []
    for words in commands:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value hpcgen ...
            words = words[1:]
        if words[:1] == ["hpcgen"]:
            out.append(tuple(words[1:]))
        elif len(words) >= 3 and PYTHON.match(words[0]) and words[1:3] == ["-m", "hpcgen"]:
            out.append(tuple(words[3:]))
    return out


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """(line, command) of a shell block: ``$`` prompts stripped, ``\\`` continuations joined; in a
    console block only the prompted lines are commands."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        line = raw.rstrip()
        if pending is None:
            stripped = line.lstrip()
            if stripped.startswith("$ "):
                line = stripped[2:]
            elif block.lang == "console":
                continue
            start, text = n, line
        else:
            start, text = pending[0], pending[1] + " " + line.lstrip()
        if text.endswith("\\"):
            pending = (start, text[:-1])
            continue
        pending = None
        if text.strip():
            out.append((start, text))
    if pending is not None:
        out.append(pending)
    return out


def inline_spans(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line, text) of every inline code span; a span may wrap over the lines of its paragraph."""
    out: list[tuple[int, str]] = []
    paragraph: list[tuple[int, str]] = []
    for number, line in prose + [(0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            text = "\n".join(t for _, t in paragraph)
            for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
                out.append((paragraph[0][0] + text.count("\n", 0, m.start()), " ".join(m.group(1).split())))
        paragraph = []
    return out


def extract(path: Path) -> tuple[list[Block], list[Command]]:
    """The YAML blocks and the hpcgen commands of one README."""
    blocks, prose = parse_markdown(path)
    yaml_blocks = [b for b in blocks if b.lang in YAML_LANGS]
    commands: list[Command] = []
    for block in blocks:
        if block.lang not in SHELL_LANGS:
            continue
        for number, text in shell_lines(block):
            found = hpcgen_commands(text)
            if found is None and "hpcgen" in text:
                commands.append(Command(block.file, number, (), text, False, error="not a valid shell line"))
            for argv in found or ():
                commands.append(Command(block.file, number, argv, text, False, block.directives))
    for number, text in inline_spans(prose):
        if STARTS_HPCGEN.match(text + " ") and not re.fullmatch(r"\S*python\S*\s+-m\s+hpcgen", text):
            for argv in hpcgen_commands(text) or [()]:
                commands.append(Command(rel(path), number, argv, text, True))
    return yaml_blocks, commands


def collect() -> tuple[list[Any], list[Any]]:
    yaml_cases, command_cases = [], []
    seen: dict[str, int] = {}

    def case_id(file: str, line: int) -> str:
        base = f"{file}:{line}"
        seen[base] = seen.get(base, 0) + 1
        return base if seen[base] == 1 else f"{base}#{seen[base]}"

    for path in readme_files():
        if not path.is_file():
            continue
        blocks, commands = extract(path)
        yaml_cases += [pytest.param(b, id=case_id(b.file, b.line)) for b in blocks]
        command_cases += [pytest.param(c, id=case_id(c.file, c.line)) for c in commands]
    return yaml_cases, command_cases


YAML_CASES, COMMAND_CASES = collect()

# --------------------------------------------------------------------------------------------
# Checks of YAML blocks


def directive_of(snippet: Block | Command) -> tuple[str, str]:
    """(kind, argument) of a snippet's readme-test comment; ("", "") without one."""
    if not snippet.directives:
        return "", ""
    if len(snippet.directives) > 1:
        pytest.fail(f"{snippet.file}:{snippet.line}: more than one readme-test comment: {snippet.directives}",
                    pytrace=False)
    kind, _, arg = snippet.directives[0].partition(" ")
    if kind not in ("profile", "keys", "skip"):
        pytest.fail(f"{snippet.file}:{snippet.line}: unknown readme-test directive {snippet.directives[0]!r} "
                    "(profile, keys or skip REASON)", pytrace=False)
    if kind == "skip":
        assert arg.strip(), f"{snippet.file}:{snippet.line}: 'readme-test: skip' needs a reason"
    return kind, arg.strip()


def mirror_root(tmp_path: Path) -> Path:
    """A directory that stands for the repository root: relative paths in snippets resolve there."""
    for name in MIRRORED:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def to_readme_lines(text: str, block: Block, offset: int) -> str:
    """Error text with the temp file's line numbers turned into the README's."""
    return re.sub(rf"\S*{re.escape(SNIPPET)}:(\d+)",
                  lambda m: f"{block.file}:{block.line + int(m.group(1)) - offset}", text)


def write_experiment(block: Block, data: dict[str, Any], root: Path) -> tuple[Path, int]:
    """The temp experiment file for a block and the number of lines written above the block's own."""
    header: list[str] = []
    if "name" not in data:  # a fragment: laid over the bundled experiment (the including file wins)
        if "include" not in data:
            header.append(f"include: [{ROOT / 'experiments.yaml'}]")
        header.append("name: readme-snippet")
    if "output_dir" not in data:
        header.append(f"output_dir: {root / 'outputs'}")
    path = root / SNIPPET
    path.write_text("".join(line + "\n" for line in header) + block.text)
    return path, len(header)


def section_aliases() -> dict[str, str]:
    """The other names of config sections that the loader accepts (``evaluate`` for ``eval``)."""
    from hpcgen.config import section_aliases as aliases

    return aliases(default_pipeline())


def key_errors(schema: Any, path: str, value: Any) -> list[str]:
    """Every key below ``value`` that ``schema`` does not have; list items of a union (the
    ``data.sources``) are checked against the member their ``format`` names."""
    members = getattr(schema, "members", None)
    if members and isinstance(value, dict) and "format" in value:
        formats = {m.model_fields["format"].default: m for m in members if "format" in m.model_fields}
        if value["format"] not in formats:
            return [f"{path}.format: no source format {value['format']!r} ({', '.join(map(str, formats))})"]
        schema = formats[value["format"]]
    errors: list[str] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            exists, child = child_schema(schema, str(key))
            if not exists:
                hint = suggest(str(key), valid_keys(schema))
                errors.append(f"{path}.{key}: no such key" + (f"; {hint}" if hint else ""))
            else:
                errors += key_errors(child, f"{path}.{key}", sub)
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        exists, item = child_schema(schema, "0")
        if exists:
            for i, sub in enumerate(value):
                errors += key_errors(item, f"{path}[{i}]", sub)
    return errors


def matrix_key_errors(model: Any, matrix: Any) -> list[str]:
    """Every axis, zip column and exclude entry of a matrix that names no key of the schema."""
    paths: list[str] = []
    for key, value in (matrix or {}).items():
        if key == "zip":
            for group in [value] if isinstance(value, dict) else value or []:
                paths += [p for p in group if p != "label"]
        elif key == "exclude":
            paths += [p for entry in value or [] for p in entry]
        elif key != "max_runs":
            paths.append(key)
    aliases = section_aliases()
    errors = []
    for p in dict.fromkeys(paths):
        head, dot, rest = p.partition(".")
        p = aliases.get(head, head) + dot + rest
        try:
            check_path(model, p)
        except ConfigError as exc:
            errors.append(f"matrix: {p}: {exc.reason}" + (f"; {exc.fix}" if exc.fix else ""))
    return errors


def schema_key_errors(data: dict[str, Any]) -> list[str]:
    """Every key of an experiment file (or fragment) that the schema does not have."""
    model = experiment_model(default_pipeline().sections())
    aliases = section_aliases()
    errors: list[str] = []
    for key, value in data.items():
        key = aliases.get(key, key)
        if key == "matrix":
            errors += matrix_key_errors(model, value)
        elif key not in ("include", "preset"):
            exists, schema = child_schema(model, key)
            if not exists:
                hint = suggest(key, list(model.model_fields))
                errors.append(f"{key}: no such section" + (f"; {hint}" if hint else ""))
            else:
                errors += key_errors(schema, key, value)
    return errors


def check_keys(block: Block, data: dict[str, Any]) -> None:
    errors = schema_key_errors(data)
    assert not errors, f"{block.file}:{block.line}: keys not in the schema: " + " | ".join(errors)


def check_profile(block: Block, tmp_path: Path) -> None:
    path = tmp_path / SNIPPET
    path.write_text(block.text)
    stages = list(default_pipeline().order)
    other_names = {section: stage for stage, section in section_aliases().items()}  # eval -> evaluate
    try:
        profiles.load(path, stages, other_names)
    except ConfigError as exc:
        pytest.fail(to_readme_lines(f"not a valid resource profile: {exc}", block, 0), pytrace=False)


@pytest.mark.parametrize("block", YAML_CASES)
def test_yaml_block(block: Block, tmp_path, capsys, monkeypatch):
    kind, reason = directive_of(block)
    if kind == "skip":
        pytest.skip(f"readme-test: skip {reason}")
    try:
        data = yaml.safe_load(block.text)
    except yaml.YAMLError as exc:
        pytest.fail(f"{block.file}:{block.line}: not valid YAML: {' '.join(str(exc).split())}", pytrace=False)
    assert isinstance(data, dict), f"{block.file}:{block.line}: a YAML block must be a mapping"
    if kind == "profile":
        check_profile(block, tmp_path)
        return
    if kind == "keys":
        check_keys(block, data)
        return
    # ``plan`` needs no cluster whatever cluster.executor says (it never resolves the executor)
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    root = mirror_root(tmp_path)
    monkeypatch.chdir(root)
    path, offset = write_experiment(block, data, root)
    capsys.readouterr()
    rc = main(["plan", str(path), "--json"])
    err = capsys.readouterr().err.strip()
    if rc != 0:
        what = "experiment file" if "name" in data else "fragment over experiments.yaml"
        bad = schema_key_errors(data)  # plan stops at the first error: name every wrong key at once
        keys = f" (keys not in the schema: {' | '.join(bad)})" if bad else ""
        pytest.fail(to_readme_lines(f"{block.file}:{block.line}: {what} fails plan (exit {rc}): {err}{keys}",
                                    block, offset), pytrace=False)


# --------------------------------------------------------------------------------------------
# Checks of commands


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def is_synopsis(argv: tuple[str, ...]) -> bool:
    """A usage line (``FILE``, ``[--json]``, ``k=v ...``), not a command to run."""
    for word in argv:
        if any(c in word for c in "[]|…") or "..." in word or word == "k=v":
            return True
        if any(re.fullmatch(r"[A-Z][A-Z0-9_]*", piece) for piece in re.split(r"[/=,@.:]", word)):
            return True
    return False


def check_options(cmd: Command, parser: argparse.ArgumentParser) -> None:
    """The subcommand exists and every --flag named is one of its options."""
    subs = subcommands(parser)
    where = f"{cmd.file}:{cmd.line}: `{cmd.text}`"
    assert cmd.argv, f"{where}: no subcommand"
    name = cmd.argv[0].strip("[]")
    assert name in subs, f"{where}: no subcommand {name!r} (hpcgen has {', '.join(subs)})"
    options = subs[name]._option_string_actions
    for word in cmd.argv[1:]:
        flag = word.strip("[]").split("=")[0]
        if flag.startswith("-") and flag not in options:
            hint = suggest(flag, [o for o in options if o.startswith("--")])
            pytest.fail(f"{where}: `hpcgen {name}` has no option {flag}" + (f"; {hint}" if hint else ""),
                        pytrace=False)


def parse(argv: tuple[str, ...]) -> tuple[argparse.Namespace | None, str]:
    """(arguments, "") or (None, argparse's error)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(list(argv)), ""
        except SystemExit:
            pass
    lines = err.getvalue().strip().splitlines()
    return None, lines[-1] if lines else "argparse refused it"


def run_cheaply(cmd: Command, args: argparse.Namespace, tmp_path: Path, capsys, monkeypatch) -> None:
    """``plan`` as is (with --json), ``submit`` as --dry-run, their output root in tmp_path."""
    argv = list(cmd.argv)
    if args.command == "plan" and not (args.json or args.sbatch):
        argv.append("--json")
    if args.command == "submit" and not args.dry_run:
        argv.append("--dry-run")
    argv += ["--set", f"output_dir={tmp_path / 'outputs'}"]
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    monkeypatch.chdir(mirror_root(tmp_path))
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 0, f"{cmd.file}:{cmd.line}: `{cmd.text}` ran as `hpcgen {shlex.join(argv)}`: exit {rc}: {err}"


@pytest.mark.parametrize("cmd", COMMAND_CASES)
def test_command(cmd: Command, tmp_path, capsys, monkeypatch):
    if cmd.error:
        pytest.fail(f"{cmd.file}:{cmd.line}: {cmd.error}: {cmd.text}", pytrace=False)
    kind, reason = directive_of(cmd)
    if kind == "skip":
        pytest.skip(f"readme-test: skip {reason}")
    assert not kind, f"{cmd.file}:{cmd.line}: 'readme-test: {kind}' is for yaml blocks"
    parser = build_parser()
    if is_synopsis(cmd.argv):
        check_options(cmd, parser)
        return
    args, error = parse(cmd.argv)
    if args is None:
        if cmd.inline and "arguments are required" in error:  # prose naming a command without its file
            check_options(cmd, parser)
            return
        pytest.fail(f"{cmd.file}:{cmd.line}: `{cmd.text}`: the CLI refuses it: {error}", pytrace=False)
    if args.command in ("plan", "submit") and (ROOT / args.file).is_file():
        run_cheaply(cmd, args, tmp_path, capsys, monkeypatch)


# --------------------------------------------------------------------------------------------
# The extraction itself


def test_no_yaml_block_is_silently_skipped():
    """Every ```yaml fence of a README is a test case, and README.md has some."""
    counts: dict[str, int] = {}
    for path in readme_files():
        if not path.is_file():
            assert rel(path) not in READMES, f"{rel(path)} is missing"
            continue
        raw = sum(1 for line in path.read_text(encoding="utf-8").splitlines()
                  if re.match(r"^\s*(`{3,}|~{3,})\s*ya?ml\b", line, re.IGNORECASE))
        counts[rel(path)] = len(extract(path)[0])
        assert counts[rel(path)] == raw, f"{rel(path)}: {raw} yaml fences, {counts[rel(path)]} extracted"
    assert counts.get("README.md", 0) > 0, f"no yaml block extracted from README.md ({counts})"
    assert sum(1 for c in YAML_CASES if c.values[0].file == "README.md") == counts["README.md"]


def test_every_directive_is_attached_to_a_block():
    """A readme-test comment that is not directly above a fence would silently do nothing."""
    stray = []
    for path in readme_files():
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if DIRECTIVE.search(line):
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or COMMENT_LINE.match(lines[j])):
                    j += 1
                if j >= len(lines) or not FENCE.match(lines[j]):
                    stray.append(f"{rel(path)}:{i + 1}")
    assert not stray, f"readme-test comments not directly above a code fence: {', '.join(stray)}"


def test_extractor_finds_commands_and_synopses(tmp_path):
    """The extractor's own rules, on a made-up README."""
    text = (
        "Run `hpcgen plan experiments.yaml` or `python -m hpcgen submit FILE [--dry-run]`; `hpcgen.def` is no\n"
        "command, nor is `python -m hpcgen` alone. A span may `hpcgen\nverify FILE` wrap.\n\n"
        "<!-- readme-test: keys -->\n```yaml\ndata: {}\n```\n\n"
        "```bash\n$ pip install x && .venv/bin/python -m hpcgen status e.yaml \\\n  --json  # comment\n"
        "sbatch job.sh; hpcgen doctor --json\n```\n"
    )
    path = tmp_path / "README.md"
    path.write_text(text)
    blocks, commands = extract(path)
    assert [(b.line, b.lang, b.directives, b.text) for b in blocks] == [(6, "yaml", ("keys",), "data: {}\n")]
    got = sorted((c.line, c.argv, c.inline) for c in commands)
    assert got == [(1, ("plan", "experiments.yaml"), True), (1, ("submit", "FILE", "[--dry-run]"), True),
                   (2, ("verify", "FILE"), True), (11, ("status", "e.yaml", "--json"), False),
                   (13, ("doctor", "--json"), False)]
    assert [is_synopsis(a) for _, a, _ in got] == [False, True, True, False, False]


def test_false_snippets_fail():
    """The checks catch what they are for: a wrong key, a source option of another format, a
    wrong flag of a synopsis, an unknown subcommand."""
    errors = schema_key_errors({"data": {"path": "x"}, "matrix": {"train.warmup": [1]}})
    assert [e.split(":")[0] for e in errors] == ["data.path", "matrix"] and "warmup_steps" in errors[1]
    errors = schema_key_errors({"data": {"sources": [{"format": "rewriting", "instructions": 5},
                                                      {"format": "niv2", "instructions": 5}]}})
    assert [e.split(":")[0] for e in errors] == ["data.sources[1].instructions"]
    assert not schema_key_errors({"data": {"sources": [{"format": "niv2", "path": "p"}]}, "train": {"lr": 1e-3},
                                  "matrix": {"zip": [{"arrange.seed": [0, 1], "label": ["a", "b"]}]}})
    for argv in [("plan", "FILE", "[--jsn]"), ("plot", "FILE")]:
        with pytest.raises((pytest.fail.Exception, AssertionError)):
            check_options(Command("X.md", 1, argv, " ".join(argv), True), build_parser())
    check_options(Command("X.md", 1, ("submit", "FILE", "[--dry-run]"), "", True), build_parser())


# --------------------------------------------------------------------------------------------
# The default experiment's measured figures


def _default_experiment() -> dict:
    import json

    return json.loads((ROOT / "benchmarks" / "results" / "default_experiment.json").read_text())


def test_the_measured_default_run_is_the_default_experiment_of_today():
    """Its figures hold for the runs ``experiments.yaml`` plans now: change the default (its data,
    arrangements, model, training) and the run ids differ, so the figures must be measured
    again (``python benchmarks/default_experiment.py``)."""
    from hpcgen.config import load_experiment

    recorded = _default_experiment()
    exp = load_experiment(ROOT / "experiments.yaml", default_pipeline(), check_output=False)
    assert sorted(recorded["run_ids"]) == sorted(r.id for r in exp.runs), (
        "experiments.yaml changed since benchmarks/results/default_experiment.json was measured: "
        "run python benchmarks/default_experiment.py and update the README's figures")


def test_the_readme_states_the_measured_default_run():
    """The README's section between ``<!-- default-experiment -->`` markers gives the measured wall
    time (``M min S s``), the machine, and every setting's early loss against the baseline, as
    ``default_experiment.json`` has them (three decimals, signed)."""
    recorded = _default_experiment()
    text = (ROOT / "README.md").read_text()
    parts = re.findall(r"<!-- default-experiment -->(.*?)<!-- /default-experiment -->", text, re.S)
    assert parts, "README.md has no <!-- default-experiment --> section"
    section = " ".join(" ".join(parts).split())
    minutes, seconds = divmod(round(recorded["wall_s"]), 60)
    assert f"{minutes} min {seconds} s" in section
    assert f"{recorded['machine']['cores']}-core" in section
    for label, delta in recorded["early_delta_vs_baseline"].items():
        assert f"{label} {delta:+.3f}".replace("-", "−") in section.replace("-", "−"), (label, delta)
