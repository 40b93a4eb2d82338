"""Real Slurm output recorded on the test cluster (tests/services/record.py), replayed.

Slurm's listings are printed with a delimiter made for each call and named in its argv;
recordings keep ``{DELIMITER}`` in its place, and :func:`replayed` answers a call with the
recording's output under that call's own delimiter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpcgate.process import Completed
from hpcgate.runners.replay import Call, load_recording

DIRECTORY = Path(__file__).parent / "recorded"
PLACEHOLDER = "{DELIMITER}"
_DELIMITER = re.compile("\x1f[0-9a-f]{16}\x1f")  # as hpcgate.schedulers.slurm makes them


def delimiter_in(argv: Sequence[str]) -> str | None:
    """The per-call delimiter named in ``argv``, if there is one."""
    for argument in argv:
        found = _DELIMITER.search(argument)
        if found is not None:
            return found.group()
    return None


def recording(name: str) -> Completed:
    """The recording ``name`` (e.g. ``queue``), with the placeholder still in it."""
    return load_recording(DIRECTORY / f"{name}.json")


def about() -> dict[str, Any]:
    """Who and which jobs the recordings are of: user, uid, ended and held job ids."""
    data: dict[str, Any] = json.loads((DIRECTORY / "about.json").read_text())
    return data


def generic_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """``argv`` with its delimiter replaced by the placeholder, to compare with a recording."""
    delimiter = delimiter_in(argv)
    if delimiter is None:
        return tuple(argv)
    return tuple(argument.replace(delimiter, PLACEHOLDER) for argument in argv)


def replayed(name: str) -> Callable[[Call], Completed]:
    """An answer for a replay rule: recording ``name`` in the delimiter of each call."""
    recorded = recording(name)

    def answer(call: Call) -> Completed:
        delimiter = delimiter_in(call.argv) or PLACEHOLDER
        return Completed(
            call.argv,
            recorded.returncode,
            recorded.stdout.replace(PLACEHOLDER, delimiter),
            recorded.stderr,
        )

    return answer
