"""Where a gateway's time goes under a load: py-spy on a real ``hpcgate serve``.

    .venv/bin/python -m bench.profile [--path /api/job] [--concurrency 64] [--seconds 8]
                                      [--svg profile.svg] [--top 40]
                                      [--submit] [--runner local-helper] [--submit-path rpc]

Needs root and ``py-spy`` in the venv (``.venv/bin/pip install py-spy``). Starts one
gateway with the settings of ``bench.vs_slurmrestd`` (embedded monitor, snapshots), puts
``--concurrency`` keep-alive connections on ``--path`` as alice, samples the gateway's
stacks with py-spy meanwhile, and prints the share of samples each function is on the
stack for (inclusive) and on top of it (self), the two views a flame graph gives.
``--svg`` also writes the flame graph. With ``--submit`` the load is ``POST /api/job``
with the submit scenario's script of ``bench.vs_slurmrestd`` (held jobs, cancelled after).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import Gateway, RawConnection, host_port
from bench.vs_slurmrestd import CONFIG, SCRIPT, cancel_submitted, cell


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def summarise(collapsed: Path, top: int) -> str:
    """Inclusive and self shares per function from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")[1:]]  # [0] is the process
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    lines = [f"{total} samples", "", "inclusive  self  function"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{count / total:8.1%} {own[frame] / total:6.1%}  {frame}")
    lines += ["", "top self:"]
    for frame, count in own.most_common(top // 2):
        lines.append(f"{count / total:6.1%}  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``handle (uvicorn/protocols/http/httptools_impl.py:123)`` without the line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="/api/job")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--svg", help="also write a flame graph here")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    parser.add_argument("--submit", action="store_true", help="POST /api/job instead of GETs")
    parser.add_argument("--runner", default="local", help="local or local-helper")
    parser.add_argument("--submit-path", default="sbatch", choices=("sbatch", "rpc"))
    args = parser.parse_args()
    form = urllib.parse.urlencode({"jobscript": SCRIPT}).encode()

    config = CONFIG.format(runner=args.runner, submit=args.submit_path)
    with Gateway(config) as gateway:
        time.sleep(6)  # a first snapshot
        host, port = host_port(gateway.url)
        headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
        for extra in args.header:
            name, _, value = extra.partition(":")
            headers[name.strip()] = value.strip()
        assert gateway.process is not None
        raw = Path(tempfile.mkdtemp(prefix="hpcgate-profile-")) / "stacks.txt"
        record = [py_spy(), "record", "--pid", str(gateway.process.pid), "--rate", "250"]
        record += ["--duration", str(int(args.seconds)), "--nonblocking"]
        spy = subprocess.Popen(
            [*record, "--format", "raw", "-o", str(raw)], stderr=subprocess.DEVNULL
        )
        svg = None
        if args.svg:
            svg = subprocess.Popen([*record, "-o", args.svg], stderr=subprocess.DEVNULL)

        async def get(c: RawConnection) -> bool:
            if args.submit:
                kind = "application/x-www-form-urlencoded"
                return (await c.request("POST", "/api/job/ln3", form, kind))[0] == 200
            return await c.get(args.path) in (200, 304)

        samples = asyncio.run(
            cell(lambda: RawConnection(host, port, headers), get, args.concurrency, args.seconds)
        )
        spy.wait()
        if svg is not None:
            svg.wait()
    if args.submit:
        cancel_submitted()
    print(
        f"{'POST /api/job/ln3' if args.submit else args.path} at {args.concurrency}: "
        f"{samples.rate:.0f} req/s, "
        f"p50 {samples.median * 1000:.1f} ms, p99 {samples.percentile(99) * 1000:.1f} ms, "
        f"{samples.errors} errors (under py-spy)\n"
    )
    print(summarise(raw, args.top))


if __name__ == "__main__":
    main()
