"""sbatch without sbatch: a batch job submitted through libslurm's RPC from a long-lived
process of the user's, exactly as ``sbatch`` would submit it.

A submit through ``sbatch`` costs a process and sbatch's start-up (reading the
configuration, loading plug-ins: ~4 ms of its ~5), where the request itself is one RPC to
slurmctld. A user's helper (:mod:`hpcgate.runners.userhelper`) runs this module's source,
which the gateway sends it, and answers the argument vector the Slurm scheduler builds
(:meth:`hpcgate.schedulers.slurm.Slurm.submit_argv`) in its own process: the same job
description, the same output and exit status as sbatch's.

It is certain of that only for what was checked against sbatch itself
(``tests/schedulers/test_slurm_rpc.py`` catches the description sbatch sends in
``slurm_submit_batch_job`` and compares it field by field with this module's): the
options in :data:`OPTIONS`, on the command line or in the script's ``#SBATCH`` lines,
read as sbatch reads them. Anything else is *declined* (``run`` returns None and the
helper runs sbatch): another option, ``#SLURM``/``#PBS``/``#BSUB`` lines, a script sbatch
refuses, sbatch input variables (``SBATCH_*``, ``SLURM_*``) in the environment, another
``SLURM_CONF``, client-side plug-ins (``CliFilterPlugins``, SPANK), a program that is not
a compiled sbatch (a site's wrapper script must run), a libslurm other than the one
whose layout is below, and every refusal of the controller (sbatch then prints its
explanation, and retries what it retries).

The credential is the process's own: munge signs the helper's uid, which is the user's,
so slurmctld records the job as the user's, as with sbatch.

Standard library only: the helper runs as ``python3 -I -S``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import re
import resource
import socket
import threading
import time
from ctypes import (
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_int,
    c_int64,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)

LIBRARY = "libslurm.so.38"
"""Slurm 22.05's libslurm: the layout below is that of its ``slurm.h``."""

LIBRARY_DIRECTORIES = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def library_installed() -> bool:
    """Whether :data:`LIBRARY` is where the dynamic loader looks (checked by the gateway
    when it is configured, without loading it)."""
    return (
        any(os.path.exists(os.path.join(directory, LIBRARY)) for directory in LIBRARY_DIRECTORIES)
        or ctypes.util.find_library("slurm") == LIBRARY
    )


_STR = c_char_p
_STRS = POINTER(c_char_p)


class _Hash(Structure):
    _fields_ = [("type", c_uint8), ("hash", c_uint8 * 32)]


