"""A spy on what is sent to slurmctld: a small C library, built against Slurm's own
``slurm.h``, that dumps a ``job_desc_msg_t`` as JSON.

Preloaded into ``sbatch`` (``LD_PRELOAD``) it replaces ``slurm_submit_batch_job``: the
description sbatch built is written to ``$HPCGATE_SPY_OUT`` and sbatch exits before
anything reaches the controller. Loaded with ctypes, its ``hpcgate_spy_dump`` writes the
description :mod:`hpcgate.schedulers.slurm_rpc` built, through the same code. Its source
is generated from ``slurm_rpc.JobDescriptor``, with one compile-time check per field that
the ctypes layout is the header's (offset, size and the whole struct's size): a layout
that drifted from ``slurm.h`` does not compile.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

from hpcgate.schedulers import slurm_rpc

HEADER = Path("/usr/include/slurm/slurm.h")
_COUNTED = {"argv": "argc", "environment": "env_size", "spank_job_env": "spank_job_env_size"}

_PRELUDE = r"""
#define _GNU_SOURCE
#include <slurm/slurm.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void text(FILE *f, const char *s)
{
    if (!s) { fputs("null", f); return; }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void texts(FILE *f, char **v, unsigned n)
{
    if (!v) { fputs("null", f); return; }
    fputc('[', f);
    for (unsigned i = 0; i < n; i++) { if (i) fputc(',', f); text(f, v[i]); }
    fputc(']', f);
}

static void hash(FILE *f, const slurm_hash_t *h)
{
    fprintf(f, "\"%u:", h->type);
    for (int i = 0; i < 32; i++) fprintf(f, "%02x", h->hash[i]);
    fputc('"', f);
}
"""

_SUBMIT = r"""
int slurm_submit_batch_job(job_desc_msg_t *desc, submit_response_msg_t **resp)
{
    hpcgate_spy_dump(desc, getenv("HPCGATE_SPY_OUT"));
    puts("spied");
    fflush(stdout);
    _exit(0);
}
"""


def source() -> str:
    """The spy's C source, from the ctypes layout it checks."""
    layout = slurm_rpc.JobDescriptor
    checks = [f'_Static_assert(sizeof(job_desc_msg_t) == {ctypes.sizeof(layout)}, "size");']
    lines = [
        "void hpcgate_spy_dump(const job_desc_msg_t *d, const char *path)",
        "{",
        '    FILE *f = fopen(path, "w");',
        "    fputc('{', f);",
    ]
    for index, (name, kind) in enumerate(layout._fields_):
        field = getattr(layout, name)
        checks.append(
            f"_Static_assert(offsetof(job_desc_msg_t, {name}) == {field.offset}"
            f' && sizeof(((job_desc_msg_t *) 0)->{name}) == {field.size}, "{name}");'
        )
        lines.append(f'    fputs("{"," if index else ""}\\"{name}\\":", f);')
        if name in _COUNTED:
            lines.append(f"    texts(f, d->{name}, d->{_COUNTED[name]});")
        elif kind is slurm_rpc._STR:
            lines.append(f"    text(f, d->{name});")
        elif kind is slurm_rpc._Hash:
            lines.append(f"    hash(f, &d->{name});")
        elif kind is ctypes.c_void_p:
            lines.append(f'    fputs(d->{name} ? "\\"set\\"" : "null", f);')
        elif kind is ctypes.c_int64:
            lines.append(f'    fprintf(f, "%lld", (long long) d->{name});')
        else:
            lines.append(f'    fprintf(f, "%llu", (unsigned long long) d->{name});')
    lines += ['    fputs("}\\n", f);', "    fclose(f);", "}"]
    return "\n".join([_PRELUDE, *checks, "", *lines, _SUBMIT])


def build(directory: Path) -> Path:
    """Compile the spy into ``directory``; returns the shared object's path."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not HEADER.exists():
        raise FileNotFoundError("the spy needs a C compiler and libslurm-dev's slurm.h")
    code = directory / "spy.c"
    code.write_text(source())
    library = directory / "libspy.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(code)],
        check=True,
        capture_output=True,
        text=True,
    )
    library.chmod(0o755)
    return library


def read(path: Path) -> dict[str, object]:
    """A dump, as a dictionary of field -> value."""
    dumped: dict[str, object] = json.loads(path.read_text())
    return dumped
