"""The README cannot drift: every command it shows is run here, or mapped to the test that covers it.

A command is each line of a ```bash block, each ``$ `` line of another block, and each inline
`code` span that starts like a command (``.venv/bin/…``, ``eventlab …``, ``make …``, ``curl …``,
``python …``, ``docker …``, optionally after ``VAR=value``). The tests below run them as a user
would, with ``.venv/bin/`` replaced by this interpreter's scripts, ``make`` told not to rebuild the
venv, a temporary ``HOME`` (so ``~`` and the default data directory are fresh), and sizes shrunk
(``--orders 20``). Long-running commands (``make test``, ``jupyter lab``) are mapped in
:data:`MAPPED`. A new command that is neither run nor mapped fails
:func:`test_every_readme_command_is_run_or_mapped`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port_offset

from eventlab.kafka.broker import EmbeddedBroker
from eventlab.projections import CHECKS
from eventlab.projections.audit import MAILBOX_CHECKS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SCRIPTS = Path(sysconfig.get_path("scripts"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LOOKS_LIKE_A_COMMAND = re.compile(
    r"^(?:[A-Z][A-Z0-9_]*=\S+\s+)*(?:\.venv/bin/\S+|eventlab|make|curl|python3?|docker|jupyter)\s+\S"
)

#: Commands run by the tests in this file, by pattern (each pattern must match a README command).
QUICK_START = re.compile(r"^make demo(?: 'ARGS=[^']*')?$|^\.venv/bin/eventlab (?:--help|audit|projections|query)\b")
EXTERNAL_CLUSTER = re.compile(r"^EVENTLAB_BOOTSTRAP_SERVERS=\S+ make demo$")
MICROSERVICES = re.compile(r"^\.venv/bin/eventlab up --processes$|^curl ")
BENCHMARKS = re.compile(r"^python benchmarks/(saga|projections)\.py --json$")
TRACING = re.compile(r"^EVENTLAB_TRACING=file \.venv/bin/eventlab demo |^\.venv/bin/eventlab trace ")
RUN = (QUICK_START, EXTERNAL_CLUSTER, MICROSERVICES, BENCHMARKS, TRACING)

#: Commands too long-running or impossible here, and the test (or CI script) that covers each.
MAPPED = {
    "make test": ".ci/run",  # the CI script is `make test`
    "make docs": "tests/test_docs.py::test_make_docs_builds_a_page_for_the_readme_every_guide_and_every_notebook",
    # `make lab` installs, then runs `eventlab lab`, which the browser test starts and drives to the drawn saga
    "make lab": "tests/test_lab.py::test_make_lab_shows_what_it_installs_and_then_runs_eventlab_lab",
    "make lab ARGS=--no-browser": "tests/test_lab.py::test_lab_prints_a_working_link_to_the_first_notebook_and_stops_on_sigterm",
    ".venv/bin/eventlab doctor": "tests/test_doctor.py::test_a_ready_machine_passes_every_check",
    "eventlab doctor": "tests/test_doctor.py::test_a_ready_machine_passes_every_check",
    "eventlab run order": "tests/test_processes.py::test_one_process_per_service",  # the supervisor runs `eventlab run`
    "docker compose up -d kafka postgres": "tests/test_readme.py::test_compose_offers_kafka_where_the_readme_points",  # no Docker daemon
    "docker compose up -d jaeger": "tests/test_readme.py::test_compose_offers_kafka_where_the_readme_points",
    "eventlab projections": "tests/test_readme.py::test_quick_start_runs_and_prints_what_the_readme_shows",
    "eventlab audit": "tests/test_audit.py::test_cli_audit_prints_json_and_fails_on_a_violation",
    "eventlab up --processes": "tests/test_processes.py::test_one_process_per_service",
    "eventlab up": "tests/test_cli.py::test_a_second_up_on_the_same_data_directory_is_one_clear_error",
    # the test runs benchmarks/replicas.py's run(), which starts exactly this command, at CI size
    ".venv/bin/eventlab up --processes --replicas inventory=3,relay=2": "tests/test_replicas.py::"
    "test_orders_complete_on_three_inventory_replicas_while_the_active_relay_is_killed",
    "python benchmarks/replicas.py": "tests/test_replicas.py::"
    "test_orders_complete_on_three_inventory_replicas_while_the_active_relay_is_killed",
    # no Docker daemon: the test runs compose.yaml's commands and environment as processes
    "docker compose up -d --build": "tests/test_compose.py::"
    "test_the_compose_commands_run_the_shop_as_processes_and_an_order_completes",
    "eventlab run NAME": "tests/test_compose.py::"
    "test_every_process_of_the_shop_is_a_container_running_eventlab_run_on_its_seed_port",
    "docker compose ps": "tests/test_compose.py::test_every_process_of_the_shop_is_a_container_running_eventlab_run_on_its_seed_port",
    "docker compose exec notification eventlab audit": "tests/test_split_read_side.py::"
    "test_the_audit_of_a_consistent_split_shop_is_green_and_its_markers_sit_with_their_consumers",
    "docker compose down -v": "tests/test_compose.py::test_every_process_of_the_shop_is_a_container_running_eventlab_run_on_its_seed_port",
    "eventlab demo": "tests/test_demo.py::test_the_demo_passes_every_invariant_on_either_broker_and_either_store",
    "eventlab dlq list": "tests/test_dead_letters.py::test_list_show_and_replay_round_trip",
    "eventlab dlq show ID": "tests/test_dead_letters.py::test_list_show_and_replay_round_trip",
    "eventlab dlq replay ID": "tests/test_dead_letters.py::test_list_show_and_replay_round_trip",
    # 2,000 orders take minutes: the test runs the same command at CI size
    "eventlab chaos": "tests/test_chaos.py::test_a_small_chaos_run_loses_nothing",
    ".venv/bin/eventlab chaos --orders 2000 --rate 50 --kill-every 5 --duplicates 0.05 --payment-failure-rate 0.2 "
    "--seed 1": "tests/test_chaos.py::test_a_small_chaos_run_loses_nothing",
}

#: Extra options that keep a README command fast (appended, or replacing a size).
SMALLER = {
    "benchmarks/saga.py": ["--orders", "20", "--rate", "20", "--seconds", "1", "--raw-messages", "1000"],
    "benchmarks/projections.py": ["--events", "2000", "--repeat", "1"],
}


def readme_commands() -> list[str]:
    """Every command the README shows, normalised by ``shlex`` (comments dropped), in order."""
    found: list[str] = []
    for language, body in FENCE.findall(README):
        for line in body.splitlines():
            if language == "bash" or line.startswith("$ "):
                found.append(line.removeprefix("$ "))
    prose = FENCE.sub("", README)
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if LOOKS_LIKE_A_COMMAND.match(span)]
    commands = [shlex.join(shlex.split(text, comments=True)) for text in found]
    return list(dict.fromkeys(c for c in commands if c))


def commands_matching(pattern: re.Pattern[str]) -> list[str]:
    return [command for command in readme_commands() if pattern.search(command)]


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no EVENTLAB_* or XDG_DATA_HOME of ours, ``home`` as HOME, this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_") and k != "XDG_DATA_HOME"}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**env, **extra}


def argv(command: str, home: Path) -> tuple[dict[str, str], list[str]]:
    """The environment assignments and the argv that run ``command`` here."""
    tokens = shlex.split(command)
    assignments = {}
    while "=" in tokens[0] and tokens[0].split("=")[0].isupper():
        name, value = tokens.pop(0).split("=", 1)
        assignments[name] = value
    tokens = [str(home) + t[1:] if t.startswith("~/") else t for t in tokens]
    tokens = [re.sub(r"--orders \d+", "--orders 20", t) for t in tokens]
    program = tokens[0]
    if program.startswith(".venv/bin/"):
        tokens[0] = str(SCRIPTS / program.removeprefix(".venv/bin/"))
    elif program == "python":
        tokens = [sys.executable, *tokens[1:], *SMALLER.get(tokens[1], [])]
    elif program == "make":  # the venv is this interpreter's: do not build .venv/
        tokens = ["make", "--silent", "--no-print-directory", "-o", ".venv/.installed", f"BIN={SCRIPTS}", *tokens[1:]]
    return assignments, tokens


def run(command: str, home: Path, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess[str]:
    assignments, args = argv(command, home)
    return subprocess.run(
        args,
        cwd=ROOT,
        env=user_env(home, **assignments, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table_rows(text: str) -> dict[str, str]:
    """``label -> value`` of the demo's table (labels and values are separated by two spaces or more)."""
    rows = (
        re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines() if re.search(r"\S\s{2,}\S", line)
    )
    return {("  " if label.startswith("  ") else "") + label.strip(): value for label, value in rows}


