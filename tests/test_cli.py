"""The command line checks what it is given: a bad option or variable, or a port in use, is one
line on stderr and exit status 2, before anything starts; a closed output pipe ends it quietly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from conftest import free_port_offset

import eventlab.cli
from eventlab.cli import BROKEN_PIPE, OUTPUT_ERROR, main
from eventlab.resilience import wait_until
from eventlab.services import SERVICE_NAMES
from eventlab.settings import Settings, ensure_ports_free
from eventlab.store import SqliteEventStore, open_store


def health(url: str) -> dict | None:
    """The /health answer at ``url`` (a 503 while it joins is an answer too), None while nothing listens."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return json.loads(refused.read())
    except (urllib.error.URLError, ConnectionError):
        return None


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["demo", "--orders", "-5"], "argument --orders: not a whole number of at least 1: '-5'"),
        (["demo", "--orders", "0"], "argument --orders: not a whole number of at least 1: '0'"),
        (["demo", "--orders", "ten"], "argument --orders: not a whole number of at least 1: 'ten'"),
        (["demo", "--payment-failure-rate", "2"], "argument --payment-failure-rate: not a probability from 0 to 1"),
        (["demo", "--payment-failure-rate", "nan"], "argument --payment-failure-rate: not a probability from 0 to 1"),
        (
            ["demo", "--gateway-latency-ms", "-100"],
            "argument --gateway-latency-ms: not a number of milliseconds from 0",
        ),
        (["up", "--gateway-latency-ms", "inf"], "argument --gateway-latency-ms: not a number of milliseconds from 0"),
        (
            ["demo", "--gateway-latency-ms", "1e308"],
            "argument --gateway-latency-ms: not a number of milliseconds from 0",
        ),
        (["demo", "--rate", "0"], "argument --rate: not a number of orders per second from 0.01 to 1,000,000,000"),
        (["demo", "--rate", "-1"], "argument --rate: not a number of orders per second from 0.01 to"),
        (["demo", "--rate", "nan"], "argument --rate: not a number of orders per second from 0.01 to"),
        (["demo", "--rate", "1e10"], "argument --rate: not a number of orders per second from 0.01 to"),
        # the wait between two orders overflowed time.sleep, after the shop had started
        (["demo", "--rate", "1e-300"], "argument --rate: not a number of orders per second from 0.01 to"),
        (["demo", "--timeout", "0"], "argument --timeout: not a number above 0: '0'"),
        (["demo", "--timeout", "-3"], "argument --timeout: not a number above 0: '-3'"),
        (["demo", "--seed", "x"], "argument --seed: not a whole number from -9223372036854775808 to"),
        # in each order id: the demo started the shop, then failed on the first id over 255 characters
        (["demo", "--seed", "9" * 50], "argument --seed: not a whole number from -9223372036854775808 to"),
        (["up", "--seed", "-9223372036854775809"], "argument --seed: not a whole number from"),
        (["audit", "--grace", "1e11"], "argument --grace: not a number of seconds from 0 to 1,000,000,000: '1e11'"),
        (["audit", "--grace", "1e400"], "argument --grace: not a number of seconds from 0 to 1,000,000,000"),
        (["query", "SELECT 1", "--timeout", "inf"], "argument --timeout: not a number of seconds from 0 to"),
        (["trace", "demo-s0-r1-00001", "--width", "0"], "argument --width: not a whole number from 1 to 10000: '0'"),
        (["show", "orders", "--limit", "99999999999999999999"], "argument --limit: not a whole number from 0 to"),
        (["show", "orders", "--limit", "-1"], "argument --limit: not a whole number from 0 to"),
        (["audit", "--store", " "], "argument --store: empty: give a SQLite file or a postgresql:// URL"),
        # Path.expanduser raised RuntimeError: "Could not determine home directory."
        (["audit", "--data-dir", "~nosuchuser/x"], "argument --data-dir: cannot expand '~nosuchuser': no such user"),
        (["audit", "--store", "~nosuchuser/x.db"], "argument --store: cannot expand '~nosuchuser': no such user"),
        (["export", "~nosuchuser/x"], "argument DIR: cannot expand '~nosuchuser': no such user"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_status_2(argv, complaint, tmp_path, capsys):
    # when: a command gets an option it cannot use
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--data-dir", str(tmp_path / "shop")])
    # then: one line names the option and the value, and nothing was started or written
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and complaint in err and err.startswith(f"eventlab {argv[0]}: error: ")
    assert not (tmp_path / "shop").exists()


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (["trace", "\udcff"], "ORDER_ID"),
        (["dlq", "list", "--topic", "\udcff"], "--topic"),
        (["dlq", "list", "--consumer", "\udcff"], "--consumer"),
        (["dlq", "replay", "--all", "--topic", "\udcff"], "--topic"),
    ],
)
def test_an_argument_that_is_not_utf8_is_refused_naming_it(argv, argument, tmp_path, capsys):
    # given a shop's store, and an argument whose bytes are not UTF-8 (a shell's $'\xff': Python reads \udcff)
    open_store(Settings(data_dir=tmp_path)).close()
    # when a command would look it up in the store
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--data-dir", str(tmp_path)])
    # then one line names the argument, as `query` does, not the store driver's UnicodeEncodeError
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {argument}: holds bytes that are not UTF-8 (character 1)" in err


