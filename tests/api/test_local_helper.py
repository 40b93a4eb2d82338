"""The API on the ``local-helper`` transport: the user-facing tests of commands, submits,
kills, files and job output, run again through one long-lived helper per user (the
``server`` fixture below replaces the suite's), so that what they prove of ``local`` and
``ssh``, above all who everything runs as, is proved of this path too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_command import (  # noqa: F401
    test_a_command_whose_client_went_away_is_killed,
    test_command_past_its_timeout_is_killed_with_its_children,
    test_output_past_the_cap_is_an_error,
    test_runs_as_the_user_with_groups_home_and_a_clean_environment,
    test_the_pages_examples,
)
from tests.api.test_files import (  # noqa: F401
    bob_dir,
    home_dir,
    test_a_planted_symlink_never_writes_into_another_users_home,
    test_an_upload_past_the_machines_limit_is_413_and_leaves_nothing,
    test_bad_paths,
    test_fifos_and_devices_are_refused_never_hang,
    test_operations,
    test_permissions_are_the_machines,
    test_upload_download_ranges_views_and_checksum,
)
from tests.api.test_job_output import (  # noqa: F401
    job_dir,
    test_only_the_owner_reads_it_and_unknown_paths_are_404,
    test_paths_expanded_as_slurm_does_and_stderr_apart,
)
from tests.api.test_jobs import (  # noqa: F401
    test_bob_can_neither_inspect_nor_kill_alices_job,
    test_every_jobconf_key_reaches_slurm,
    test_hostile_values_stay_values,
    test_kill_a_running_job,
    test_renamed_scheduler_commands,
    test_submit_an_existing_jobfile,
    test_submit_as_the_page_client_does,
    test_submit_without_a_path_writes_under_newt,
)
from tests.api.test_memory_bound import (  # noqa: F401
    test_a_command_allocating_past_the_bound_fails_clearly,
    test_the_bound_is_the_configured_one,
)
from tests.conftest import Server, gateway_config, start_server, stop_server


@pytest.fixture(scope="module")
def server(cluster: None, public_dir: Path) -> Iterator[Server]:
    """One gateway whose machines all run on ``local-helper``."""
    running = start_server(gateway_config(public_dir, "local-helper", None), public_dir)
    yield running
    stop_server(running)