def test_every_readme_command_is_run_or_mapped():
    commands = readme_commands()
    assert "make demo" in commands and len(commands) > 10  # the parser finds them
    for command in commands:
        how = [p.pattern for p in RUN if p.search(command)] + ([MAPPED[command]] if command in MAPPED else [])
        assert len(how) == 1, f"README command {command!r} must be run by one test here or mapped in MAPPED: {how}"
    for pattern in RUN:
        assert commands_matching(pattern), f"no README command matches {pattern.pattern!r} any more"
    for command, target in MAPPED.items():
        assert command in commands, f"{command!r} is mapped but no longer in the README"
        path, _, name = target.partition("::")
        # a test function, or a script that runs the command itself
        assert (ROOT / path).is_file() and (f"def {name}(" if name else command) in (ROOT / path).read_text(), target


def test_quick_start_runs_and_prints_what_the_readme_shows(tmp_path):
    # given: the README's quick-start commands, in order, in a fresh home
    sample = next(body for _, body in FENCE.findall(README) if body.startswith("$ make demo"))
    outputs = {}
    for command in commands_matching(QUICK_START):
        # when: each runs as a user runs it
        result = run(command, tmp_path)
        # then: it succeeds
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs[command] = result
    # and: `make demo` prints what the README shows, counts included (the same seed, the same
    # counts), except the timings and the home directory
    shown, printed = table_rows(sample), table_rows(outputs["make demo"].stdout)
    assert f"placed 100/100  {shown.pop('placed 100/100')}" in outputs["make demo"].stderr  # the progress
    for row in ("elapsed", "throughput", "saga latency p50", "saga latency p99"):
        assert shown.pop(row) and printed.pop(row)
    assert shown.pop("store").endswith("/.local/share/eventlab/demo/events.db")
    assert printed.pop("store") == str(tmp_path / ".local/share/eventlab/demo/events.db")
    assert printed == shown
    assert [label for label in printed if label.startswith("invariant ")] == [
        f"invariant {c.name}" for c in (*CHECKS, *MAILBOX_CHECKS)
    ]
    # and: the options passed through make (shrunk to 20 orders) arrive; the follow-up query's columns exist
    passed = next(result.stdout for command, result in outputs.items() if "ARGS=" in command)
    assert json.loads(passed)["orders"] == 20
    query = next(result.stdout for command, result in outputs.items() if " query " in command)
    assert "cancel_reason" in query and "completed" in query


