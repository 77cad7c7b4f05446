"""Building blocks of every config model: the frozen ``Model`` base and the value types that
reach sbatch scripts or name directories (``SafeStr``, ``Slug``, ``Minutes``, ``MemMB``, sbatch
options).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict


def no_control(value: str) -> str:
    """``value``, unless it holds a newline or another control character (ValueError)."""
    # Anything here may reach an sbatch script, which is a shell script: a newline in a
    # partition name would be a command.
    bad = [c for c in value if ord(c) < 32 or ord(c) == 127]
    if bad:
        name = "a newline" if "\n" in bad or "\r" in bad else f"control character {ord(bad[0]):#04x}"
        raise ValueError(f"contains {name}, which would break the generated sbatch script")
    return value


SafeStr = Annotated[str, AfterValidator(no_control)]

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(
            "must be 1-100 letters, digits, '.', '_', '+' or '-', starting with a letter or digit "
            "(it names a directory under the output root and must not escape it)"
        )
    return value


Slug = Annotated[str, AfterValidator(_slug)]

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_minutes(value: Any) -> int:
    """Slurm time formats to whole minutes: 90, "90", "1:30:00", "2-00:00:00", "2-12"."""
    if isinstance(value, bool):
        raise ValueError("must be minutes or a Slurm time such as '1:30:00' or '2-00:00:00'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m:
            days, a, b, c = m.groups()
            d = int(days or 0)
            if days and b is None:  # D-HH
                h, mi, s = int(a), 0, 0
            elif days:  # D-HH:MM[:SS]
                h, mi, s = int(a), int(b), int(c or 0)
            elif c is not None:  # HH:MM:SS
                h, mi, s = int(a), int(b), int(c)
            elif b is not None:  # MM:SS
                h, mi, s = 0, int(a), int(b)
            else:  # MM
                h, mi, s = 0, int(a), 0
            total = d * 1440 + h * 60 + mi + (1 if s else 0)
            if total > 0:
                return total
    raise ValueError("must be minutes or a Slurm time such as '1:30:00' or '2-00:00:00'")


Minutes = Annotated[int, BeforeValidator(parse_minutes)]

_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)
_MEM_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_mem_mb(value: Any) -> int:
    """Memory to whole MiB: 4096 (MiB), "16G", "500M", "1.5T"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _MEM.match(value.strip())
        if m:
            mb = float(m.group(1)) * _MEM_MB[m.group(2).upper()]
            if mb >= 1:
                return int(round(mb))
    raise ValueError("must be MiB or a size such as '16G' or '500M'")


MemMB = Annotated[int, BeforeValidator(parse_mem_mb)]

_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


def _sbatch_key(key: str) -> str:
    if not _SBATCH_KEY.match(key):
        raise ValueError(f"sbatch option {key!r} must be a long option name such as 'constraint'")
    return key


def _sbatch_value(value: Any) -> Any:
    if isinstance(value, str):
        no_control(value)
    return value


SbatchKey = Annotated[str, AfterValidator(_sbatch_key)]
SbatchValue = Annotated[bool | int | float | str, AfterValidator(_sbatch_value)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Jobs unpickle the config they were queued with. If hpcgen gained a setting since, the
        # pickle lacks it: give it its default instead of failing on a missing attribute.
        super().__setstate__(state)
        for name, info in type(self).model_fields.items():
            if name not in self.__dict__:
                self.__dict__[name] = info.get_default(call_default_factory=True)
