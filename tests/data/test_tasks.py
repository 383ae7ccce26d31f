"""The datatrove task runner that prepare and clean share: a worker killed outright (as the
out-of-memory killer would) stops the command with the fix instead of hanging it, and a task's
UserError comes back as one line, with no traceback on the terminal, in a worker or in-process."""

import os

import pytest
from datatrove.pipeline.base import PipelineStep

from banglaslm.data.clean import Stage, run_stages
from banglaslm.data.tasks import run_tasks
from banglaslm.errors import UserError


class DiesInTask1(PipelineStep):
    """A step whose task 1 is killed outright."""

    name = "dies"

    def run(self, data=None, rank=0, world_size=1):
        if rank == 1:
            os.kill(os.getpid(), 9)
        return
        yield


class RefusesInTask0(PipelineStep):
    name = "refuses"

    def run(self, data=None, rank=0, world_size=1):
        if rank == 0:
            raise UserError("bad input in task 0; fix it", param="inputs")
        return
        yield


def test_a_prepare_worker_that_dies_stops_prepare_with_the_fix(tmp_path):
    with pytest.raises(UserError, match="a prepare worker died .*task 1.* run the same command again"):
        run_tasks([DiesInTask1()], 2, tmp_path / "logs", [0, 1], workers=2, command="prepare")


def test_a_clean_worker_that_dies_stops_clean_too(tmp_path):
    with pytest.raises(UserError, match="a clean worker died .*task 1"):
        run_stages([Stage("dies", [DiesInTask1()], 2)], tmp_path / "logs", workers=2, console="WARNING")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tasks_user_error_comes_back_as_itself_without_a_traceback(tmp_path, capfd, workers):
    with pytest.raises(UserError, match="bad input in task 0") as caught:
        run_tasks([RefusesInTask0()], 2, tmp_path / "logs", [0, 1], workers=workers, command="clean",
                  console="WARNING")
    assert caught.value.param == "inputs"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "bad input" not in err
    assert "bad input in task 0" in (tmp_path / "logs" / "00000" / "logs" / "task_00000.log").read_text()