def test_external_cluster_line_runs_the_demo_on_a_cluster_of_our_own(tmp_path):
    # given: a Kafka-protocol broker that eventlab did not start, in place of the README's localhost:9092
    (command,) = commands_matching(EXTERNAL_CLUSTER)
    with EmbeddedBroker(tmp_path / "broker") as broker:
        # when: the README's command runs against it
        result = run(command.replace("localhost:9092", broker.bootstrap_servers), tmp_path)
    # then: the demo completes every saga with every invariant
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout)["stuck"] == "0"


def test_the_python_example_runs(tmp_path):
    # given: the README's Python example, with its data directory in tmp_path
    (code,) = [body for language, body in FENCE.findall(README) if language == "python"]
    assert '"/tmp/my-shop"' in code
    code = code.replace('"/tmp/my-shop"', repr(str(tmp_path / "my-shop")))
    # when: it runs
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # then: it prints the order's outcome, then its saga event by event
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] in ("completed", "cancelled")
    assert "OrderCreated" in lines[1] and any("OrderCompleted" in line or "OrderCancelled" in line for line in lines)


def _http_get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def _wait_healthy(port: int, up: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + 120
    while True:
        try:
            return _http_get(port, "/health")
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
            assert up.poll() is None, up.communicate()[0]
            assert time.monotonic() < deadline, f"nothing answers on port {port}"
            time.sleep(0.2)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_microservice_mode_block_runs_as_written(tmp_path):
    # given: `eventlab up --processes` from the README, on ports moved by an offset
    up_command, *requests = commands_matching(MICROSERVICES)
    offset = free_port_offset()  # out of the ephemeral range, free now
    _, args = argv(up_command, tmp_path)
    up = subprocess.Popen(
        args,
        cwd=ROOT,
        env=user_env(tmp_path, EVENTLAB_HTTP_PORT_OFFSET=str(offset)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for port in range(8081 + offset, 8087 + offset):
            assert _parent(_wait_healthy(port, up)["pid"]) == up.pid  # our shop's, not another test's
        # when: each curl command runs, with the order id the README leaves to the reader
        answer: dict = {}
        for request in requests:
            request = re.sub(r"localhost:(808\d)", lambda m: f"localhost:{int(m.group(1)) + offset}", request)
            request = request.replace("<order_id>", answer.get("order_id", "<order_id>"))
            result = run(request, tmp_path, timeout=30)
            # then: each gets a JSON answer, not an error
            assert result.returncode == 0, result.stderr
            answer = json.loads(result.stdout)
            assert "error" not in answer, (request, answer)
        assert answer["status"] in ("created", "confirmed", "completed", "cancelled")
    finally:
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=60)[0]
    assert up.returncode == 0, output


def test_benchmark_commands_run(tmp_path):
    # given: the README's benchmark commands, shrunk to a few seconds each (generated stores in tmp_path)
    for command in commands_matching(BENCHMARKS):
        # when: each runs
        result = run(command, tmp_path, timeout=240, TMPDIR=str(tmp_path))
        # then: it prints its figures as one JSON object
        assert result.returncode == 0, result.stderr
        assert isinstance(json.loads(result.stdout.splitlines()[-1]), dict)


def test_compose_offers_kafka_where_the_readme_points():
    # `docker compose up -d` cannot run on the CI machines (no Docker daemon): check what it would start
    compose = (ROOT / "compose.yaml").read_text()
    # the host's port 9092 reaches the listener Kafka advertises to the host as localhost:9092
    host_port = re.search(r'ports: \["127\.0\.0\.1:9092:(\d+)"\]', compose)
    assert host_port and f"HOST://:{host_port[1]}" in compose
    assert re.search(r"KAFKA_ADVERTISED_LISTENERS: .*HOST://localhost:9092", compose)
    assert "EVENTLAB_BOOTSTRAP_SERVERS=localhost:9092" in README
    # and Jaeger where the tracing section points: OTLP/HTTP in, the UI out (the exporter is tested for real)
    assert '"127.0.0.1:4318:4318"' in compose and '"127.0.0.1:16686:16686"' in compose
    assert "EVENTLAB_OTLP_ENDPOINT=http://localhost:4318" in README


def test_tracing_block_runs_and_draws_the_first_orders_waterfall(tmp_path):
    # given: the README's tracing commands, the data directory moved into this test's home
    demo, trace = (c.replace("/tmp/traced", str(tmp_path / "traced")) for c in commands_matching(TRACING))
    # when: the demo runs traced, then `eventlab trace` draws the order the README names
    assert run(demo, tmp_path).returncode == 0
    assert (tmp_path / "traced" / "spans.jsonl").stat().st_size > 0
    result = run(trace, tmp_path)
    # then: a waterfall of that order's spans, every step of the saga on its service's row
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["service", "step", "start", "duration"]
    steps = {(row.split()[0], row.split()[1]) for row in rows[1:]}
    assert {("relay", "publish"), ("inventory", "process"), ("payment", "gateway"), ("notification", "mail")} <= steps