class JobDescriptor(Structure):
    """``job_desc_msg_t`` of Slurm 22.05 (``slurm.h``), field by field."""

    _fields_ = [
        ("account", _STR),
        ("acctg_freq", _STR),
        ("admin_comment", _STR),
        ("alloc_node", _STR),
        ("alloc_resp_port", c_uint16),
        ("alloc_sid", c_uint32),
        ("argc", c_uint32),
        ("argv", _STRS),
        ("array_inx", _STR),
        ("array_bitmap", c_void_p),
        ("batch_features", _STR),
        ("begin_time", c_int64),
        ("bitflags", c_uint64),
        ("burst_buffer", _STR),
        ("clusters", _STR),
        ("cluster_features", _STR),
        ("comment", _STR),
        ("contiguous", c_uint16),
        ("container", _STR),
        ("core_spec", c_uint16),
        ("cpu_bind", _STR),
        ("cpu_bind_type", c_uint16),
        ("cpu_freq_min", c_uint32),
        ("cpu_freq_max", c_uint32),
        ("cpu_freq_gov", c_uint32),
        ("cpus_per_tres", _STR),
        ("crontab_entry", c_void_p),
        ("deadline", c_int64),
        ("delay_boot", c_uint32),
        ("dependency", _STR),
        ("end_time", c_int64),
        ("environment", _STRS),
        ("env_hash", _Hash),
        ("env_size", c_uint32),
        ("extra", _STR),
        ("exc_nodes", _STR),
        ("features", _STR),
        ("fed_siblings_active", c_uint64),
        ("fed_siblings_viable", c_uint64),
        ("group_id", c_uint32),
        ("het_job_offset", c_uint32),
        ("immediate", c_uint16),
        ("job_id", c_uint32),
        ("job_id_str", _STR),
        ("kill_on_node_fail", c_uint16),
        ("licenses", _STR),
        ("mail_type", c_uint16),
        ("mail_user", _STR),
        ("mcs_label", _STR),
        ("mem_bind", _STR),
        ("mem_bind_type", c_uint16),
        ("mem_per_tres", _STR),
        ("name", _STR),
        ("network", _STR),
        ("nice", c_uint32),
        ("num_tasks", c_uint32),
        ("open_mode", c_uint8),
        ("origin_cluster", _STR),
        ("other_port", c_uint16),
        ("overcommit", c_uint8),
        ("partition", _STR),
        ("plane_size", c_uint16),
        ("power_flags", c_uint8),
        ("prefer", _STR),
        ("priority", c_uint32),
        ("profile", c_uint32),
        ("qos", _STR),
        ("reboot", c_uint16),
        ("resp_host", _STR),
        ("restart_cnt", c_uint16),
        ("req_nodes", _STR),
        ("requeue", c_uint16),
        ("reservation", _STR),
        ("script", _STR),
        ("script_buf", c_void_p),
        ("script_hash", _Hash),
        ("shared", c_uint16),
        ("site_factor", c_uint32),
        ("spank_job_env", _STRS),
        ("spank_job_env_size", c_uint32),
        ("submit_line", _STR),
        ("task_dist", c_uint32),
        ("time_limit", c_uint32),
        ("time_min", c_uint32),
        ("tres_bind", _STR),
        ("tres_freq", _STR),
        ("tres_per_job", _STR),
        ("tres_per_node", _STR),
        ("tres_per_socket", _STR),
        ("tres_per_task", _STR),
        ("user_id", c_uint32),
        ("wait_all_nodes", c_uint16),
        ("warn_flags", c_uint16),
        ("warn_signal", c_uint16),
        ("warn_time", c_uint16),
        ("work_dir", _STR),
        ("cpus_per_task", c_uint16),
        ("min_cpus", c_uint32),
        ("max_cpus", c_uint32),
        ("min_nodes", c_uint32),
        ("max_nodes", c_uint32),
        ("boards_per_node", c_uint16),
        ("sockets_per_board", c_uint16),
        ("sockets_per_node", c_uint16),
        ("cores_per_socket", c_uint16),
        ("threads_per_core", c_uint16),
        ("ntasks_per_node", c_uint16),
        ("ntasks_per_socket", c_uint16),
        ("ntasks_per_core", c_uint16),
        ("ntasks_per_board", c_uint16),
        ("ntasks_per_tres", c_uint16),
        ("pn_min_cpus", c_uint16),
        ("pn_min_memory", c_uint64),
        ("pn_min_tmp_disk", c_uint32),
        ("req_context", _STR),
        ("req_switch", c_uint32),
        ("select_jobinfo", c_void_p),
        ("selinux_context", _STR),
        ("std_err", _STR),
        ("std_in", _STR),
        ("std_out", _STR),
        ("tres_req_cnt", c_void_p),
        ("wait4switch", c_uint32),
        ("wckey", _STR),
        ("x11", c_uint16),
        ("x11_magic_cookie", _STR),
        ("x11_target", _STR),
        ("x11_target_port", c_uint16),
    ]


class SubmitResponse(Structure):
    """``submit_response_msg_t``."""

    _fields_ = [
        ("job_id", c_uint32),
        ("step_id", c_uint32),
        ("error_code", c_uint32),
        ("job_submit_user_msg", c_char_p),
    ]


