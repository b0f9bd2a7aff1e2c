"""``eventlab chaos``: the report's verdict catches every kind of loss, and a CI-sized run through
kills, duplicates, every kind of poison and a broker pause loses nothing.

The report builder is judged on real SQLite stores written the way the services write them
(``projection_story``): a stuck order, a lost one, a duplicated email, a poison message never
dead-lettered or dead-lettered twice must each make the verdict fail, and a clean run pass.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import free_port_offset
from projection_story import START, ShopStory, standard_story

from eventlab.chaos import ChaosConfig, ChaosError, Observations, build_report, run_chaos
from eventlab.chaos.inject import POISON_KINDS, forge
from eventlab.chaos.report import DeadLetterSeen, Kill, PoisonSent
from eventlab.chaos.run import _schedule
from eventlab.cli import build_parser, main
from eventlab.events import PaymentCompleted
from eventlab.kafka.cloudevents import UndecodableMessage, from_message
from eventlab.settings import Settings
from eventlab.store.base import NewEvent

T0 = START.timestamp()


def clean_story(directory: Path) -> ShopStory:
    """A finished shop: one order completed, one declined and compensated, each email mailed once."""
    story = ShopStory(directory / "events.db")
    story.user("U1")
    story.product("P1", price_cents=1000, stock=10)
    story.completed_order("O1", "U1", {"P1": 2})
    story.declined_order("O2", "U1", {"P1": 1})
    story.publish()
    mail(directory, [("O1", "order_confirmed"), ("O1", "order_completed"), ("O2", "order_confirmed")])
    mail(directory, [("O2", "order_cancelled")])
    return story


def mail(directory: Path, emails: list[tuple[str, str]]) -> None:
    with (directory / "mailbox.jsonl").open("a", encoding="utf-8") as file:
        for order_id, kind in emails:
            email = {"order_id": order_id, "kind": kind, "to": "u1@example.com", "subject": f"{kind} {order_id}"}
            file.write(json.dumps(email) + "\n")


def poisoned(chaos_id: str, kind: str, *consumers: str) -> PoisonSent:
    return PoisonSent(chaos_id, kind, "order.lifecycle.cancelled", consumers)


def judge(directory: Path, observed: Observations, **kw: object):
    return build_report(observed, directory / "events.db", directory / "mailbox.jsonl", **kw)  # type: ignore[arg-type]


# --- the verdict ---------------------------------------------------------------------------------


def test_a_clean_run_passes(tmp_path):
    # given a finished shop and one poison message dead-lettered by both its consumers (one of them twice
    # copied to the topic, same dlq_id)
    clean_story(tmp_path).store.close()
    observed = Observations(
        placed=["O1", "O2"],
        poison=[poisoned("deep_json-1", "deep_json", "inventory", "notification")],
        dead_letters=[
            DeadLetterSeen("deep_json-1", "inventory", "7"),
            DeadLetterSeen("deep_json-1", "inventory", "7"),
            DeadLetterSeen("deep_json-1", "notification", "8"),
        ],
    )
    # when it is judged
    report = judge(tmp_path, observed)
    # then nothing is wrong, and the copies are counted apart from the dead letters
    assert report.ok, report.problems
    assert (report.placed, report.terminal, report.completed, report.cancelled) == (2, 2, 1, {"payment_failed": 1})
    assert (report.lost, report.stuck, report.double_charges, report.oversell, report.duplicate_emails) == (0,) * 5
    assert report.emails == 4
    assert report.poison["once"] == 2 and report.poison["copies"] == 3 and report.poison["expected"] == 2
    assert report.poison["by_kind"] == {"deep_json": {"expected": 2, "once": 2, "missing": 0, "multiple": 0}}
    assert all(check["ok"] for check in report.audit.values()) and "no_double_charge" in report.audit
    assert report.saga_ms["p50"] > 0 and report.saga_ms["p99"] >= report.saga_ms["p50"]
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True
    assert report.table().endswith("verdict: OK — nothing lost")


def test_a_stuck_or_missing_order_fails_the_run(tmp_path):
    # given O5 waiting for its payment for ever, and O6 acknowledged but never stored
    standard_story(tmp_path / "events.db").store.close()
    observed = Observations(placed=["O1", "O2", "O3", "O4", "O5", "O6"])
    # when the run is judged
    report = judge(tmp_path, observed)
    # then both are lost, O5 is stuck, and the audit's own check agrees
    assert not report.ok
    assert (report.lost, report.lost_orders, report.stuck, report.stuck_orders) == (2, ["O5", "O6"], 1, ["O5"])
    assert report.audit["orders_terminal"] == {"ok": False, "count": 1}
    assert any("lost" in p for p in report.problems) and any("stuck" in p for p in report.problems)
    assert any("orders_terminal" in p for p in report.problems)
    assert "FAILED" in report.table()


def test_an_order_nobody_acknowledged_must_still_end(tmp_path):
    # given O5 stored (the order service died before answering 202) but stuck
    standard_story(tmp_path / "events.db").store.close()
    report = judge(tmp_path, Observations(placed=["O1", "O2", "O3", "O4"]))
    # then it is not lost (never placed) but it is stuck
    assert (report.lost, report.unacknowledged, report.stuck) == (0, 1, 1) and not report.ok


def test_a_duplicate_email_fails_the_run(tmp_path):
    clean_story(tmp_path).store.close()
    mail(tmp_path, [("O1", "order_completed")])  # a successor re-sent what a killed notification had sent
    with (tmp_path / "mailbox.jsonl").open("a") as file:
        file.write('{"order_id": "O2", "ki')  # and a kill cut a line short
    report = judge(tmp_path, Observations(placed=["O1", "O2"]))
    assert (report.emails, report.duplicate_emails) == (5, 1)
    assert "1 duplicate emails" in report.problems and "invariant no_duplicate_email violated (1)" in report.problems
    assert report.notes == ["1 mailbox lines are not JSON"] and not report.ok


def test_a_double_charge_fails_the_run(tmp_path):
    story = clean_story(tmp_path)
    story.write(PaymentCompleted(order_id="O1", amount_cents=2000, status="COMPLETED"))
    story.publish()
    story.store.close()
    report = judge(tmp_path, Observations(placed=["O1", "O2"]))
    assert report.double_charges == 1 and "invariant no_double_charge violated (1)" in report.problems


def test_poison_must_be_dead_lettered_exactly_once_per_consumer(tmp_path):
    clean_story(tmp_path).store.close()
    observed = Observations(
        placed=["O1", "O2"],
        poison=[
            poisoned("garbage-1", "garbage", "order"),  # never dead-lettered
            poisoned("oversized-1", "oversized", "inventory", "notification"),  # notification's is missing
            poisoned("unknown_type-1", "unknown_type", "payment"),  # two dead letters for one message
            poisoned("missing_headers-1", "missing_headers", "payment"),  # two copies without dlq_id: strict
        ],
        dead_letters=[
            DeadLetterSeen("oversized-1", "inventory", "3"),
            DeadLetterSeen("unknown_type-1", "payment", "4"),
            DeadLetterSeen("unknown_type-1", "payment", "5"),
            DeadLetterSeen("missing_headers-1", "payment", None),
            DeadLetterSeen("missing_headers-1", "payment", None),
        ],
    )
    report = judge(tmp_path, observed)
    p = report.poison
    assert (p["sent"], p["expected"], p["once"], p["missing"], p["multiple"], p["copies"]) == (4, 5, 1, 2, 2, 5)
    assert p["by_kind"]["oversized"] == {"expected": 2, "once": 1, "missing": 1, "multiple": 0}
    assert report.problems == [
        "2 poison dead letters missing",
        "2 poison messages dead-lettered more than once by one consumer",
    ]


def test_the_consumer_gap_is_the_silence_after_a_kill(tmp_path):
    # given payment killed 1 s after the story's start and writing its next event 2.5 s later
    story = clean_story(tmp_path)
    story.now = START + timedelta(seconds=3.5)
    event = PaymentCompleted(order_id="O2", amount_cents=1, status="FAILED")  # another declined attempt
    story.store.append([NewEvent(event, 2, {"source": "payment", "causation_id": "e-1", "correlation_id": "O2"})])
    story.publish()
    story.store.close()
    observed = Observations(
        placed=["O1", "O2"],
        started_at=T0,
        kills=[Kill(T0 + 1, "payment", 101), Kill(T0 + 1.2, "relay", 102), Kill(T0 + 2, "inventory", 103)],
    )
    # when judged, with and without a limit on the gap
    report = judge(tmp_path, observed)
    limited = judge(tmp_path, observed, max_gap_s=2.0)
    # then the gap is measured for consumers only; inventory wrote nothing afterwards
    assert [k["gap_s"] for k in report.kills] == [2.5, None, None]
    assert [k["process"] for k in report.kills] == ["payment", "relay", "inventory"]
    assert report.longest_consumer_gap_s == 2.5 and report.ok
    assert limited.problems == ["a consumer was silent 2.50 s after a kill (limit 2 s)"]
    # and a silence overlapping a broker pause measures the pause: listed, but not the longest gap
    observed.broker_pause = {"at_s": 1.5, "seconds": 1.0}
    paused = judge(tmp_path, observed, max_gap_s=2.0)
    assert paused.kills[0]["during_pause"] and paused.kills[0]["gap_s"] == 2.5
    assert paused.longest_consumer_gap_s is None and paused.ok


# --- what is injected ----------------------------------------------------------------------------


def test_the_fault_plan_follows_the_seed():
    config = ChaosConfig(orders=60, rate=20, kill_every=1.0, poison=2, pause_s=1.0, seed=3)

    def plan(seed: int) -> list[tuple[float, str]]:
        master = random.Random(seed)
        return _schedule(config, {n: random.Random(master.getrandbits(64)) for n in ("poison", "pause")})

    first = plan(3)
    assert first == plan(3) and first != plan(4)
    assert [t for t, action in first if action == "kill"] == [1.0, 2.0]
    assert sorted(a for _, a in first if a.startswith("poison:")) == sorted(f"poison:{k}" for k in POISON_KINDS * 2)
    assert all(0 < t < config.window_s for t, _ in first) and [a for _, a in first].count("pause") == 1


@pytest.mark.parametrize("kind", POISON_KINDS)
def test_every_poison_kind_is_refused_by_the_decoder(kind):
    value, headers = forge(kind, "OrderCancelled", random.Random(1))
    # deep JSON may also blow the decoder's stack: the service loop must survive that too
    with pytest.raises((UndecodableMessage, RecursionError) if kind == "deep_json" else UndecodableMessage):
        from_message(value, headers)
    assert len(value) > 900_000 if kind == "oversized" else len(value) < 300_000


def test_a_used_data_dir_is_refused_before_anything_starts(tmp_path):
    clean_story(tmp_path).store.close()
    with pytest.raises(ChaosError, match="fresh data dir"):
        run_chaos(Settings(data_dir=tmp_path), ChaosConfig(orders=1))


@pytest.mark.parametrize(
    ("stores", "variable"),
    [
        ({"store_url": "postgresql://shop:pw@localhost:5432/shop"}, "EVENTLAB_STORE_URL"),
        ({"service_store_urls": {"order": "/tmp/order.db"}}, "EVENTLAB_ORDER_STORE_URL"),
    ],
)
def test_a_store_chaos_cannot_judge_is_refused_before_anything_starts(tmp_path, stores, variable):
    settings = Settings(data_dir=tmp_path, **stores)
    with pytest.raises(ChaosError, match=variable):
        run_chaos(settings, ChaosConfig(orders=1))
    assert not list(tmp_path.iterdir())  # nothing was started or written


def test_the_command_line_refuses_nonsense():
    parser = build_parser()
    args = parser.parse_args(["chaos", "--orders", "10", "--duplicates", "0.1", "--kill-every", "0"])
    assert (args.orders, args.duplicates, args.kill_every, args.json) == (10, 0.1, 0.0, False)
    assert parser.parse_args(["chaos", "--poison-kinds", "garbage,deep_json"]).poison_kinds == ("garbage", "deep_json")
    for bad in (["--duplicates", "2"], ["--orders", "0"], ["--rate", "fast"], ["--poison-kinds", "acid"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["chaos", *bad])


@pytest.mark.parametrize("option", ["--pause", "--kill-every", "--rate", "--timeout", "--max-gap"])
@pytest.mark.parametrize("value", ["inf", "1e400", "1e300", "nan"])
def test_an_endless_time_or_rate_is_refused_in_one_line(option, value, capsys):
    # when: chaos is told to pause the broker (or wait, or kill) for ever; time.sleep(inf) is an
    # OverflowError in the pausing thread, after the broker was stopped
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["chaos", option, value])
    # then: the option is refused before anything starts, naming it
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {option}: must be a finite number from " in err


def test_a_count_too_large_for_a_float_is_refused_in_one_line(capsys):
    # when: a poison count has 401 digits (an int no float holds: math.isfinite of it overflows)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["chaos", "--poison", "1" + "0" * 400])
    # then: it is refused in one line, not a traceback
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


# --- a CI-sized run --------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_small_chaos_run_loses_nothing(tmp_path, monkeypatch, capsys):
    # given the shop as processes on free ports, in a fresh data dir, with the embedded broker
    for name in ("EVENTLAB_BOOTSTRAP_SERVERS", "EVENTLAB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EVENTLAB_HTTP_PORT_OFFSET", str(free_port_offset()))
    data_dir = tmp_path / "chaos"
    # when 60 orders go in at 20/s while processes die every second, 5 % of messages are delivered twice,
    # one poison message of each kind arrives and the broker stops for a second
    status = main(
        [
            "chaos",
            "--data-dir",
            str(data_dir),
            "--orders",
            "60",
            "--rate",
            "20",
            "--kill-every",
            "1",
            "--duplicates",
            "0.05",
            "--poison",
            "1",
            "--pause",
            "1",
            "--payment-failure-rate",
            "0.2",
            "--seed",
            "11",
            "--timeout",
            "25",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    report = json.loads(out)
    # then the run did what it was asked
    assert report["placed"] + report["rejected"] == 60 and report["placed"] > 0
    assert len(report["kills"]) == 2 and len({k["process"] for k in report["kills"]}) == 2
    assert report["poison"]["sent"] == len(POISON_KINDS) and set(report["poison"]["by_kind"]) == set(POISON_KINDS)
    assert report["duplicates_sent"] > 0 and report["broker_pause"]["seconds"] == 1.0
    assert set(report["audit"]) >= {"orders_terminal", "stock_never_negative", "no_double_charge"}
    assert "placing 60 orders" in err and (data_dir / "events.db").is_file()
    # and nothing was lost: every saga ended, no invariant broke, no email went twice,
    # every poison message was dead-lettered exactly once by each service that consumes its topic
    assert report["problems"] == [] and report["ok"] and status == 0, report["problems"]
    assert report["lost"] == report["stuck"] == report["double_charges"] == report["oversell"] == 0
    assert report["duplicate_emails"] == 0 and report["terminal"] == report["placed"]
    assert report["unacknowledged"] == 0  # a request cut by a kill was retried under its order's own id
    assert (
        report["poison"]["once"] == report["poison"]["expected"]
        and report["poison"]["copies"] >= report["poison"]["expected"]
    )