@pytest.mark.parametrize(
    ("command", "argument"),
    [
        (["demo", "--orders", "1", "--data-dir"], "--data-dir"),
        (["audit", "--data-dir"], "--data-dir"),
        (["dlq", "list", "--data-dir"], "--data-dir"),
        (["export", "--store", "events.db"], "DIR"),
    ],
)
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_directory_is_refused_not_the_working_directory(
    command, argument, value, tmp_path, monkeypatch, capsys
):
    # given a script whose directory variable came out empty, run in some working directory
    monkeypatch.chdir(tmp_path)
    # when it passes that as the shop's data directory or the export's
    with pytest.raises(SystemExit) as exit_:
        main([*command, value])
    # then one line says so, as --store '' does, and nothing is written where it runs
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {argument}: empty: give a directory" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv", [["query", "SELECT 1"], ["audit"], ["show", "orders"], ["export", "parquet"], ["dlq", "list"]]
)
def test_a_store_path_that_cannot_even_be_looked_at_is_one_line(argv, tmp_path, monkeypatch, capsys):
    # given a store path with a name longer than the file system allows (a permission denied on the
    # way behaves the same): Path.is_file raises for it instead of answering False
    store = tmp_path / ("x" * 300) / "events.db"
    monkeypatch.setenv("EVENTLAB_STORE_URL", str(store))
    monkeypatch.chdir(tmp_path)
    options = [] if argv[0] == "dlq" else ["--store", str(store)]
    # then every command that reads it says so in one line, exit status 2, not a traceback
    assert main([*argv, *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{store}: cannot be read (File name too long)" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "99999999999999999999999"],
        ["replay", "99999999999999999999999"],
        ["show", "1", "--limit", "-5"],
    ],
)
def test_a_dead_letter_id_or_limit_no_store_can_hold_is_one_line(argv, tmp_path, capsys):
    # when: a dead letter id beyond any store's integers (or a negative body limit) is given
    with pytest.raises(SystemExit) as exit_:
        main(["dlq", *argv, "--data-dir", str(tmp_path / "shop")])
    # then: one line names the argument and the value, not a traceback from the store
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{argv[-1]!r}" in err and "error: argument " in err
    assert not (tmp_path / "shop").exists()


@pytest.mark.parametrize(("argv", "said"), [([], "IDs or --all (see"), (["1", "--all"], "IDs or --all, not both")])
def test_dlq_replay_wants_ids_or_all_and_says_which_was_wrong(argv, said, tmp_path, capsys):
    assert main(["dlq", "replay", *argv, "--data-dir", str(tmp_path / "shop")]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "shop").exists()