NO_VAL = 0xFFFFFFFE
NO_VAL16 = 0xFFFE
JOB_NTASKS_SET = 0x4000
SBATCH_DEFAULTS: dict[str, object] = {
    "contiguous": 0,
    "mail_type": 0,
    "mem_bind_type": 0,
    "task_dist": 0x2000,  # SLURM_DIST_UNKNOWN
}
"""Where sbatch's defaults differ from ``slurm_init_job_desc_msg``'s."""
RLIM_INFINITY = (1 << 64) - 1
DEFAULT_CONF = "/etc/slurm/slurm.conf"
DEFAULT_PLUGSTACK = "/etc/slurm/plugstack.conf"
RLIMITS = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS")
"""sbatch's order (``slurm_rlimits_info.c``), each propagated as ``SLURM_RLIMIT_<name>``."""
CONNECT_FAILURE = 1001
"""SLURM_COMMUNICATIONS_CONNECTION_ERROR: no controller could be reached, nothing was sent."""


EAGAIN = 11
PROTOCOL_VERSION_ERROR = 1005


def refused(error: int) -> bool:
    """Whether ``error`` certainly made no job: a controller's answer (``ESLURM_*``, from
    2000 on; 5000-5999 are the socket's own), EAGAIN (the controller is full: sbatch
    retries), or a protocol version the controller does not speak. The controller's
    explanation, if any, reached only libslurm's log: such a submit is left to sbatch,
    which prints it (and retries the errors it retries)."""
    return error in (EAGAIN, PROTOCOL_VERSION_ERROR) or (error >= 2000 and not 5000 <= error < 6000)


TRANSLATED = (b"#PBS", b"#BSUB")
"""Other schedulers' directives, which sbatch translates: left to it wherever they appear."""
INPUT_PREFIXES = ("SBATCH_", "SLURM_", "SPANK_")
ENV_NAME_MAX, ENV_VALUE_MAX = 256, 256 * 1024
"""``env_array_merge`` drops a variable whose name or value (with its NUL) exceeds these."""

Outcome = tuple[int, str, str]
"""What sbatch would have ended with: exit status, standard output, standard error."""


class Declined(Exception):
    """Not certain to submit as sbatch would: sbatch itself must run."""


OPTIONS = {
    "job-name": "J",
    "time": "t",
    "partition": "p",
    "ntasks": "n",
    "nodes": "N",
    "mem": "",
    "output": "o",
    "error": "e",
    "comment": "",
    "chdir": "D",
    "begin": "b",
}
"""The options answered here (long name -> short letter), each with a required argument;
any other option, in the arguments or in the script, is left to sbatch."""
_SHORT = {letter: name for name, letter in OPTIONS.items() if letter}
_TIME = re.compile(r"(?:([0-9]{1,6})-)?([0-9]{1,6})(?::([0-9]{1,6}))?(?::([0-9]{1,6}))?")
_MEMORY = re.compile(r"([0-9]{1,15})([KkMmGgTt]?)")
_BEGIN = re.compile(r"now\+([0-9]{1,9})(seconds?|minutes?|hours?|days?|weeks?)?", re.IGNORECASE)
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
INT_MAX = (1 << 31) - 1


