"""Pure pieces of commands: parameters, schedules, limits, the status model, the wire."""

from __future__ import annotations

import datetime
import subprocess

import pytest

from proto.commands import MAX_FILE_CONTENT, FileSend, TaskResult, TaskRun, is_task_id, task_id
from proto.messages import MAX_FRAME_SIZE, decode, encode
from server.commands import (
    ParameterError,
    check_values,
    invocation_status,
    parameter_names,
    render,
    resolve_parameters,
)
from server.scheduler import FrequencyError, parse_frequency, parse_limit

HOSTILE = ["$(touch /tmp/pwned)", "`id`", "a; echo INJECTED", "' \" \\ $HOME *",
           "line1\nline2", "${PATH}", "-n", "", "ünïcode ✓"]


def test_placeholders_become_variable_references():
    script = 'echo "{{name}}" {{ count }} {{ACS::InstanceId}} {{name}}'
    assert parameter_names(script) == ["name", "count"]
    assert render(script, "RunShellScript") == (
        'echo "${PORTHOLE_PARAM_name}" ${PORTHOLE_PARAM_count} ${PORTHOLE_ACS_InstanceId} '
        "${PORTHOLE_PARAM_name}")
    assert render("{{a-b}}", "RunPowerShellScript") == "$env:PORTHOLE_PARAM_a_b"
    assert render("{{x}}", "RunBatScript") == "%PORTHOLE_PARAM_x%"


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_data_in_a_real_shell(value, tmp_path):
    script = render('printf "%s" "{{v}}"', "RunShellScript")
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                         env={"PORTHOLE_PARAM_v": value, "PATH": "/usr/bin:/bin"},
                         cwd=tmp_path, check=True)
    assert out.stdout == value
    assert list(tmp_path.iterdir()) == []


def test_parameter_validation():
    assert resolve_parameters("{{a}} {{b}}", {"a": "1"}, {"b": "2", "z": "9"}) == \
        {"a": "1", "b": "2"}
    with pytest.raises(ParameterError, match="no value for parameter b"):
        resolve_parameters("{{a}} {{b}}", {"a": "1"}, {})
    with pytest.raises(ParameterError, match="has no parameter c"):
        resolve_parameters("{{a}}", {"a": "1", "c": "2"}, {})
    with pytest.raises(ParameterError, match="NUL"):
        check_values({"a": "x\0y"})
    with pytest.raises(ParameterError, match="not a parameter name"):
        check_values({"a b": "x"})
    with pytest.raises(ParameterError, match="longer than"):
        check_values({"a": "x" * 5000})
    with pytest.raises(ParameterError, match="differ only"):
        parameter_names("{{a-b}} {{a_b}}")
    with pytest.raises(ParameterError, match="unknown built-in"):
        parameter_names("{{ACS::Nope}}")


def test_frequencies():
    now = 1_700_000_000.0
    assert parse_frequency("rate(5m)").next_after(now, now) == now + 300
    # missed runs are not made up: the next one is the first in the future
    assert parse_frequency("rate(10s)").next_after(now - 35, now) == now + 5
    at = parse_frequency("at(2030-01-01 08:00:00 Asia/Shanghai)")
    assert at.next_after(now, now) == datetime.datetime(2030, 1, 1, 0, 0,
                                                        tzinfo=datetime.UTC).timestamp()
    assert at.next_after(at.at, at.at) is None
    assert parse_frequency("at(2030-01-01 08:00:00 GMT+8)").at == at.at
    cron = parse_frequency("0 */20 * * * ? Asia/Shanghai")
    nxt = cron.next_after(now, now)
    assert nxt > now and int(nxt) % 1200 == 0
    five = parse_frequency("30 9 * * 1-5 America/New_York")
    local = datetime.datetime.fromtimestamp(five.next_after(now, now),
                                            five.zone)
    assert (local.hour, local.minute) == (9, 30) and local.weekday() < 5
    for bad in ("rate(0s)", "rate(5 minutes)", "at(tomorrow)", "at(2030-01-01 08:00:00 Mars/X)",
                "* * *", "61 * * * *", "every day"):
        with pytest.raises(FrequencyError):
            parse_frequency(bad)


def test_limits():
    assert parse_limit("", 10, "MaxErrors", -1) == -1
    assert parse_limit("3", 10, "MaxErrors", -1) == 3
    assert parse_limit("10%", 1000, "MaxConcurrency", 0) == 100
    assert parse_limit("1%", 5, "MaxConcurrency", 0) == 1
    for bad in ("-1", "150%", "x", "1.5"):
        with pytest.raises(ValueError):
            parse_limit(bad, 10, "MaxErrors", -1)


def _inv(**kw):
    return {"stop_requested_at": None, "next_run_at": None, **kw}


def test_invocation_status_model():
    assert invocation_status(_inv(), {"Pending": 3}) == "Pending"
    assert invocation_status(_inv(), {"Pending": 1, "Success": 2}) == "Running"
    assert invocation_status(_inv(), {"Running": 1}) == "Running"
    assert invocation_status(_inv(), {"Success": 3}) == "Success"
    assert invocation_status(_inv(), {"Success": 1, "Timeout": 1}) == "PartialFailed"
    assert invocation_status(_inv(), {"Failed": 2}) == "Failed"
    assert invocation_status(_inv(next_run_at=1.0), {"Success": 1}) == "Scheduled"
    assert invocation_status(_inv(), {}, targets_waiting=True) == "Scheduled"
    assert invocation_status(_inv(stop_requested_at=1.0), {"Stopping": 1}) == "Stopping"
    assert invocation_status(_inv(stop_requested_at=1.0), {"Terminated": 1}) == "Stopped"


def test_wire_messages_round_trip_and_fit_a_frame():
    tid = task_id("t-" + "a" * 20, 7)
    assert is_task_id(tid) and not is_task_id("../../etc/passwd.1")
    run = TaskRun(tid, "echo hi", "root", 5, "", "RunShellScript", {"PORTHOLE_PARAM_x": "1"})
    assert decode(encode(run)) == run
    big = TaskResult(tid, "Success", 0, "", "x" * 4000, b"y" * 65536, 16 << 20, 9, 1.0, 2.0)
    assert len(encode(big)) < MAX_FRAME_SIZE
    f = FileSend(tid, "/tmp", "a", b"z" * MAX_FILE_CONTENT, "root", "", "0600", True)
    assert decode(encode(f)) == f
