"""Command line: submit | plan | status | cancel | logs | verify | report | arrange | doctor.

Exit codes: 0 ok, 1 failed work, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpcgen.config import Experiment, load_experiment
from hpcgen.errors import ConfigError, HpcgenError
from hpcgen.pipeline import executors
from hpcgen.pipeline.graph import Graph, build_graph, run_cluster
from hpcgen.pipeline.registry import Pipeline
from hpcgen.version import __version__


def load_pipeline() -> Pipeline:
    """The stages to run: hpcgen's own, or ``$HPCGEN_PIPELINE`` (``module:attribute``)."""
    spec = os.environ.get("HPCGEN_PIPELINE")
    if not spec:
        from hpcgen.stages import default_pipeline

        return default_pipeline()
    module, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr or "PIPELINE")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load pipeline {spec!r} ({exc})", key="HPCGEN_PIPELINE",
                          fix="set it to module:attribute of a hpcgen Pipeline") from None
    return obj() if callable(obj) else obj


def _load(args: argparse.Namespace, pipeline: Pipeline, check_output: bool = True) -> tuple[Experiment, Graph]:
    exp = load_experiment(args.file, pipeline, args.set or (), check_output=check_output)
    return exp, build_graph(exp, pipeline)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _resources(r: dict) -> str:
    parts = []
    if r.get("nodes", 1) > 1:
        parts.append(f"{r['nodes']} nodes")
    if r.get("tasks_per_node", 1) > 1:
        parts.append(f"{r['tasks_per_node']} tasks/node")
    parts.append(f"{r.get('cpus', 1)} cpu")
    if r.get("gpus"):
        parts.append(f"{r['gpus']} gpu")
    if r.get("mem"):
        parts.append(_human_bytes(r["mem"] * 1024 * 1024))
    if r.get("time"):
        parts.append(f"{r['time']} min")
    if r.get("partition"):
        parts.append(f"@{r['partition']}")
    return ", ".join(parts)


