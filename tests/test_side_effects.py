"""Side effects happen once in effect: emails and charges survive kills, rollbacks and restarts.

The mailer and the gateway keep their own durable, keyed records in the data directory; these
stories kill (or roll back) the caller between the side effect and the commit, start new
instances and other processes, and check the world saw each effect once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
from conftest import run_python

from eventlab.adapters import FileMailer, Journal, SimulatedGateway
from eventlab.events import EmailRequested, EmailSent
from eventlab.projections import audit
from eventlab.services import notification
from eventlab.services.runtime import execute, trace_metadata
from eventlab.store.base import NewEvent
from eventlab.store.sqlite import SqliteEventStore

EMAIL = EmailRequested(order_id="O-1", kind="order_confirmed", to="ada@example.com", subject="We have O-1")


class Killed(Exception):
    """The process dies here (before its batch commits)."""


def mailbox_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def store(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        yield store


def test_an_email_delivered_before_a_rollback_is_not_sent_again_on_redelivery(tmp_path, store):
    # given a committed EmailRequested and the notification service with the file mailer
    [request] = store.append([NewEvent(EMAIL, 1, trace_metadata("notification", "O-1"))])
    mailbox = tmp_path / "mailbox.jsonl"
    service = notification.service(FileMailer(mailbox))

    def handle() -> list:
        return execute(
            store,
            service.streams(EMAIL),
            service.evolvers,
            lambda states: service.handle(EMAIL, states),
            trace_metadata("notification", "O-1", request.event_id),
            processed=("notification", request.event_id),
        )

    # when the service delivers the email, then dies before its batch commits
    with pytest.raises(Killed), store.transaction():
        handle()
        raise Killed
    assert not store.is_processed("notification", request.event_id)  # nothing of it was committed
    assert len(mailbox_lines(mailbox)) == 1  # but the email went out
    # and its successor gets the request again
    [sent] = handle()
    # then it records the email as sent without sending it twice
    assert sent.event == EmailSent(order_id="O-1", kind="order_confirmed", to="ada@example.com")
    assert [(e["key"], e["to"]) for e in mailbox_lines(mailbox)] == [("O-1/order_confirmed", "ada@example.com")]


def test_the_mailbox_delivers_each_key_once_across_processes(tmp_path):
    mailbox = tmp_path / "mailbox.jsonl"
    sender = f"""
        from eventlab.adapters import FileMailer
        from eventlab.events import EmailRequested
        mailer = FileMailer({str(mailbox)!r})
        for i in range(40):
            mailer(EmailRequested(order_id=f"O-{{i}}", kind="order_completed", to="a@example.com", subject="s"))
    """
    # when three processes deliver the same 40 emails at the same time
    children = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(sender)]) for _ in range(3)]
    assert [child.wait(60) for child in children] == [0, 0, 0]
    # then each is in the mailbox once
    keys = [email["key"] for email in mailbox_lines(mailbox)]
    assert sorted(keys) == sorted(f"O-{i}/order_completed" for i in range(40))
    # and a mailer started later knows them all
    assert FileMailer(mailbox)(EmailRequested(order_id="O-7", kind="order_completed", to="a", subject="s")) is False


def test_a_torn_last_line_of_a_killed_writer_is_cut_before_the_next_write(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.record_once("a", lambda _: {"key": "a"})
    with path.open("ab") as file:
        file.write(b'{"key": "b", "half')  # a writer killed mid-line
    assert Journal(path).record_once("b", lambda _: {"key": "b", "n": 1}) == ({"key": "b", "n": 1}, True)
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_a_journal_keeps_where_its_records_are_not_the_records(tmp_path):
    # given a mailbox of 20,000 emails of ~400 bytes, written earlier
    path = tmp_path / "mailbox.jsonl"
    text = "x" * 300
    with path.open("w") as file:
        for i in range(20_000):
            file.write(json.dumps({"key": f"O-{i:05d}/order_completed", "subject": text}) + "\n")
    # when a new journal reads it
    tracemalloc.start()
    try:
        journal = Journal(path)
        keys = journal.written_keys()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # then it knows every key, and holds a key and an offset per record, not the record (~800 bytes
    # parsed), nor did it read the 7 MB file at once
    assert len(keys) == 20_000
    assert held / 20_000 < 250, held
    assert peak < 2 * held, (peak, held)
    # and a record is read back from its line when asked for, also by the record's maker
    assert journal.record_once("O-00007/order_completed", lambda _: {"key": "new"})[0]["subject"] == text
    seen = journal.record_once("n", lambda records: {"key": "n", "seen": records["O-19999/order_completed"]["key"]})
    assert seen == ({"key": "n", "seen": "O-19999/order_completed"}, True)


def test_a_journal_rewritten_in_place_never_answers_with_another_keys_record(tmp_path):
    # given a gateway that charged O1, then its journal emptied and written again by another gateway
    path = tmp_path / "gateway.jsonl"
    first = SimulatedGateway(failure_rate=0.0, path=path)
    assert first.charge("O1", 1000).approved
    path.write_text("")
    other = SimulatedGateway(failure_rate=0.0, path=path)
    for i in range(2, 6):
        other.charge(f"O{i}", 77_700 + i)
    # when the first gateway refunds O1, then charges O1
    refund = first.refund("O1")
    # then it goes by the file as it is now: no charge of O1 is in it, so nothing to refund (it read
    # O2's line where O1's had been, and refunded O2's 77,702 cents), and a charge after it is refused
    assert refund.refunded_cents == 0
    assert first.charge("O1", 1000).approved is False
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6


def test_a_journal_in_a_directory_not_made_yet_makes_it_and_then_reuses_it(tmp_path):
    # given a journal whose directory does not exist
    path = tmp_path / "later" / "deeper" / "journal.jsonl"
    journal = Journal(path)
    # when two records are written
    journal.record_once("a", lambda records: {"key": "a"})
    journal.record_once("b", lambda records: {"key": "b"})
    # then the directory was made and both lines are in the file
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_the_gateways_answer_survives_a_restart_and_holds_in_another_process(tmp_path):
    path = tmp_path / "gateway.jsonl"
    # given an approved charge
    assert SimulatedGateway(failure_rate=0.0, path=path).charge("O-1", 1999).approved
    # when another process, whose gateway would decline everything, charges the same order and a new one
    out = run_python(f"""
        from eventlab.adapters import SimulatedGateway
        gateway = SimulatedGateway(failure_rate=1.0, path={str(path)!r})
        print(gateway.charge("O-1", 1999).approved, gateway.charge("O-2", 500).approved)
    """)
    # then the first answer stands there, and a new instance here sees both answers
    assert out.split() == ["True", "False"]
    restarted = SimulatedGateway(failure_rate=0.0, path=path)
    assert restarted.charges == 2
    assert restarted.charge("O-2", 500).approved is False  # the first answer, not a new roll of the dice
    # and a refund is made once, after any restart
    assert restarted.refund("O-1").refunded_cents == 1999
    assert SimulatedGateway(path=path).refund("O-1").refunded_cents == 1999
    assert sum(1 for line in path.read_text().splitlines() if json.loads(line)["key"] == "refund:O-1") == 1


def test_the_audit_catches_a_duplicated_email_and_an_email_without_its_event(tmp_path, store):
    # given one requested email, delivered
    store.append([NewEvent(EMAIL, 1, trace_metadata("notification", "O-1"))])
    mailbox = tmp_path / "mailbox.jsonl"
    FileMailer(mailbox)(EMAIL)
    report = audit(store.path)
    assert report["no_duplicate_email"].ok and report["emails_backed_by_events"].ok
    # when the same email is in the mailbox twice, and an email nobody requested appears
    line = mailbox.read_text()
    forged = EmailRequested(order_id="O-9", kind="order_cancelled", to="eve@example.com", subject="?")
    mailbox.write_text(line + line + json.dumps({"key": "O-9/order_cancelled", **forged.model_dump()}) + "\n")
    # then the audit names them
    report = audit(store.path)
    assert report["no_duplicate_email"].violations == (
        {"key": "O-1/order_confirmed", "deliveries": 2, "lines": [1, 2]},
    )
    [unbacked] = report["emails_backed_by_events"].violations
    assert (unbacked["key"], unbacked["problem"]) == (
        "O-9/order_cancelled",
        "no stored EmailRequested for this order, kind and address",
    )
    assert not report.ok
