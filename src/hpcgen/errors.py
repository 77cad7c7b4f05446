"""Errors that reach the user, each with the exit code the CLI returns for it."""

from __future__ import annotations


class HpcgenError(Exception):
    """Base class: a failure the CLI reports in one line."""

    exit_code = 1


class ConfigError(HpcgenError):
    """Bad input: the experiment file, an override or a path. Exit code 2, nothing written.

    The message reads ``FILE:LINE: KEY: reason; fix`` with the parts that are known.
    """

    exit_code = 2

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.reason, self.file, self.line, self.key, self.fix = reason, file, line, key, fix
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        fix = f"; {self.fix}" if self.fix else ""
        return f"{where}{key}{self.reason}{fix}".replace("\n", " ")

    def located(self, file: str | None, line: int | None) -> ConfigError:
        """A copy that names a place, unless this one already does."""
        if self.file:
            return self
        return ConfigError(self.reason, file=file, line=line, key=self.key, fix=self.fix)


class DataError(ConfigError):
    """Bad input found in the data itself, not in the config (a record whose text embeds to NaN,
    say): exit code 2 like any bad input."""


class UpstreamError(HpcgenError):
    """An upstream node's output is missing, unreadable or stale (written by another version, or
    for other inputs than its marker says): not bad input, so exit code 1. The message names the
    upstream node (``STAGE/KEY``) and the file, and how to get a good one again.
    """

    exit_code = 1

    #: the way back to a consistent store: drop the bad markers (and those downstream), recompute
    FIX = ("hpcgen verify FILE --repair drops its marker and those downstream, then hpcgen submit FILE "
           "recomputes them")

    def __init__(self, reason: str, *, node: str | None = None, file: str | None = None,
                 fix: str | None = None) -> None:
        self.reason, self.node, self.file, self.fix = reason, node, file, fix or self.FIX
        super().__init__(self.render())

    def render(self) -> str:
        where = f"upstream {self.node}: " if self.node else "upstream: "
        what = f"{self.file}: " if self.file else ""
        return f"{where}{what}{self.reason}; {self.fix}".replace("\n", " ")

    def __reduce__(self):  # keyword-only arguments: pickled (to and from jobs) field by field
        return _upstream_error, (type(self), self.reason, self.node, self.file, self.fix)


def _upstream_error(cls, reason, node, file, fix):
    return cls(reason, node=node, file=file, fix=fix)


class DeviceError(HpcgenError):
    """A task asked for GPUs that its job cannot use (no driver, no --nv, a CPU build of torch,
    no CuPy): it stops at its start instead of running on the CPU unnoticed."""


class SubmitError(HpcgenError):
    """The scheduler refused or could not be reached."""
