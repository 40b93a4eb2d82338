"""sbatch without sbatch (:mod:`hpcgate.schedulers.slurm_rpc`), checked against sbatch
itself: for each case, the job description sbatch sends (caught by the spy preloaded into
it) and the one the module builds in a helper-like process (dumped by the same spy code)
must be equal, field by field, environment included; and what it cannot be sure of, it
declines."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcgate.schedulers import slurm_rpc
from hpcgate.schedulers.slurm_rpc import Declined
from tests.schedulers import slurm_spy

SBATCH = "/usr/bin/sbatch"
ALICE = pwd.getpwnam("alice") if "alice" in {p.pw_name for p in pwd.getpwall()} else None

# Builds the description in a process of the user's, as the helper does (python3 -I -S,
# in /), and dumps it through the spy.
DRIVER = """
import ctypes, importlib.util, json, sys
request = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location("slurm_rpc", request["module"])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
library = module._library(request["env"].get("SLURM_CONF"))
fields, _ = module.describe(request["argv"], request["env"], request["cwd"], library.site,
                            library.conf)
desc, alive = library.descriptor(fields)
ctypes.CDLL(request["spy"]).hpcgate_spy_dump(ctypes.byref(desc), request["out"].encode())
"""


@pytest.fixture(scope="module")
def spy(cluster: None, public_dir: Path) -> Iterator[Path]:
    directory = public_dir / "spy"
    directory.mkdir(mode=0o1777)
    directory.chmod(0o1777)
    library = slurm_spy.build(directory)
    script = directory / "job.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    script.chmod(0o644)
    renamed = directory / "yhbatch"
    renamed.symlink_to(SBATCH)
    yield library


def _as_alice() -> dict[str, object]:
    assert ALICE is not None
    return {
        "user": ALICE.pw_uid,
        "group": ALICE.pw_gid,
        "extra_groups": os.getgrouplist("alice", ALICE.pw_gid),
    }


def _environment(spy: Path, out: Path, **extra: str) -> dict[str, str]:
    assert ALICE is not None
    return {
        "HOME": ALICE.pw_dir,
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": ALICE.pw_shell,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        **extra,
        "HPCGATE_SPY_OUT": str(out),
        "LD_PRELOAD": str(spy),
    }


def sent_by_sbatch(spy: Path, argv: list[str], env: dict[str, str]) -> dict[str, object]:
    out = Path(env["HPCGATE_SPY_OUT"])
    assert ALICE is not None
    done = subprocess.run(
        argv,
        env=env,
        cwd=ALICE.pw_dir,
        capture_output=True,
        text=True,
        timeout=30,
        **_as_alice(),  # type: ignore[arg-type]
    )
    assert done.stdout == "spied\n", done.stderr
    return slurm_spy.read(out)


def built_here(spy: Path, argv: list[str], env: dict[str, str]) -> dict[str, object]:
    out = spy.parent / "ours.json"
    assert ALICE is not None
    request = {
        "module": slurm_rpc.__file__,
        "argv": argv,
        "env": env,
        "cwd": ALICE.pw_dir,
        "spy": str(spy),
        "out": str(out),
    }
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", DRIVER, json.dumps(request)],
        env={},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        **_as_alice(),  # type: ignore[arg-type]
    )
    assert done.returncode == 0, done.stderr
    return slurm_spy.read(out)


PLAIN = "#!/bin/bash\n# a comment, not a directive\necho 'héllo' \"$@\""
CASES: dict[str, tuple[list[str], str]] = {
    "no options": ([], PLAIN),
    "every option the gateway passes": (
        [
            "--chdir=/tmp",
            "--job-name=all keys",
            "--time=7",
            "--partition=debug",
            "--ntasks=2",
            "--mem=512M",
            "--nodes=1",
            "--comment=hpcgate:0123abcd",
        ],
        PLAIN,
    ),
    "nodes alone": (["--nodes=2"], PLAIN),
    "more tasks than nodes": (["--nodes=3", "--ntasks=4"], PLAIN),
    "a name with odd characters": (["--job-name=ünï; $(x) 'q' \"d\" %j"], PLAIN),
    "long directives": (
        [],
        "#!/bin/bash\n#SBATCH --job-name=from-script\n#SBATCH --time=1-02:03:04\n"
        "#SBATCH --partition debug\n#SBATCH --mem=2G\n#SBATCH --output=out-%j.txt\n"
        "#SBATCH --error=none\n#SBATCH --comment='a quoted # sign' # and a comment\n"
        "#SBATCH --ntasks=3 --nodes=2\nhostname\n",
    ),
    "short directives": (
        [],
        "#!/bin/sh\n#SBATCH -J short -t 90 -p work\n#SBATCH -n 2 -N1\n"
        "#SBATCH -o /tmp/o.txt -e rel/e.txt\n#SBATCH -D /tmp\n#SBATCH --mem 100K\ntrue\n",
    ),
    "the command line wins": (
        ["--job-name=cli", "--time=7", "--partition=debug"],
        "#!/bin/sh\n#SBATCH -J script -t 5 --partition=work --comment=kept\ntrue\n",
    ),
    "only the header is read": (
        [],
        "#!/bin/bash\n\n# comment\n  #SBATCH --time=3\n#sbatch --time=4\n\t#x\n"
        "#SBATCH --time=5:30\necho hi\n#SBATCH --time=9\n#SBATCH --wrap=x\n",
    ),
    "quotes and escapes": (
        ["--time=1:00:01"],
        '#!/bin/sh\n#SBATCH --job-name="a b"\\"c\'d # e\'\\#f #i\n#SBATCH#x\ntrue\n',
    ),
    "days and hours": (["--time=2-3"], "#!/bin/sh\n#SBATCH --time=2-3:04\ntrue\n"),
    "a later start": ([], "#!/bin/sh\n#SBATCH --begin=now+1hour\n#SBATCH -b now+90\ntrue\n"),
}


@pytest.mark.parametrize(("options", "text"), CASES.values(), ids=CASES.keys())
def test_the_description_is_sbatchs(spy: Path, options: list[str], text: str) -> None:
    script = spy.parent / f"job-{abs(hash(text))}.sh"
    script.write_text(text)
    script.chmod(0o644)
    argv = [SBATCH, "--parsable", *options, "--", str(script), "a", "b c", "ü=1"]
    env = _environment(spy, spy.parent / "sbatch.json", ODD="has=equals; and ünicode", EMPTY="")
    theirs = sent_by_sbatch(spy, argv, env)
    ours = built_here(spy, argv, env)
    assert abs(int(theirs.pop("begin_time")) - int(ours.pop("begin_time"))) <= 2  # type: ignore[call-overload]
    assert {k: (theirs[k], ours[k]) for k in theirs if theirs[k] != ours[k]} == {}
    assert "SLURM_SUBMIT_DIR=/home/alice" in ours["environment"]  # type: ignore[operator]


def test_a_renamed_sbatch_is_answered_under_its_name(spy: Path) -> None:
    argv = [str(spy.parent / "yhbatch"), "--parsable", "--", str(spy.parent / "job.sh")]
    env = _environment(spy, spy.parent / "sbatch.json")
    theirs = sent_by_sbatch(spy, argv, env)
    assert theirs["submit_line"] == " ".join(argv)
    assert theirs == built_here(spy, argv, env)


@pytest.fixture
def site() -> slurm_rpc._Site:
    return slurm_rpc._Site(slurm_rpc.DEFAULT_CONF)


def _script(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "job.sh"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


@pytest.mark.parametrize(
    "text",
    [
        "#!/bin/bash\n#SBATCH --wrap=true\ntrue\n",
        "#!/bin/bash\n#SBATCH --job=abbreviated\ntrue\n",
        "#!/bin/bash\n#SBATCH -vJ combined\ntrue\n",
        "#!/bin/bash\n#SBATCH --time=5 stray\ntrue\n",
        "#!/bin/bash\n#SBATCH --job-name='unmatched\ntrue\n",
        "#!/bin/bash\n#SBATCH --time\n",
        "#!/bin/bash\n#SBATCH hetjob\ntrue\n",
        "#!/bin/bash\n#SBATCH -J hetjob -p debug\ntrue\n",
        "#!/bin/bash\n#SBATCH -J :x\ntrue\n",
        "#!/bin/bash\n#SBATCH --begin=tomorrow\ntrue\n",
        "#!/bin/bash\n#SBATCH --time=0\ntrue\n",
        "#!/bin/bash\n#SBATCH --mem=1GB\ntrue\n",
        "#!/bin/bash\n#SLURM --time=5\ntrue\n",
        "#!/bin/bash\ntrue\n#PBS -l walltime=1:00:00\n",
        "#!/bin/bash\n#bsub -W 10\ntrue\n",
        "true\n",
        "#!/bin/bash\r\ntrue\r\n",
        b"#!/bin/bash\n\0\n",
        b"#!/bin/bash\necho \xff\n",
    ],
    ids=[
        "unknown",
        "abbreviated",
        "combined letters",
        "a stray word",
        "unmatched quote",
        "no argument",
        "hetjob",
        "hetjob as a word",
        "a colon word",
        "a begin time it does not parse",
        "no time limit",
        "a memory unit it does not know",
        "SLURM",
        "PBS anywhere",
        "BSUB in any case",
        "no #!",
        "DOS",
        "NUL",
        "not UTF-8",
    ],
)
def test_scripts_sbatch_reads_differently_are_declined(
    site: slurm_rpc._Site, tmp_path: Path, text: str | bytes
) -> None:
    argv = [SBATCH, "--parsable", "--", _script(tmp_path, text)]
    with pytest.raises(Declined):
        slurm_rpc.describe(argv, {"PATH": "/usr/bin"}, str(tmp_path), site, None)


@pytest.mark.parametrize(
    ("options", "env"),
    [
        (["--wrap=true"], {}),
        (["--time=0"], {}),
        (["--time=1:00:00:00"], {}),
        (["--mem=1.5G"], {}),
        (["--nodes=1-2"], {}),
        (["--chdir=relative"], {}),
        (["--chdir=/no/such/directory"], {}),
        (["--nodes=3", "--ntasks=2"], {}),  # sbatch warns and changes both
        ([], {"SBATCH_PARTITION": "debug"}),
        ([], {"SLURM_EXIT_ERROR": "3"}),
        ([], {"SLURM_CONF": "/elsewhere/slurm.conf"}),
        ([], {"BIG": "x" * (256 * 1024)}),  # sbatch leaves it out of the job's environment
        ([], {"N" * 256: "1"}),
    ],
)
def test_options_and_variables_it_does_not_know_are_declined(
    site: slurm_rpc._Site, tmp_path: Path, options: list[str], env: dict[str, str]
) -> None:
    argv = [SBATCH, "--parsable", *options, "--", _script(tmp_path, "#!/bin/sh\ntrue\n")]
    with pytest.raises(Declined):
        slurm_rpc.describe(argv, {"PATH": "/usr/bin", **env}, str(tmp_path), site, None)


def test_without_parsable_or_a_script_it_declines(site: slurm_rpc._Site, tmp_path: Path) -> None:
    for argv in ([SBATCH, "--", _script(tmp_path, "#!/bin/sh\n")], [SBATCH, "--parsable"]):
        with pytest.raises(Declined):
            slurm_rpc.describe(argv, {}, str(tmp_path), site, None)


def test_a_wrapper_script_in_sbatchs_place_always_runs(tmp_path: Path) -> None:
    wrapper = _script(tmp_path, '#!/bin/sh\nexec sbatch "$@"\n')
    script = _script(tmp_path / ".." / tmp_path.name, "#!/bin/sh\ntrue\n")
    assert slurm_rpc.run([wrapper, "--parsable", "--", script], {}, str(tmp_path)) is None


def _conf(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "slurm.conf"
    path.write_text("ClusterName=x  # a comment\n" + "\n".join(lines) + "\n")
    return str(path)


def test_the_site_decides_which_limits_travel(tmp_path: Path) -> None:
    every = slurm_rpc.RLIMITS
    assert slurm_rpc._Site(_conf(tmp_path)).rlimits == every
    assert slurm_rpc._Site(_conf(tmp_path, "PropagateResourceLimits=NONE")).rlimits == ()
    only = slurm_rpc._Site(_conf(tmp_path, "PropagateResourceLimits=RLIMIT_CORE,NOFILE"))
    assert only.rlimits == ("CORE", "NOFILE")
    but = slurm_rpc._Site(_conf(tmp_path, "propagateresourcelimitsexcept=MEMLOCK"))
    assert but.rlimits == tuple(name for name in every if name != "MEMLOCK")


def test_client_side_plugins_and_includes_are_declined(tmp_path: Path) -> None:
    plugstack = tmp_path / "plugstack.conf"
    (tmp_path / "more").mkdir()
    plugstack.write_text(f"# none yet\ninclude {tmp_path}/more/*.conf\n")
    assert slurm_rpc._Site(_conf(tmp_path, f"PlugStackConfig={plugstack}")).rlimits
    (tmp_path / "more" / "x.conf").write_text("optional /usr/lib/spank/x.so\n")
    for refused in (
        "CliFilterPlugins=cli_filter/lua",
        f"PlugStackConfig={plugstack}",
        "Include /etc/slurm/more.conf",
        "PropagateResourceLimits=CORE,NOSUCH",
    ):
        with pytest.raises(Declined):
            slurm_rpc._Site(_conf(tmp_path, refused))


def test_only_the_controllers_refusals_go_to_sbatch() -> None:
    assert slurm_rpc.refused(2000)  # ESLURM_INVALID_PARTITION_NAME and the like
    assert slurm_rpc.refused(8000)  # ESLURM_MISSING_TIME_LIMIT
    assert not slurm_rpc.refused(slurm_rpc.CONNECT_FAILURE)  # reported as sbatch does
    assert not slurm_rpc.refused(1003)  # lost answer: the job may exist, never sent twice
    assert not slurm_rpc.refused(5004)  # a socket timeout: likewise
    assert not slurm_rpc.refused(110)
    assert slurm_rpc.refused(slurm_rpc.EAGAIN)  # the controller is full: sbatch retries
    assert slurm_rpc.refused(slurm_rpc.PROTOCOL_VERSION_ERROR)


def test_a_bad_directive_fails_sbatch_even_when_the_command_line_overrides_it(
    site: slurm_rpc._Site, tmp_path: Path
) -> None:
    for directive in ("--time=abc", "--mem=lots", "--ntasks=-3", "--begin=soon"):
        script = _script(tmp_path, f"#!/bin/sh\n#SBATCH {directive}\ntrue\n")
        argv = [SBATCH, "--parsable", "--time=60", "--mem=100M", "--ntasks=2", "--begin=now+1"]
        with pytest.raises(Declined):
            slurm_rpc.describe([*argv, "--", script], {}, str(tmp_path), site, None)


def test_a_colon_anywhere_in_the_arguments_is_declined(
    site: slurm_rpc._Site, tmp_path: Path
) -> None:
    script = _script(tmp_path, "#!/bin/sh\ntrue\n")
    with pytest.raises(Declined):  # sbatch drops it from the job's arguments
        slurm_rpc.describe([SBATCH, "--parsable", "--", script, "a", ":"], {}, "/", site, None)


def test_the_last_setting_wins_and_includes_are_relative(tmp_path: Path) -> None:
    with pytest.raises(Declined):
        slurm_rpc._Site(_conf(tmp_path, "CliFilterPlugins=", "CliFilterPlugins=cli_filter/lua"))
    (tmp_path / "stack.d").mkdir()
    (tmp_path / "stack.d" / "a.conf").write_text("required /usr/lib/spank/a.so\n")
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text("include stack.d/*.conf\n")  # relative to plugstack.conf
    with pytest.raises(Declined):
        slurm_rpc._Site(_conf(tmp_path, f"PlugStackConfig={plugstack}"))