def cmd_plan(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    exp, graph = _load(args, pipeline, check_output=False)
    from hpcgen.pipeline.submit import check_inputs

    check_inputs(exp, graph)
    data = graph.to_dict()
    if args.sbatch:
        from hpcgen.config.schema import signal_delay
        from hpcgen.pipeline.container import python_command
        from hpcgen.pipeline.executors.slurm import render_script, sbatch_parameters
        from hpcgen.pipeline.status import stage_list

        nodes = [n for n in graph.nodes.values() if n.stage.name == args.sbatch]
        if not nodes:
            raise ConfigError(f"no stage {args.sbatch!r} in this experiment's graph", key="--sbatch",
                              fix=f"choose one of: {stage_list(graph)}")
        params = sbatch_parameters(nodes[0].resources, job_name=f"{exp.name}.{args.sbatch}",
                                   dependency=[], signal_delay_s=signal_delay(nodes[0].resources))
        size = sum(n.size for n in nodes if n.resources == nodes[0].resources)
        print(render_script(params, exp.dir / "logs" / args.sbatch, size,
                            python_command(exp.cluster.container, nodes[0].resources.gpus or 0)))
        return 0
    if args.json:
        # compact unless a person reads it: the indenting encoder is 10x slower on big matrices
        print(json.dumps(data, indent=1 if sys.stdout.isatty() else None, default=str))
        return 0
    runs = Table(title=f"{exp.name}: {len(exp.runs)} run(s)", title_justify="left")
    labelled = any(r.label for r in exp.runs)
    runs.add_column("run id")
    if labelled:
        runs.add_column("label")
    runs.add_column("name")
    shown = exp.runs if len(exp.runs) <= args.max_rows else exp.runs[: args.max_rows]
    for run in shown:
        runs.add_row(run.id, *([run.label or ""] if labelled else []), run.name)
    out.print(runs)
    if len(shown) < len(exp.runs):
        out.print(f"... and {len(exp.runs) - len(shown)} more run(s) (--json lists all)")
    node_table = Table(title=f"{len(graph.nodes)} stage node(s), {graph.n_tasks()} task(s)", title_justify="left")
    for col in ("stage", "key", "tasks", "runs", "after", "resources", "GPU-h", "disk"):
        node_table.add_column(col, justify="right" if col in ("tasks", "runs", "GPU-h", "disk") else "left")
    node_rows = data["nodes"] if len(data["nodes"]) <= args.max_rows * 2 else data["nodes"][: args.max_rows * 2]
    for n in node_rows:
        after = ", ".join(u.split("/")[0] + "/" + u.split("/")[1][:8] for u in n["upstream"][:3])
        if len(n["upstream"]) > 3:
            after += f" +{len(n['upstream']) - 3}"
        node_table.add_row(n["stage"], n["key"][:8], str(n["array_size"]), str(len(n["runs"])), after,
                           _resources(n["resources"]), f"{n['gpu_hours']:.1f}", _human_bytes(n["disk_bytes"]))
    out.print(node_table)
    if len(node_rows) < len(data["nodes"]):
        out.print(f"... and {len(data['nodes']) - len(node_rows)} more node(s) (--json lists all)")
    t = data["totals"]
    out.print(f"total: {t['tasks']} task(s), at most {t['gpu_hours']:.1f} GPU-hours, "
              f"{_human_bytes(t['disk_bytes'])} of checkpoints; output root {exp.output_dir}")
    for path, users in _profiles_in_use(exp, pipeline).items():
        out.print(f"resource profile {path}: {', '.join(users)}", highlight=False)
    if exp.cluster.container is not None:
        out.print(f"container: {exp.cluster.container.image}", highlight=False)
    return 0


def _profiles_in_use(exp: Experiment, pipeline: Pipeline) -> dict[str, list[str]]:
    """Resource profile file -> the stages that take their resources from it."""
    from hpcgen.config.profiles import chosen

    used: dict[str, list[str]] = {}
    for stage in pipeline:
        for run in exp.runs:
            path = chosen(getattr(run.config, stage.section).resources if stage.section else None, run_cluster(run))
            if path:
                if stage.name not in used.setdefault(path, []):
                    used[path].append(stage.name)
    return used


def cmd_submit(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    from hpcgen.pipeline.submit import submit

    exp, graph = _load(args, pipeline)
    if args.until:
        if not any(n.stage.name == args.until for n in graph.nodes.values()):
            from hpcgen.pipeline.status import stage_list

            raise ConfigError(f"no stage {args.until!r} in this experiment's graph", key="--until",
                              fix=f"choose one of: {stage_list(graph)}")
        graph = graph.until(args.until)
    return submit(exp, pipeline, graph, executor_name=args.executor, force=args.force,
                  dry_run=args.dry_run, console=out)


def cmd_status(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    from hpcgen.pipeline.status import STATES, summarize, task_states
    from hpcgen.pipeline.store import Store

    exp, graph = _load(args, pipeline, check_output=False)
    states = task_states(graph, Store(exp.store))
    per_stage = summarize(graph, states)
    if args.json:
        print(json.dumps({"stages": {k: dict(v) for k, v in per_stage.items()},
                          "tasks": [dataclasses.asdict(s) for s in states]}, indent=1))
        return 0
    table = Table(title=f"{exp.name}: {len(states)} task(s)", title_justify="left")
    table.add_column("stage")
    for column in STATES:
        table.add_column(column, justify="right")
    for stage, counts in per_stage.items():
        table.add_row(stage, *[str(counts.get(column, 0) or "") for column in STATES])
    out.print(table)
    for s in states:
        if s.state in ("failed", "cancelled"):
            out.print(f"[red]{s.state}[/] {s.id} {s.job_id or ''} {s.detail}".rstrip(), highlight=False)
    return 0


def cmd_cancel(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    from hpcgen.pipeline.status import cancel
    from hpcgen.pipeline.store import Store

    exp, graph = _load(args, pipeline, check_output=False)
    count, how = cancel(graph, Store(exp.store))
    out.print(f"cancelled {count} task(s): {how}")
    return 0


def cmd_logs(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    from hpcgen.pipeline.status import find_task, log_paths
    from hpcgen.pipeline.store import Store, read_json

    exp, graph = _load(args, pipeline, check_output=False)
    store = Store(exp.store)
    stage, key, index = find_task(graph, args.task, pipeline)
    paths = log_paths(store, stage, key, index)
    attempt = read_json(store.attempt(stage, key, index)) or {}
    print(f"# task {stage}/{key}/{index:05d}: {attempt.get('state', 'never run')}"
          + (f" ({attempt['error']})" if attempt.get("error") else ""))
    if not paths:
        print("# no logs: this task was never submitted")
        return 0
    for path in paths:
        print(f"# {path}")
        try:
            text = Path(path).read_text(errors="replace")
        except FileNotFoundError:
            print("# (not written yet)")
            continue
        lines = text.splitlines()
        for line in lines[-args.tail:] if args.tail else lines:
            print(line)
    return 0


def cmd_verify(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    """Re-hash every complete task's outputs; with --repair drop what no longer matches."""
    from hpcgen.pipeline.store import Store
    from hpcgen.pipeline.verify import repair, verify

    exp, graph = _load(args, pipeline, check_output=False)
    store = Store(exp.store)
    result = verify(graph, store)
    for m in result.mismatches:
        print(str(m))
    summary = (f"{exp.name}: {result.tasks} complete task(s), {result.files} file(s), "
               f"{_human_bytes(result.bytes)} re-hashed: ")
    if not result.mismatches:
        out.print(summary + "every output matches its marker", highlight=False)
        return 0
    tasks = sorted({m.task for m in result.mismatches})
    if not args.repair:
        out.print(summary + f"{len(result.mismatches)} output(s) of {len(tasks)} task(s) no longer match; "
                  f"hpcgen verify {args.file} --repair drops their markers and those downstream", highlight=False)
        return 1
    dropped = repair(graph, store, result.mismatches)
    out.print(summary + f"{len(result.mismatches)} output(s) of {len(tasks)} task(s) no longer matched; dropped "
              f"{len(dropped)} marker(s) (theirs and those downstream): hpcgen submit {args.file} recomputes them",
              highlight=False)
    return 0


def cmd_report(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    """Rebuild the report from what is on disk now (finished or not): the aggregate stage's own
    ``report`` on each aggregate node's upstreams and metadata, as its job would get them."""
    from hpcgen.contracts import report as contract
    from hpcgen.pipeline.store import Store
    from hpcgen.pipeline.submit import task_specs
    from hpcgen.stages.aggregate import Aggregate

    exp, graph = _load(args, pipeline, check_output=False)
    store = Store(exp.store)
    nodes = [(n, n.stage) for n in graph.nodes.values() if isinstance(n.stage, Aggregate)]
    if not nodes:
        raise ConfigError("this experiment's pipeline has no aggregate stage", key="report")
    for node, stage in nodes:  # one per distinct report section; several each get their own folder
        folder = exp.dir / contract.REPORT if len(nodes) == 1 else exp.dir / contract.REPORT / node.key
        spec = task_specs(graph, store, node)[0]
        result = stage.report(spec.extra, spec.inputs, folder, node.config.report)
        out.print(f"report of {len(result['runs'])} of {len(exp.runs)} run(s): {folder / contract.HTML}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hpcgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, file_positional: bool = True) -> None:
        if file_positional:
            p.add_argument("file", help="experiment YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key (repeatable); pins a matrix axis")

    p = sub.add_parser("submit", help="run or queue every incomplete task of an experiment")
    common(p)
    p.add_argument("--dry-run", action="store_true", help="say what would run; write nothing")
    p.add_argument("--executor", choices=executors.choices(), help="override cluster.executor")
    p.add_argument("--force", action="append", metavar="STAGE", help="recompute STAGE and what depends on it")
    p.add_argument("--until", metavar="STAGE", help="only STAGE and what it needs")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("plan", help="show runs, stage tasks, dependencies, resources, GPU-hours and disk")
    common(p)
    p.add_argument("--json", action="store_true", help="the graph as JSON")
    p.add_argument("--sbatch", metavar="STAGE", help="print the sbatch script of STAGE's array")
    p.add_argument("--max-rows", type=int, default=25, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="done / running / pending / failed per stage")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel the experiment's queued and running tasks")
    common(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("verify", help="re-hash every complete task's outputs against its marker")
    common(p)
    p.add_argument("--repair", action="store_true",
                   help="drop the markers of what no longer matches, and of everything downstream")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("report", help="rebuild the report (curves, plots, HTML) from what is on disk")
    common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("logs", help="print a task's logs: STAGE, STAGE/KEY[/INDEX] or STAGE@RUN")
    p.add_argument("task")
    p.add_argument("-f", "--file", default="experiments.yaml", help="experiment YAML file")
    p.add_argument("--tail", type=int, default=0, help="only the last N lines of each log")
    common(p, file_positional=False)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("arrange", help="order a training table by a test table (TMA or any strategy); no "
                       "experiment file", description="Write TRAIN's rows in training order to OUT, with the columns "
                       "hpcgen_position and hpcgen_round, and a sidecar OUT.hpcgen.json. TRAIN and TEST are JSONL, "
                       "Parquet, a datasets save_to_disk directory or hf://NAME[:split].")
    p.add_argument("train", metavar="TRAIN", help="the training rows")
    p.add_argument("test", metavar="TEST", help="the test rows they are arranged for")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="where the ordered rows go (format: by extension .jsonl/.parquet, a trailing / for a "
                        "datasets directory, else TRAIN's)")
    p.add_argument("--strategy", default="tma",
                   help="a strategy of the arrange stage (default tma; tma, nft, fft, random, ...)")
    p.add_argument("--prompt-field", default="prompt", metavar="NAME", help="the prompt column (default prompt)")
    p.add_argument("--answer-field", default="answer", metavar="NAME",
                   help="the answer column (default answer); prompt and answer are embedded joined by a space")
    p.add_argument("--text-template", metavar="TEMPLATE",
                   help="the text to embed from any fields, e.g. '{instruction} {input} {output}'")
    p.add_argument("--task-field", metavar="NAME", help="a column naming each row's task (optional)")
    p.add_argument("--model", metavar="NAME|DIR", help="sentence-transformers model (default: all-MiniLM-L6-v2, "
                   "offline)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any setting of the stages, e.g. arrange.direction=reverse, embed.batch_size=256")
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="where the stages' outputs are kept and reused (default ~/.cache/hpcgen/arrange)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where embed and similarity run: auto (a GPU where one is visible), cpu, cuda")
    p.add_argument("--executor", default="local", choices=["local", "debug"],
                   help="local: tasks in subprocesses (default); debug: in this process")
    p.set_defaults(func=cmd_arrange)

    p = sub.add_parser("doctor", help="what this node or image can run: GPUs, CUDA, CuPy, DeepSpeed ops, Slurm")
    p.add_argument("--require-gpu", action="store_true", help="fail unless a GPU works (bf16, CuPy)")
    p.add_argument("--require-cuda-build", action="store_true", help="fail unless torch is a CUDA build")
    p.add_argument("--require-ops", metavar="OP,OP", default="",
                   help="fail unless these DeepSpeed ops are pre-built (e.g. fused_adam,cpu_adam,utils)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
    return parser


def cmd_arrange(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    from hpcgen.standalone import Fields, arrange_files

    fields = Fields(args.prompt_field, args.answer_field, args.text_template, args.task_field)
    result = arrange_files(args.train, args.test, args.output, fields, strategy=args.strategy, model=args.model,
                           overrides=args.set or (), store=args.store, executor=args.executor,
                           device=args.device, console=Console(stderr=True))
    rounds = result.sidecar.get("rounds")
    out.print(f"{args.output}: {len(result.order)} rows in {args.strategy} order"
              + (f", {rounds} rounds" if rounds else "") + f" ({result.sidecar['seconds']:.1f} s)", highlight=False)
    return 0


def cmd_doctor(args: argparse.Namespace, pipeline: Pipeline, out: Console) -> int:
    import hpcgen.doctor as doctor

    info = doctor.collect()
    missing = doctor.problems(info, gpu=args.require_gpu, cuda_build=args.require_cuda_build,
                              ops=tuple(op for op in args.require_ops.split(",") if op.strip()))
    if args.json:
        print(json.dumps({**info, "problems": missing}, indent=1, default=str))
    else:
        for line in doctor.render(info):
            out.print(line, highlight=False)
    for problem in missing:
        print(f"missing: {problem}", file=sys.stderr)
    return 1 if missing else 0


def canonical_stages(args: argparse.Namespace, pipeline: Pipeline) -> None:
    """Stage names as options give them, by either spelling (``eval`` or ``evaluate``: a config
    section or the stage that owns it), turned into the stage's own name; ``logs`` TASK's STAGE
    is turned in ``find_task``. Unknown names stay as they are, for the command to report."""
    if getattr(args, "force", None):
        args.force = list(dict.fromkeys(pipeline.canonical(s) for s in args.force))
    for option in ("until", "sbatch"):
        if getattr(args, option, None):
            setattr(args, option, pipeline.canonical(getattr(args, option)))


def _stdout_gone() -> int:
    """Whoever read stdout has gone (``hpcgen logs X | head``): stop quietly, no traceback.

    Exit status 141 (128 + SIGPIPE) is what ``git log | head`` and the other Unix tools leave,
    since they are killed by SIGPIPE: a shell ignores it unless ``pipefail`` is set. Stdout now
    points at /dev/null, so that flushing what is still buffered at exit cannot fail again (the
    recipe of the Python docs, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 141


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Rich's own ends the process with status 1; ``main`` does it as for ``print``."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "stdout is closed")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Console(stderr=False, soft_wrap=True)
    try:
        pipeline = load_pipeline()
        canonical_stages(args, pipeline)
        code = args.func(args, pipeline, out)
        sys.stdout.flush()  # a reader that has gone shows here, inside the try, not at exit
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except HpcgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        fix = "free space or choose another output_dir" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "fix the permissions or choose another output_dir"
        print(f"error: {where}{exc.strerror}; {fix} (nothing done is marked complete: submit again after)",
              file=sys.stderr)
        return 1