@pytest.mark.parametrize("library", ["duckdb", "polars"])
def test_ctrl_c_while_it_is_still_importing_ends_it_quietly_with_130(library, tmp_path):
    # given Ctrl-C arriving while the commands import their libraries (most of the first second of
    # `up --processes`, in every child too): here an import hook raises it when that library is imported
    (tmp_path / "sitecustomize.py").write_text(
        "import builtins\n"
        "real = builtins.__import__\n"
        "def hooked(name, *args, **kwargs):\n"
        f"    if name == {library!r}:\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = hooked\n"
    )
    path = os.pathsep.join([str(tmp_path), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
    # when a command starts
    result = subprocess.run(
        [sys.executable, "-m", "eventlab", "audit", "--data-dir", str(tmp_path / "shop")],
        env=user_env(PYTHONPATH=path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then it ends with 130 and no traceback, as Ctrl-C does once it runs
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EVENTLAB_PARTITIONS", "abc", "EVENTLAB_PARTITIONS: not a whole number: 'abc'"),
        ("EVENTLAB_PARTITIONS", "0", "EVENTLAB_PARTITIONS: must be between 1 and 1000, not 0"),
        ("EVENTLAB_HTTP_PORT_OFFSET", "100000", "EVENTLAB_HTTP_PORT_OFFSET: 100000 puts the service ports at 108081"),
        ("EVENTLAB_HTTP_PORT_OFFSET", "-9000", "EVENTLAB_HTTP_PORT_OFFSET: -9000 puts the service ports at -919"),
    ],
)
@pytest.mark.parametrize("command", [["demo", "--orders", "5"], ["up"], ["up", "--processes"], ["audit"]])
def test_a_bad_variable_is_one_line_naming_it_and_exit_status_2(
    command, variable, value, message, tmp_path, monkeypatch, capsys
):
    # given: a variable eventlab cannot use
    monkeypatch.setenv(variable, value)
    # when: any command runs
    status = main([*command, "--data-dir", str(tmp_path / "shop")])
    # then: it stops before starting anything, with one line
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eventlab: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "shop").exists()


@pytest.mark.parametrize("command", [["projections"], ["audit", "--store"], ["export", "x", "--store"]])
def test_a_bad_variable_stops_a_command_that_would_not_read_it(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVENTLAB_PARTITIONS", "abc")
    argv = [*command, str(tmp_path / "events.db")] if command[-1] == "--store" else command
    assert main(argv) == 2
    assert capsys.readouterr().err == "eventlab: error: EVENTLAB_PARTITIONS: not a whole number: 'abc'\n"


def test_a_store_in_a_directory_that_may_not_be_written_is_read_or_says_why(tmp_path):
    # given a store in WAL mode, closed (no -shm beside it), in a directory that may not be written
    # (as root, the test drops the capabilities that let root write anywhere)
    directory = tmp_path / "shared"
    directory.mkdir()
    SqliteEventStore(directory / "events.db").close()
    directory.chmod(0o555)
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    try:
        done = subprocess.run(
            [*drop, sys.executable, "-m", "eventlab", "audit", "--store", str(directory / "events.db")],
            env=user_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        directory.chmod(0o755)
    # then the read-only command says what it needs, in one line, instead of "attempt to write a readonly database"
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "a store in WAL mode needs events.db-shm beside it" in done.stderr, done.stderr


def read_only(directory, *command: str) -> subprocess.CompletedProcess:
    """Run ``command`` with ``directory`` on a read-only file system: a read-only bind mount in a user and
    mount namespace of its own (skipped where ``unshare`` cannot make one)."""
    mount = 'mount --bind -o ro "$1" "$1" || exit 99; shift; exec "$@"'
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount, "sh", str(directory), *command],
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 99 or "unshare:" in done.stderr:
        pytest.skip(f"no read-only mount here: {done.stderr.strip()}")
    return done


def test_a_store_on_a_read_only_file_system_is_read_or_says_why(tmp_path):
    # given a store in WAL mode, closed (no -shm beside it), on a file system mounted read-only
    directory = tmp_path / "shared"
    directory.mkdir()
    SqliteEventStore(directory / "events.db").close()
    # when a read-only command reads it, then it says what it needs, as for a directory that may not be
    # written, instead of "reading the schema failed: unable to open database file"
    done = read_only(directory, sys.executable, "-m", "eventlab", "audit", "--store", str(directory / "events.db"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "a store in WAL mode needs events.db-shm beside it" in done.stderr, done.stderr
    # and a store that is not there, which cannot be made there, is not told to need its -shm
    create = "import sys; from eventlab.store import SqliteEventStore; SqliteEventStore(sys.argv[1]).read_all()"
    done = read_only(directory, sys.executable, "-c", create, str(directory / "new.db"))
    assert "new.db: connecting failed: unable to open database file" in done.stderr, done.stderr
    assert "WAL mode" not in done.stderr


@pytest.mark.parametrize(("variable", "value"), [("EVENTLAB_REPLICA", "abc"), ("EVENTLAB_REPLICAS", "99")])
def test_a_garbled_number_the_supervisor_gives_its_processes_is_one_line(variable, value, monkeypatch, capsys):
    # a shell may carry one from an earlier run: `eventlab run` gave a ValueError traceback
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("EVENTLAB_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["run", "order"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eventlab: error: {variable}: set by the supervisor") and err.count("\n") == 1


@pytest.mark.parametrize("command", [["demo", "--orders", "1"], ["up", "--processes"]])
@pytest.mark.parametrize(
    ("in_the_way", "reason"), [("", "a file of that name is in the way"), ("sub", "Not a directory")]
)
def test_a_data_dir_that_is_a_file_is_one_line_naming_it(command, in_the_way, reason, tmp_path, monkeypatch, capsys):
    # given: a regular file where the data directory (or one of its parents) should be
    (tmp_path / "shop").write_text("not a directory\n")
    data_dir = tmp_path / "shop" / in_the_way if in_the_way else tmp_path / "shop"
    monkeypatch.setenv("EVENTLAB_HTTP_PORT_OFFSET", str(free_port_offset()))
    # when: a command that writes the store runs there
    status = main([*command, "--data-dir", str(data_dir)])
    # then: one line names the directory and why, not a FileExistsError traceback, and the file is untouched
    assert status == 2
    err = capsys.readouterr().err
    what = "the data directory" if command[0] == "up" else "the event store's directory"  # up's lease is there too
    assert err == f"eventlab: error: cannot create {what} {data_dir}: {reason}\n"
    assert (tmp_path / "shop").read_text() == "not a directory\n"


def test_the_bad_variable_line_is_exactly_what_the_readme_promises(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "eventlab", "demo", "--data-dir", str(tmp_path)],
        env=user_env(EVENTLAB_PARTITIONS="abc"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "eventlab: error: EVENTLAB_PARTITIONS: not a whole number: 'abc'\n"


@pytest.mark.integration
@pytest.mark.parametrize("mode", [[], ["--processes"]])
def test_a_port_in_use_is_one_clear_error(mode, tmp_path):
    # given: another program listens on the order service's port
    offset = free_port_offset()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 8083 + offset))
        squatter.listen()
        # when: the shop is started
        result = subprocess.run(
            [sys.executable, "-m", "eventlab", "up", *mode, "--data-dir", str(tmp_path)],
            env=user_env(EVENTLAB_HTTP_PORT_OFFSET=str(offset)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    # then: one line names the port, its service and the way out; exit status 2
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"port {8083 + offset} of the order service is already in use" in result.stderr
    assert "EVENTLAB_HTTP_PORT_OFFSET" in result.stderr


@pytest.mark.parametrize("mode", [[], ["--processes"]])
@pytest.mark.parametrize("host", ["nosuchhost.invalid", "192.0.2.1"])  # no such name; an address not ours
def test_an_address_the_services_cannot_bind_is_one_line_naming_the_variable(mode, host, tmp_path):
    # when: the shop is started with EVENTLAB_HTTP_HOST set to an address this machine cannot bind
    result = subprocess.run(
        [sys.executable, "-m", "eventlab", "up", *mode, "--data-dir", str(tmp_path / "shop")],
        env=user_env(EVENTLAB_HTTP_HOST=host, EVENTLAB_HTTP_PORT_OFFSET=str(free_port_offset())),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # then: one line names the variable and the address, exit status 2, before anything started
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"eventlab: error: EVENTLAB_HTTP_HOST: cannot bind {host}: ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "shop").exists()


@pytest.mark.integration
@pytest.mark.parametrize("mode", [[], ["--processes"]])
def test_the_links_it_prints_are_on_the_address_the_services_bind(mode, tmp_path):
    # given: the services bind 127.0.0.2 only (a loopback address, but not 127.0.0.1)
    offset = free_port_offset()
    up = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "up", *mode, "--data-dir", str(tmp_path)],
        env=user_env(EVENTLAB_HTTP_HOST="127.0.0.2", EVENTLAB_HTTP_PORT_OFFSET=str(offset)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # when: it has printed a link for every service
        links: dict[str, str] = {}
        for line in up.stdout or ():
            name, *_, last = line.split() or [""]
            if name in SERVICE_NAMES and last.startswith("http://"):
                links[name] = last
            if len(links) == len(SERVICE_NAMES):
                break
        # then: each is on that address, and the order service answers there
        assert links == {name: f"http://127.0.0.2:{Settings().port(name) + offset}" for name in SERVICE_NAMES}
        assert wait_until(lambda: health(links["order"]), timeout=60)["service"] == "order"
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=60)
    assert up.returncode == 0


@pytest.mark.integration
def test_a_second_up_on_the_same_data_directory_is_one_clear_error(tmp_path, monkeypatch, capsys):
    # given: a shop running on a data directory
    first = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "up", "--data-dir", str(tmp_path)],
        env=user_env(EVENTLAB_HTTP_PORT_OFFSET=str(free_port_offset())),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert any(line.startswith("eventlab: <Shop") for line in first.stdout or ())  # it has started
        # when: another is started there, on other ports, in either mode
        monkeypatch.setenv("EVENTLAB_HTTP_PORT_OFFSET", str(free_port_offset()))
        for mode in ([], ["--processes"]):
            status = main(["up", *mode, "--data-dir", str(tmp_path)])
            # then: one line says so (two brokers and relays over one store strand each other's messages)
            error = f"eventlab: error: another eventlab up is running on {tmp_path}: stop it, or give this one another --data-dir\n"
            assert (status, capsys.readouterr().err) == (2, error)
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0


@pytest.mark.integration
def test_a_port_taken_while_the_shop_starts_is_the_same_error_and_nothing_is_left_running(
    tmp_path, monkeypatch, capsys
):
    # given: the order port is free when `up` checks, and taken when the shop binds it
    offset = free_port_offset()
    monkeypatch.setenv("EVENTLAB_HTTP_PORT_OFFSET", str(offset))
    squatter = socket.socket()
    checks = []

    def check_then_take(settings, *args):
        checks.append(settings)
        if len(checks) == 1:
            squatter.bind(("127.0.0.1", settings.port("order")))
            squatter.listen()
            return
        ensure_ports_free(settings, *args)

    monkeypatch.setattr(eventlab.cli, "ensure_ports_free", check_then_take)
    running = set(threading.enumerate())  # the session's shared shop, when an earlier test started it
    try:
        # when: `eventlab up` runs
        status = main(["up", "--data-dir", str(tmp_path)])
    finally:
        squatter.close()
    # then: the bind error is named like the early check, and the half-started shop was stopped
    assert status == 2 and len(checks) == 1  # the shop names the port itself when its bind fails
    assert f"port {8083 + offset} of the order service is already in use" in capsys.readouterr().err
    left = [t.name for t in threading.enumerate() if t not in running and t.name.startswith(("eventlab-", "http-"))]
    assert not left


@pytest.mark.parametrize(
    ("argv", "output", "said"),
    [
        (["audit"], "closed", "stdout is closed"),  # AttributeError: 'NoneType' object has no attribute 'flush'
        (["show", "orders"], "closed", "stdout is closed"),
        (["dlq", "list"], "closed", "stdout is closed"),
        (["audit"], "/dev/full", "No space left on device"),  # an OSError traceback, exit 1: "an invariant failed"
        (["query", "SELECT 1"], "/dev/full", "No space left on device"),
        (["show", "orders"], "ascii", "its encoding ascii cannot hold '\\u250c' (use a UTF-8 locale"),  # the table
        (["dlq", "list"], "ascii", "its encoding ascii cannot hold '\\xe9'"),  # the reason, café
    ],
)
def test_output_that_cannot_be_written_is_one_line_and_an_exit_status_of_its_own(argv, output, said, tmp_path):
    # given a store with a dead letter whose reason is not ASCII
    with SqliteEventStore(tmp_path / "events.db") as store:
        store.record_dead_letter("order", "t", 0, 7, b"K", b"body", [], "bad café")
    command = [sys.executable, "-m", "eventlab", *argv, "--data-dir", str(tmp_path)]
    if output == "closed":
        command = ["sh", "-c", 'exec "$@" >&-', "sh", *command]
    env = user_env(PYTHONIOENCODING="ascii") if output == "ascii" else user_env()
    # when the command's output cannot be written: stdout closed, a full disk, an encoding without its characters
    with open("/dev/full" if output == "/dev/full" else os.devnull, "w") as stdout:
        done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    # then one line on stderr says so, and the exit status is neither 1 (an invariant) nor 2 (a bad option)
    err = done.stderr.decode()
    assert done.returncode == OUTPUT_ERROR == 74
    assert err.startswith(f"eventlab: error: cannot write the output: {said}") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["projections"], ["--help"], ["demo", "--help"]])
def test_a_closed_pipe_ends_the_command_quietly(argv):
    # given: a reader that goes away before the command writes (`eventlab projections | head -0`)
    process = subprocess.Popen(
        [sys.executable, "-m", "eventlab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=user_env()
    )
    process.stdout.close()
    # when: the command writes its output
    err = process.stderr.read()
    process.stderr.close()
    # then: no traceback, and the status a shell gives a process ended by SIGPIPE (or 0 for help)
    assert process.wait(timeout=60) in (BROKEN_PIPE, 0) and err == b""
    if argv == ["projections"]:
        assert process.returncode == BROKEN_PIPE
