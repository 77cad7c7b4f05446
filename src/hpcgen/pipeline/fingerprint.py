"""Content fingerprints of input files and directories: what keys and run ids say about inputs.

A key must follow what an input *is*, not where it lies: a checkout copied or moved elsewhere
(``cp -a``, another user's scratch space) has to find its store complete. So every local input a
config names (``InputPath``, ``ModelRef``) enters keys and run ids as ``content:<sha256>``
(``portable``), never as its absolute path, and data sources fingerprint their files the same way.

The digest of a file is the sha256 of its bytes; of a directory, the sha256 over its sorted
relative file names, each with its file's sha256. Names starting with ``.`` are left out at every
level (``.git``, ``.cache/huggingface``, editor files: never what a loader reads, and a git clone's
``.git`` would double the bytes to hash). Symbolic links are followed.

Hashing costs one read of every byte: about 700-850 MB/s on this project's 2-core build machine
with the file in the page cache (sha256 of a 400 MB file), less where the disk is slower. A 13 GB
model directory named by ``train.model`` therefore costs 15-20 s on the first ``plan`` that sees
it, and a data source's whole directory is hashed (a P3 tree read through a few ``subsets`` too).
After that nothing: each file's digest is cached by (absolute path, size, mtime in ns), in this
process and in ``$XDG_CACHE_HOME/hpcgen/digests.json`` (default ``~/.cache/hpcgen/``; written
atomically; where it cannot be written, digests are only kept in memory). Later plans stat the
files (about 2 ms for the 113 files of the bundled NIV2 sample) and hash nothing. A copy made
elsewhere hashes its files once more (its paths are new) and comes to the same digests.

The blind spot is the one the container image digest always had, as every cache keyed by
metadata: a file rewritten in place with the same size and the same modification time (to the
nanosecond, e.g. restored with ``os.utime``) keeps its old digest, hence its old keys, until its
cache entry goes: delete ``digests.json`` to have everything hashed anew. Tools that change files
set a new mtime; ``touch`` alone costs a re-hash but keeps the digest, so keys stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from hpcgen.pipeline import files

#: the prefix of a local input in keys and run ids
PREFIX = "content:"
CACHE_NAME = "digests.json"
#: where container.py kept image digests before this module (same format): read, never written
LEGACY_CACHE_NAMES = ("image-digests.json",)

_memo: dict[str, str] = {}  # "path|size|mtime_ns" -> sha256, this process
_loaded: set[str] = set()  # cache files already merged into _memo


def cache_dir() -> Path:
    """hpcgen's folder of caches: ``$XDG_CACHE_HOME/hpcgen``, default ``~/.cache/hpcgen``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpcgen"


def cache_file() -> Path:
    return cache_dir() / CACHE_NAME


def _ident(path: Path, st: os.stat_result) -> str:
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _path_of(ident: str) -> str:
    return ident.rsplit("|", 2)[0]


def _read(path: Path) -> dict[str, str]:
    try:
        known = files.read_json(path)
    except OSError:  # unreadable, or a file where the cache folder should be
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(k, str) and isinstance(v, str)}


def _load(cache: Path) -> None:
    if str(cache) in _loaded:
        return
    _loaded.add(str(cache))
    for name in (*LEGACY_CACHE_NAMES, cache.name):
        _memo.update(_read(cache.with_name(name)))


def _save(cache: Path, new: dict[str, str]) -> None:
    """Merge ``new`` into the cache file: entries of other versions of the same files and of
    files that are gone are dropped. Another process writing at the same time may win; that only
    costs a later re-hash."""
    paths = {_path_of(k) for k in new}
    kept = {k: v for k, v in _read(cache).items() if _path_of(k) not in paths and os.path.exists(_path_of(k))}
    kept.update(new)
    with contextlib.suppress(OSError):  # unwritable: the digests stay in this process only
        files.write_json(cache, kept)


def _file_digest(path: Path, st: os.stat_result, new: dict[str, str]) -> str:
    ident = _ident(path, st)
    digest = _memo.get(ident)
    if digest is None:
        digest = files.sha256_file(path)
        _memo[ident] = new[ident] = digest
    return digest


def file_digest(path: Path | str) -> str:
    """sha256 of a file's bytes, computed once per (absolute path, size, mtime) and cached."""
    return content_digest(path)


def _walk(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Every file under ``root`` by relative name: links followed (a link back up the tree is
    left out), hidden names skipped."""
    out: list[tuple[str, Path, os.stat_result]] = []

    def visit(folder: str, rel: str, ancestors: frozenset[str]) -> None:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith("."))
        for name in names:
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError:  # a dangling link, or gone since the listing
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((rel + name, Path(full), st))
            elif stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(full)
                if real not in ancestors:
                    visit(full, f"{rel}{name}/", ancestors | {real})

    visit(str(root), "", frozenset({os.path.realpath(root)}))
    out.sort(key=lambda t: t[0])
    return out


def content_digest(path: Path | str) -> str:
    """sha256 of a file's bytes, or of a directory's sorted relative file names and their files'
    sha256 (see the module docstring). OSError where ``path`` is neither."""
    root = Path(os.path.abspath(Path(path).expanduser()))
    cache = cache_file()
    _load(cache)
    new: dict[str, str] = {}
    try:
        st = root.stat()
        if stat.S_ISREG(st.st_mode):
            return _file_digest(root, st, new)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{root} is neither a file nor a directory")
        digest = hashlib.sha256(b"hpcgen-dir-v1\n")
        for rel, full, fst in _walk(root):
            digest.update(f"{rel}\0{_file_digest(full, fst, new)}\n".encode())
        return digest.hexdigest()
    finally:
        if new:
            _save(cache, new)


def portable(value: str) -> str:
    """``content:<digest>`` for an absolute path that exists here; anything else (hub names,
    ``hf://...``, relative names, missing paths) as it is. Validation made every local input
    absolute, so only hub names stay names: ``sentence-transformers/all-MiniLM-L6-v2`` keys as
    that name in any venv, though it resolves to a package directory at run time."""
    if not value.startswith(("/", "~")) or "://" in value:
        return value
    try:
        return PREFIX + content_digest(value)
    except OSError:
        return value
