"""The API with ``options.submit = "rpc"``: every submit test run again on a gateway whose
users' helpers submit through libslurm instead of starting sbatch (the ``server`` fixture
below replaces the suite's), so that what they prove of sbatch, above all that the job is
the user's and nothing is lost or doubled, is proved of this path too; and that this path
is the one taken (the helper answered, no sbatch started) wherever it may be."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_errors import (  # noqa: F401
    test_a_missing_jobfile_is_400_with_the_path,
    test_a_partition_slurm_rejects_is_400_with_slurms_message,
    test_a_script_path_the_user_may_not_write_is_403_with_the_reason,
    test_a_script_without_an_interpreter_line_is_400,
)
from tests.api.test_idempotency import (  # noqa: F401
    test_a_refused_submit_frees_its_key,
    test_a_retry_returns_the_first_job,
)
from tests.api.test_job_output import (  # noqa: F401
    job_dir,
    test_paths_expanded_as_slurm_does_and_stderr_apart,
)
from tests.api.test_jobs import (  # noqa: F401
    test_detail_is_never_empty_right_after_submit,
    test_every_jobconf_key_reaches_slurm,
    test_hostile_values_stay_values,
    test_kill_a_running_job,
    test_renamed_scheduler_commands,
    test_submit_an_existing_jobfile,
    test_submit_as_the_page_client_does,
    test_submit_with_a_json_body_and_a_jobconf_object,
    test_submit_without_a_path_writes_under_newt,
)
from tests.api.test_metrics import scrape, value
from tests.api.test_scheduler_down import test_the_gateway_recovers_when_the_scheduler_returns
from tests.conftest import Server, gateway_config, ok_output, start_server, stop_server

# stops slurmctld: run alone, as in its own module (whose pytestmark an import leaves behind)
test_the_gateway_recovers_when_the_scheduler_returns = pytest.mark.disruptive(
    test_the_gateway_recovers_when_the_scheduler_returns
)
CALLS = "hpcgate_stand_in_calls_total"


@pytest.fixture(scope="module")
def server(cluster: None, public_dir: Path) -> Iterator[Server]:
    """One gateway whose machines all run on ``local-helper`` and submit through RPC."""
    config = gateway_config(public_dir, "local-helper", None, submit="rpc")
    running = start_server(config, public_dir)
    yield running
    stop_server(running)


def _owner(jobid: str) -> str:
    shown = subprocess.run(
        ["scontrol", "show", "job", jobid], capture_output=True, text=True, check=True
    ).stdout
    return shown.split("UserId=", 1)[1].split()[0]


def test_a_submit_is_one_rpc_from_the_users_helper(server: Server, alice: httpx.Client) -> None:
    script = "#!/bin/bash\n#SBATCH --job-name=by-rpc -t 1:30\nsleep 30\n"
    before = scrape(server)
    jobid = ok_output(alice.post("/job/ln3", data={"jobscript": script}))["jobid"]
    after = scrape(server)
    # answered by the stand-in (a declined call counts nothing): no sbatch ran
    assert value(after, CALLS) == value(before, CALLS) + 1
    assert _owner(jobid).startswith("alice(")
    shown = subprocess.run(
        ["scontrol", "show", "job", jobid], capture_output=True, text=True, check=True
    ).stdout
    assert "JobName=by-rpc\n" in shown and "TimeLimit=00:02:00" in shown
    ok_output(alice.delete(f"/job/ln3/{jobid}"))


def test_what_it_cannot_be_sure_of_goes_to_sbatch(server: Server, alice: httpx.Client) -> None:
    before = scrape(server)
    directed = "#!/bin/bash\n#SBATCH --job-name=directed --exclusive\nsleep 30\n"
    jobid = ok_output(alice.post("/job/ln3", data={"jobscript": directed}))["jobid"]
    after = scrape(server)
    assert value(after, CALLS) == value(before, CALLS), "an option it does not know"
    assert _owner(jobid).startswith("alice(")
    detail = ok_output(alice.get(f"/job/ln3/{jobid}"))
    assert detail["name"][jobid] == "directed"
    ok_output(alice.delete(f"/job/ln3/{jobid}"))
    # a site's wrapper script in sbatch's place always runs (here: the "slow" machine's)
    before = scrape(server)
    jobid = ok_output(alice.post("/job/slow", data={"jobscript": "#!/bin/bash\ntrue\n"}))["jobid"]
    assert value(scrape(server), CALLS) == value(before, CALLS)
    assert _owner(jobid).startswith("alice(")
