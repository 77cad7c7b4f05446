"""The files stages exchange: one module per stage output, with its writer, its reader and its layout.

    output        producer    files in store/STAGE/KEY/                          module
    records       prepare     records.parquet, summary.json, contamination.json  hpcgen.contracts.records
    embeddings    embed       embeddings-SSSSS.h5                                hpcgen.similarity.h5
    distances     similarity  similarity-BBBBB.h5, distances.h5, embeddings.h5   hpcgen.similarity.h5
    arrangement   arrange     arrangement.h5                                     hpcgen.contracts.arrangement
    snapshots     train       snapshots.json, summary.json, metrics.jsonl        hpcgen.contracts.snapshots
    losses        evaluate    losses-IIIII.h5                                    hpcgen.contracts.losses
    report        aggregate   report/                                            hpcgen.contracts.report

The embeddings and distances contracts stay in ``hpcgen.similarity.h5``, next to the kernels
that fill them (the similarity stage reads the embed stage's shards in slabs there); the folders a
snapshot entry points at (model or adapter weights, tokenizer, snapshot.json) are
``hpcgen.training.snapshot``'s. Each module's docstring is the file's documentation: datasets or
columns, shapes, dtypes and attributes. The producer writes through the module's writer and every
consumer reads through its reader, so a format is defined in one place.

A reader takes the upstream node (``task.input(stage)``, an ``Upstream``) or its directory. An
output that is missing, unreadable or not what the writer writes is an ``UpstreamError`` naming
the node and the file (never a ``ConfigError``: the experiment file is not at fault).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcgen.errors import UpstreamError

#: an upstream node (``hpcgen.pipeline.stage.Upstream``, or anything with ``dir``) or its directory
Node = Any


def node_dir(node: Node) -> Path:
    return Path(node.dir if hasattr(node, "dir") else node)


def node_name(node: Node) -> str:
    """``STAGE/KEY`` of a node: from the Upstream, else from its directory (store/STAGE/KEY)."""
    stage, key = getattr(node, "stage", None), getattr(node, "key", None)
    if stage and key:
        return f"{stage}/{key}"
    folder = node_dir(node)
    return f"{folder.parent.name}/{folder.name}"


def upstream_error(node: Node, name: str, reason: str, fix: str | None = None) -> UpstreamError:
    """The error for file ``name`` of ``node``: it names both, and the fix (by default: verify
    --repair, then submit again)."""
    return UpstreamError(reason, node=node_name(node), file=str(node_dir(node) / name), fix=fix)


def require(node: Node, name: str) -> Path:
    """The path of output ``name`` of ``node``, which must exist."""
    path = node_dir(node) / name
    if not path.exists():
        raise upstream_error(node, name, "is missing")
    return path
