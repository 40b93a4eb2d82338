"""Re-record tests/services/recorded/ from the real cluster (as root, cluster up)::

    .venv/bin/python -m tests.services.record

It runs, as alice, exactly the argument vectors :class:`~hpcgate.schedulers.slurm.Slurm`
builds: her queue with one held job, the controller's view of that job, accounting's
record of a job that ended with exit code 3, and the node counts. The per-call delimiter
in each argv and output is saved as ``{DELIMITER}``; the replay puts the new call's in.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from hpcgate.accounts import UnixAccount
from hpcgate.process import Completed, Limits
from hpcgate.runners.local import LocalRunner
from hpcgate.runners.replay import save_recording
from hpcgate.schedulers.slurm import Slurm
from tests.services.recordings import DIRECTORY, PLACEHOLDER, delimiter_in

LIMITS = Limits(timeout=30, output_bytes=1 << 20)


def generic(result: Completed) -> Completed:
    """``result`` with its call's delimiter replaced by the placeholder."""
    delimiter = delimiter_in(result.argv)
    if delimiter is None:
        return result
    return Completed(
        tuple(arg.replace(delimiter, PLACEHOLDER) for arg in result.argv),
        result.returncode,
        result.stdout.replace(delimiter, PLACEHOLDER),
        result.stderr,
    )


async def record() -> None:
    alice = UnixAccount.lookup("alice")
    runner, slurm = LocalRunner(), Slurm()

    async def run(argv: list[str]) -> Completed:
        return await runner.run(alice, argv, limits=LIMITS)

    async def sbatch(*options: str) -> str:
        done = await run(["sbatch", "--parsable", "--output=/dev/null", *options])
        assert done.ok, done.stderr
        return slurm.parse_submit(done)

    ended = await sbatch("--job-name=recorded | ended", "--wrap=exit 3")
    held = await sbatch("--hold", "--job-name=recorded held", "--wrap=true")
    try:
        deadline = time.monotonic() + 120
        while True:  # until accounting's record of the ended job is settled
            history = await run(slurm.history_argv(ended))
            if slurm.history_is_final(ended, slurm.parse_history(history)):
                break
            if time.monotonic() > deadline:
                sys.exit(f"job {ended}'s accounting record did not settle")
            await asyncio.sleep(0.5)
        recordings = {
            "queue": await run(slurm.queue_argv(alice.name)),
            "live-held": await run(slurm.live_job_argv(held)),
            "history-ended": history,
            "nodes": await run(slurm.nodes_argv()),
        }
    finally:
        await run(["scancel", "--", held])
    DIRECTORY.mkdir(exist_ok=True)
    for name, result in recordings.items():
        save_recording(DIRECTORY / f"{name}.json", generic(result))
    about = {"user": alice.name, "uid": alice.uid, "ended": ended, "held": held}
    (DIRECTORY / "about.json").write_text(json.dumps(about, indent=1) + "\n")
    print(f"recorded {', '.join(recordings)} in {DIRECTORY}")


if __name__ == "__main__":
    asyncio.run(record())