class _Request:
    """What sbatch would make of the arguments and of the script's ``#SBATCH`` lines, for
    the options in :data:`OPTIONS` (``opt.c``, ``slurm_opt.c`` of Slurm 22.05)."""

    def __init__(self, argv: list[str]) -> None:
        self.parsable = False
        self.values: dict[str, str] = {}
        words = iter(argv[1:])
        options: list[str] = []
        for word in words:
            if word == "--":
                break
            if word == "--parsable":
                self.parsable = True
            else:
                options.append(word)
        rest = list(words)
        if not rest or not self.parsable:
            raise Declined("no script, or not --parsable")
        if ":" in argv:
            raise Declined("a ':' (sbatch drops it: a heterogeneous job's separator)")
        self.script, self.script_args = rest[0], rest[1:]
        self.command_line = options

    def read(self, script: bytes) -> None:
        """Take the script's directives, then the command line's options (which win)."""
        self._options(directives(script.decode("utf-8")))
        self._options(self.command_line)

    def _options(self, words: list[str]) -> None:
        """getopt_long's reading, for options that each take one argument."""
        index = 0
        while index < len(words):
            word = words[index]
            if word.startswith("--"):
                name, equals, value = word[2:].partition("=")
                if name not in OPTIONS:
                    raise Declined(word)  # unknown, or abbreviated
            elif word.startswith("-") and word[1:2] in _SHORT:
                name, equals, value = _SHORT[word[1]], "", word[2:]
                equals = "=" if value else ""
            else:
                raise Declined(word)
            if not equals:
                index += 1
                if index == len(words):
                    raise Declined(f"{word} without its argument")
                value = words[index]
            self.values[name] = value
            self._check(name)  # sbatch exits on a bad value wherever it is, even overridden
            index += 1

    def _check(self, name: str) -> None:
        if name in ("ntasks", "nodes"):
            self.number(name)
        elif name == "time":
            self.minutes()
        elif name == "mem":
            self.megabytes()
        elif name == "begin":
            self.begin(0.0)
        else:
            self.text(name)

    def number(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not value.isascii() or not value.isdigit() or not 0 < int(value) <= INT_MAX:
            raise Declined(f"--{name}={value}")
        return int(value)

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        if value == "":
            raise Declined(f"an empty --{name}")
        return value

    def _matched(self, name: str, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """Option ``name``'s value matched whole by ``pattern``; None when not given."""
        value = self.values.get(name)
        if value is None:
            return None
        found = pattern.fullmatch(value)
        if found is None:
            raise Declined(f"--{name}={value}")
        return found

    def minutes(self) -> int | None:
        """``time_str2mins``: minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S, rounded up."""
        found = self._matched("time", _TIME)
        if found is None:
            return None
        days, first, second, third = (int(part or 0) for part in found.groups())
        if found.group(1) is not None:
            seconds = days * 86400 + first * 3600 + second * 60 + third
        elif found.group(4) is not None:
            seconds = first * 3600 + second * 60 + third
        else:
            seconds = first * 60 + second
        if not 0 < seconds <= INT_MAX - 59:
            raise Declined(f"--time={found.string}")  # 0 means no limit: left to sbatch
        return (seconds + 59) // 60

    def megabytes(self) -> int | None:
        """``str_to_mbytes``: megabytes, or a K, M, G or T unit (kilobytes rounded up)."""
        found = self._matched("mem", _MEMORY)
        if found is None:
            return None
        amount, unit = int(found.group(1)), found.group(2).upper()
        if unit == "K":
            return (amount + 1023) // 1024
        return amount * {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]

    def begin(self, now: float) -> int | None:
        """``parse_time`` of ``now+N[unit]`` (seconds by default), the only form taken."""
        found = self._matched("begin", _BEGIN)
        if found is None:
            return None
        unit = (found.group(2) or "second").lower().removesuffix("s")
        later = time.localtime(int(now) + int(found.group(1)) * _UNITS[unit])
        return int(time.mktime((*later[:8], -1)))  # as slurm_mktime: isdst unknown


def directives(script: str) -> list[str]:
    """The arguments of the script's ``#SBATCH`` lines, read as sbatch reads them: from
    the top, up to the first line that is not a comment, each line split into words
    (quotes group, a backslash escapes, an unquoted ``#`` ends the line)."""
    words: list[str] = []
    for line in script.split("\n"):
        if line.startswith("#SBATCH"):
            rest = line[len("#SBATCH") :]
            words += _words(rest)
        elif line.startswith("#SLURM"):
            raise Declined("an #SLURM directive")
        elif line.lstrip(_SPACE)[:1] not in ("", "#"):
            break  # the first command ends the directives
    return words


_SPACE = " \t\n\v\f\r"
_COMPONENT = re.compile(r"(?i)(hetjob|packjob)([ \t\n\v\f\r]|$)")


def _words(line: str) -> list[str]:
    """``get_argument`` of sbatch's ``opt.c``, applied until the line is used up."""
    words: list[str] = []
    position = 0
    while True:
        while position < len(line) and line[position] in _SPACE:
            position += 1
        if position == len(line):
            return words
        if _COMPONENT.match(line, position) or line[position] == ":":
            raise Declined("a heterogeneous job's separator in a directive")
        word: list[str] = []
        quote = ""
        escaped = False
        while position < len(line) and (quote or line[position] not in _SPACE):
            char = line[position]
            position += 1
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
                continue
            elif quote:
                if char == quote:
                    quote = ""
                    continue
            elif char in "\"'":
                quote = char
                continue
            elif char == "#":
                if word:
                    words.append("".join(word))
                return words
            word.append(char)
        if quote:
            raise Declined("an unmatched quote in a directive")
        if not word:
            return words
        words.append("".join(word))


class _Site:
    """What of the site's configuration changes sbatch's request (read once per path)."""

    def __init__(self, conf: str) -> None:
        self.path = conf
        settings = _settings(conf)
        if settings.get("clifilterplugins"):
            raise Declined("CliFilterPlugins")
        for plugstack in {settings.get("plugstackconfig", DEFAULT_PLUGSTACK), DEFAULT_PLUGSTACK}:
            if _has_spank_plugins(plugstack):
                raise Declined("SPANK plug-ins")
        self.rlimits = _propagated(
            settings.get("propagateresourcelimits"),
            settings.get("propagateresourcelimitsexcept"),
        )


def _settings(path: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as conf:
        for line in conf:
            words = line.split("#", 1)[0].split()
            if words and words[0].lower() == "include":
                raise Declined("an Include in slurm.conf")
            for word in words:
                key, _, value = word.partition("=")
                settings[key.lower()] = value  # the last one wins, as in Slurm
    return settings


def _has_spank_plugins(path: str, depth: int = 0) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as conf:
            lines = conf.read().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0].lower() != "include" or depth > 4:
            return True
        here = os.path.dirname(path)  # an include is relative to its file
        included = [found for word in words[1:] for found in glob.glob(os.path.join(here, word))]
        if any(_has_spank_plugins(found, depth + 1) for found in included):
            return True
    return False


def _names(text: str) -> set[str]:
    names = {
        word.upper().removeprefix("RLIMIT_") for word in text.replace(" ", ",").split(",") if word
    }
    if not names <= set(RLIMITS):
        raise Declined(f"resource limits {text}")
    return names


def _propagated(limits: str | None, limits_except: str | None) -> tuple[str, ...]:
    if limits_except is not None:
        if limits_except.upper() in ("ALL", "NONE"):
            raise Declined("PropagateResourceLimitsExcept=ALL|NONE")
        kept = set(RLIMITS) - _names(limits_except)
    elif limits is None or limits.upper() == "ALL":
        kept = set(RLIMITS)
    elif limits.upper() == "NONE":
        kept = set()
    else:
        kept = _names(limits)
    return tuple(name for name in RLIMITS if name in kept)


@functools.cache
def _umask() -> int:
    """This process's umask (read once: a helper never changes it, and setting it to
    read it would race with the files its other threads create)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise Declined("no umask in /proc/self/status")


def _rlimit(name: str) -> int:
    soft, _ = resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))
    return RLIM_INFINITY if soft == resource.RLIM_INFINITY else soft


def describe(
    argv: list[str], env: dict[str, str], cwd: str, site: _Site, conf: str | None
) -> tuple[dict[str, object], bytes]:
    """The fields of the job description sbatch would send for ``argv`` run with ``env``
    in ``cwd`` by this process, and the script; raises Declined where unsure."""
    request = _Request(argv)
    if any(key.startswith(INPUT_PREFIXES) for key in env if key != "SLURM_CONF"):
        raise Declined("sbatch input variables in the environment")
    if any(
        len(os.fsencode(key)) >= ENV_NAME_MAX or len(os.fsencode(value)) >= ENV_VALUE_MAX
        for key, value in env.items()
    ):
        raise Declined("a variable sbatch would leave out of the job's environment")
    if env.get("SLURM_CONF", conf) != conf:
        raise Declined("another SLURM_CONF")
    if not request.script.startswith("/"):
        raise Declined("a relative script path")
    with open(request.script, "rb") as file:
        script = file.read()
    if (
        not script.startswith(b"#!")
        or b"\0" in script
        or b"\r\n" in script
        or any(word in script.upper() for word in TRANSLATED)
    ):
        raise Declined("a script sbatch refuses or translates")
    try:
        request.read(script)
    except UnicodeDecodeError:
        raise Declined("a script that is not UTF-8") from None
    submit_dir = os.path.realpath(cwd)
    workdir = request.text("chdir") or submit_dir
    if not workdir.startswith("/") or not os.path.isdir(workdir):
        raise Declined("a relative or missing --chdir")
    nodes, ntasks = request.number("nodes"), request.number("ntasks")
    if nodes is not None and ntasks is not None and ntasks < nodes:
        raise Declined("fewer tasks than nodes (sbatch warns and changes them)")
    name = request.text("job-name") or os.path.basename(request.script)

    environment = dict(env)
    if "SLURM_CONF" not in environment:
        environment["SLURM_CONF"] = site.path
    environment["SLURM_JOB_NAME"] = name
    for limit in site.rlimits:
        environment[f"SLURM_RLIMIT_{limit}"] = str(_rlimit(limit))
    environment["SLURM_PRIO_PROCESS"] = str(os.getpriority(os.PRIO_PROCESS, 0))
    environment["SLURM_SUBMIT_DIR"] = submit_dir
    environment["SLURM_SUBMIT_HOST"] = socket.gethostname()
    environment["SLURM_UMASK"] = f"0{_umask():03o}"
    if ntasks is not None:
        environment["SLURM_NPROCS"] = environment["SLURM_NTASKS"] = str(ntasks)

    fields: dict[str, object] = {
        **SBATCH_DEFAULTS,
        "argv": [request.script, *request.script_args],
        "environment": [f"{key}={value}" for key, value in environment.items()],
        "name": name,
        "user_id": os.getuid(),
        "group_id": os.getgid(),
        "work_dir": workdir,
        "std_in": "/dev/null",
        "submit_line": " ".join(argv),
        "script": script.decode("utf-8"),
        "min_cpus": ntasks or nodes or 1,
    }
    for option, field in (("partition", "partition"), ("comment", "comment")):
        if (value := request.text(option)) is not None:
            fields[field] = value
    for option, field in (("output", "std_out"), ("error", "std_err")):
        if (path := request.text(option)) is not None:
            path = "/dev/null" if path.lower() == "none" else path
            fields[field] = path if path.startswith("/") else f"{workdir}/{path}"
    if (minutes := request.minutes()) is not None:
        fields["time_limit"] = minutes
    if (megabytes := request.megabytes()) is not None:
        fields["pn_min_memory"] = megabytes
    if (begin := request.begin(time.time())) is not None:
        fields["begin_time"] = begin
    if ntasks is not None:
        fields["num_tasks"] = ntasks
        fields["bitflags"] = JOB_NTASKS_SET
    if nodes is not None:
        fields["min_nodes"] = nodes
        fields["max_nodes"] = min(nodes, ntasks) if ntasks is not None else nodes
    return fields, script


class _Library:
    """libslurm, loaded and initialised once per process and configuration."""

    def __init__(self, conf: str | None) -> None:
        self.conf = conf
        self.lib = ctypes.CDLL(LIBRARY, mode=ctypes.RTLD_GLOBAL, use_errno=True)
        self.lib.slurm_init.argtypes = [c_char_p]
        self.lib.slurm_init_job_desc_msg.argtypes = [POINTER(JobDescriptor)]
        self.lib.slurm_submit_batch_job.argtypes = [
            POINTER(JobDescriptor),
            POINTER(POINTER(SubmitResponse)),
        ]
        self.lib.slurm_submit_batch_job.restype = c_int
        self.lib.slurm_get_errno.restype = c_int
        self.lib.slurm_strerror.argtypes = [c_int]
        self.lib.slurm_strerror.restype = c_char_p
        self.lib.slurm_free_submit_response_response_msg.argtypes = [POINTER(SubmitResponse)]
        self.lib.slurm_init(conf.encode() if conf else None)
        # the file libslurm read, which it exports as sbatch's own start-up does
        libc = ctypes.CDLL(None)
        libc.getenv.argtypes = [c_char_p]
        libc.getenv.restype = c_char_p
        exported = libc.getenv(b"SLURM_CONF")
        path = os.fsdecode(exported) if exported else conf or DEFAULT_CONF
        try:
            self.site: _Site | Declined = _Site(path)
        except (Declined, OSError) as refused:
            self.site = Declined(str(refused))

    def descriptor(self, fields: dict[str, object]) -> tuple[JobDescriptor, list[object]]:
        """A ``job_desc_msg_t`` with sbatch's defaults and ``fields``; the second value
        keeps the memory it points to alive."""
        desc = JobDescriptor()
        self.lib.slurm_init_job_desc_msg(byref(desc))
        return desc, fill(desc, fields)

    def submit(self, desc: JobDescriptor, program: str) -> Outcome | None:
        """Send ``desc``; sbatch's outcome, or None when the controller certainly made
        nothing and sbatch is to run (it says why, and retries what it retries)."""
        response = POINTER(SubmitResponse)()
        failed = self.lib.slurm_submit_batch_job(byref(desc), byref(response)) < 0
        if failed or not response:  # no answer to read: sbatch says "failed" as well
            error = self.lib.slurm_get_errno()
            if failed and refused(error):
                return None
            reason = (self.lib.slurm_strerror(error) or b"").decode(errors="replace")
            return 1, "", f"{program}: error: Batch job submission failed: {reason}\n"
        try:
            answer = response.contents
            told = (answer.job_submit_user_msg or b"").decode(errors="replace")
            said = "".join(f"{program}: {line}\n" for line in told.split("\n") if line)
            return 0, f"{answer.job_id}\n", said
        finally:
            self.lib.slurm_free_submit_response_response_msg(response)


def fill(desc: JobDescriptor, fields: dict[str, object]) -> list[object]:
    """Set ``fields`` in ``desc`` (strings as bytes, lists as NULL-ended arrays with their
    count); returns what must outlive the call that reads ``desc``."""
    alive: list[object] = []
    counts = {"argv": "argc", "environment": "env_size"}
    for name, value in fields.items():
        if isinstance(value, list):
            words = [os.fsencode(str(word)) for word in value]
            array = (c_char_p * (len(words) + 1))(*words, None)
            alive.append(array)
            setattr(desc, name, ctypes.cast(array, POINTER(c_char_p)))
            setattr(desc, counts[name], len(words))
        elif isinstance(value, str):
            encoded = os.fsencode(value)
            alive.append(encoded)
            setattr(desc, name, encoded)
        else:
            setattr(desc, name, value)
    return alive


_libraries: dict[str | None, _Library] = {}
_loading = threading.Lock()


def _library(conf: str | None) -> _Library:
    with _loading:
        if conf not in _libraries:
            if _libraries:
                raise Declined("libslurm is initialised for another configuration")
            _libraries[conf] = _Library(conf)
        return _libraries[conf]


def _compiled(program: str) -> bool:
    """A compiled program (sbatch, or sbatch renamed), never a site's wrapper script,
    which must run: it may check or change what is submitted."""
    descriptor = os.open(program, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return os.read(descriptor, 4) == b"\x7fELF"
    finally:
        os.close(descriptor)


def run(argv: list[str], env: dict[str, str], cwd: str) -> Outcome | None:
    """sbatch's outcome for ``argv`` (``argv[0]`` the program's path) run with ``env`` in
    ``cwd`` by this process, or None when sbatch must run instead (nothing was sent)."""
    try:
        if not _compiled(argv[0]):
            return None
        library = _library(env.get("SLURM_CONF"))
        if isinstance(library.site, Declined):
            return None
        fields, _ = describe(argv, env, cwd, library.site, library.conf)
        desc, alive = library.descriptor(fields)
    except (Declined, OSError):
        return None  # nothing was sent
    # from here on the request may have reached the controller: never declined but for
    # a refusal, and anything unexpected is the caller's "unknown outcome"
    outcome = library.submit(desc, os.path.basename(argv[0]))
    del alive
    return outcome
