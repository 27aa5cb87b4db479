"""Ending a task's processes never signals a process that only reuses the leader's pid."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import alive, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process trees")


def test_kill_tree_spares_a_pid_that_started_later_and_ends_the_one_that_started_then():
    from agent.posix_tasks import kill_tree, start_time

    bystander = subprocess.Popen(["sleep", "30"])  # in our session: no task's sid or pgid
    try:
        started = start_time(bystander.pid)
        assert kill_tree(bystander.pid, started - 1) == 0  # as if the leader had been reaped
        assert bystander.poll() is None
        assert kill_tree(bystander.pid, started) >= 1
        assert bystander.wait(10) == -9
    finally:
        bystander.kill()
        bystander.wait()


def test_kill_tree_ends_the_session_after_its_leader_is_gone():
    from agent.posix_tasks import kill_tree, start_time

    leader = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    started = start_time(leader.pid)
    orphan = int(leader.stdout.readline())
    leader.wait(10)  # reaped: only the session id still names the task
    assert kill_tree(leader.pid, started) >= 1
    wait_for(lambda: not alive(orphan), 10, "the orphan in the task's session ended")


def test_kill_tree_leaves_the_session_of_a_process_that_got_the_leaders_pid():
    from agent.posix_tasks import kill_tree, start_time

    other = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30"], start_new_session=True)
    try:
        started = start_time(other.pid)
        # Another task's leader had this pid and was reaped; its session is long empty.
        assert kill_tree(other.pid, started - 1) == 0
        assert other.poll() is None
    finally:
        kill_tree(other.pid, started)
        other.wait()
