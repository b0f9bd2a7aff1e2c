"""Dead letters of a shop whose services have stores of their own (``EVENTLAB_<SERVICE>_STORE_URL``):
each service's dead letters, and those of its store's relay, are in its store, with ids numbered per
store. ``eventlab dlq`` lists every store's, each with its store, and ``--service NAME`` says whose
store an id is in; a one-store shop's output is exactly what it was. Real SQLite files, and the real
embedded broker where a replay must reach a service.
"""

from __future__ import annotations

import json

import pytest
from test_dead_letters import poison_headers, send, wait_until
from test_split_stores import split_settings

from eventlab import Shop, cli
from eventlab.dlq import AmbiguousDeadLetter, DeadLetters
from eventlab.errors import EventlabError
from eventlab.events import EmailRequested, PaymentCompleted
from eventlab.kafka.clients import STORE_TOPIC
from eventlab.store import SqliteEventStore, open_stores

pytestmark = pytest.mark.integration


def point_cli_at(monkeypatch, settings, bootstrap_servers=None):
    """The environment a person would set for ``eventlab dlq`` against this shop."""
    for service, url in settings.service_store_urls.items():
        monkeypatch.setenv(f"EVENTLAB_{service.upper()}_STORE_URL", url)
    if bootstrap_servers is not None:
        monkeypatch.setenv("EVENTLAB_BOOTSTRAP_SERVERS", bootstrap_servers)
    return ["--data-dir", str(settings.data_dir)]


def listed(capsys, *args):
    assert cli.main(["dlq", "list", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_split_shops_dead_letters_are_listed_shown_and_replayed_in_their_own_stores(tmp_path, monkeypatch, capsys):
    # given a shop with Order and Notification on SQLite files of their own
    settings = split_settings(tmp_path, ["order", "notification"])
    with Shop(settings) as shop:
        orders, mails = shop.stores.of("order"), shop.stores.of("notification")
        # when a malformed message arrives on a topic only Order reads, and one on a topic only Notification reads
        send(shop.kafka_settings, PaymentCompleted.topic, b"\x00 not json", headers=poison_headers("bad-pay"))
        send(shop.kafka_settings, EmailRequested.topic, b"{broken", headers=poison_headers("bad-mail"))
        wait_until(lambda: orders.dead_letters() and mails.dead_letters(), what="a dead letter in each store")
        # then each is in its own service's store, both as dead letter 1, none in the shared store
        assert [(x.id, x.event_id) for x in orders.dead_letters()] == [(1, "bad-pay")]
        assert [(x.id, x.event_id) for x in mails.dead_letters()] == [(1, "bad-mail")]
        assert shop.stores.of("user").dead_letters() == []
        cli_args = point_cli_at(monkeypatch, settings, shop.bootstrap_servers)

        # when a person lists the dead letters
        rows = listed(capsys, *cli_args)
        # then both are there, each with its store
        assert sorted((row["store"], row["id"], row["consumer"], row["topic"]) for row in rows) == [
            ("notification", 1, "notification", EmailRequested.topic),
            ("order", 1, "order", PaymentCompleted.topic),
        ]
        assert {row["store_name"] for row in rows} == {str(tmp_path / "order.db"), str(tmp_path / "notification.db")}
        assert cli.main(["dlq", "list", *cli_args]) == 0
        header, *lines = capsys.readouterr().out.splitlines()
        assert header.split()[3:5] == ["consumer", "store"]
        assert sorted(line.split()[4] for line in lines) == ["notification", "order"]
        assert [row["store"] for row in listed(capsys, *cli_args, "--service", "order")] == ["order"]

        # when they ask for dead letter 1 without saying whose
        assert cli.main(["dlq", "show", "1", *cli_args]) == 2
        # then it is refused in one line naming the option
        [error] = capsys.readouterr().err.splitlines()
        assert "in 2 stores" in error and "--service order" in error and "--service notification" in error
        # and with --service they get Notification's, and nothing from Order's
        assert cli.main(["dlq", "show", "1", "--service", "notification", *cli_args]) == 0
        shown = capsys.readouterr().out
        assert "ce_id: bad-mail" in shown and "{broken" in shown and "bad-pay" not in shown
        assert "store        notification" in shown

        # when they replay Notification's dead letter 1
        assert cli.main(["dlq", "replay", "1", "--service", "notification", *cli_args]) == 0
        assert capsys.readouterr().out == f"replayed 1 (store: notification) to {EmailRequested.topic}\n"
        # then the replay is recorded in Notification's store only
        assert (mails.dead_letters(ids=[1])[0].replays, orders.dead_letters(ids=[1])[0].replays) == (1, 0)
        # and it reached Notification again, which (still unfixable) dead-letters the new copy in its own store
        again = wait_until(lambda: mails.dead_letters(ids=[2]), what="the replayed copy dead-lettered")
        assert again[0].event_id == "bad-mail" and len(orders.dead_letters()) == 1
        # and an id that one store alone has needs no --service
        assert cli.main(["dlq", "show", "2", *cli_args]) == 0
        assert "store        notification" in capsys.readouterr().out

        # when they replay --all without a store
        assert cli.main(["dlq", "replay", "--all", *cli_args]) == 0
        out = capsys.readouterr().out
        # then every store's dead letters were replayed, each recorded in its own store
        assert "replayed 1 (store: order) to payment.transaction.completed" in out
        assert out.count("(store: notification)") == 2
        assert [x.replays for x in orders.dead_letters(ids=[1])] == [1]
        assert [x.replays for x in mails.dead_letters(ids=[1, 2])] == [2, 1]
        wait_until(lambda: len(orders.dead_letters()) == 2, what="Order's replayed copy dead-lettered")

        # and the Python API reads every store of the shop
        letters = DeadLetters(shop.stores, shop.kafka_settings)
        wait_until(lambda: letters.counts() == {"order": 2, "notification": 4}, what="every copy dead-lettered")
        assert letters.get(1, service="order").event_id == "bad-pay"
        with pytest.raises(AmbiguousDeadLetter, match="--service"):
            letters.get(1)


def test_each_stores_relay_dead_letters_are_listed_with_their_store_and_ids_looked_up_per_store(
    tmp_path, monkeypatch, capsys
):
    # given a split shop's stores (Order on its own, the rest sharing one), with dead letters recorded in each
    settings = split_settings(tmp_path, ["order"])
    stores = open_stores(settings)
    try:
        shared, orders = stores.of("user"), stores.of("order")
        shared.record_dead_letter("relay", STORE_TOPIC, 0, 7, None, b"{", [], "value is not JSON")
        orders.record_dead_letter("relay", STORE_TOPIC, 0, 3, None, b"?", [], "unknown event type 'X'")
        orders.record_dead_letter("order", PaymentCompleted.topic, 2, 40, b"O-1", b"\xff", [], "value is not JSON")
    finally:
        stores.close()
    cli_args = point_cli_at(monkeypatch, settings)
    # when the dead letters are listed
    rows = listed(capsys, *cli_args)
    # then each relay's is shown with its store: the services writing to it
    assert sorted((row["store"], row["consumer"], row["id"]) for row in rows) == [
        ("order", "order", 2),
        ("order", "relay", 1),
        ("user+product+payment+inventory+notification", "relay", 1),
    ]
    assert [row["id"] for row in listed(capsys, *cli_args, "--service", "payment")] == [1]
    # and --service looks an id up in that service's store only
    assert cli.main(["dlq", "show", "2", "--service", "inventory", *cli_args]) == 2
    assert "no dead letter 2 in the store of inventory" in capsys.readouterr().err
    assert cli.main(["dlq", "show", "2", *cli_args]) == 0  # only Order's store has a 2
    assert "consumer     order" in capsys.readouterr().out
    # and an ambiguous id is refused before anything is replayed (no broker is even needed to say so)
    assert cli.main(["dlq", "replay", "2", "1", *cli_args]) == 2
    assert "say which with --service user or --service order" in capsys.readouterr().err
    # and an unknown service is refused by the option itself
    with pytest.raises(SystemExit):
        cli.main(["dlq", "list", "--service", "warehouse", *cli_args])
    stores = open_stores(settings, create=False)
    try:
        with pytest.raises(EventlabError, match="no service 'warehouse'"):
            DeadLetters(stores).find(service="warehouse")
    finally:
        stores.close()


def test_a_one_store_shops_dead_letter_output_is_unchanged(tmp_path, monkeypatch, capsys):
    # given the default shop: one SQLite file, with a dead letter
    with SqliteEventStore(tmp_path / "events.db") as store:
        store.record_dead_letter("order", PaymentCompleted.topic, 0, 5, None, b"x", [], "value is not JSON")
    # when it is listed, shown and looked up
    [row] = listed(capsys, "--data-dir", str(tmp_path))
    assert cli.main(["dlq", "list", "--data-dir", str(tmp_path)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert cli.main(["dlq", "show", "1", "--data-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    # then there is no store column, key or line, as before stores per service
    assert list(row) == [
        "id",
        "recorded_at",
        "consumer",
        "topic",
        "partition",
        "offset",
        "event_id",
        "bytes",
        "published",
        "replays",
        "reason",
    ]
    assert header.split() == ["id", "recorded", "(UTC)", "consumer", "from", "bytes", "replays", "reason"]
    assert "store" not in shown
    # and --service names the one store every service shares
    assert cli.main(["dlq", "show", "1", "--service", "inventory", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == shown
    # and the Python API over one store answers as it did
    with SqliteEventStore(tmp_path / "events.db") as store:
        letters = DeadLetters(store)
        assert not letters.split and letters.counts() == {"order": 1}
        with pytest.raises(EventlabError, match="^no dead letter 9$"):
            letters.get(9)


@pytest.mark.parametrize("where", ["a-file/body.bin", "."])
def test_show_full_to_a_place_it_cannot_write_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys, where):
    # given a dead letter in Order's store
    settings = split_settings(tmp_path, ["order"])
    stores = open_stores(settings)
    try:
        stores.of("order").record_dead_letter("order", PaymentCompleted.topic, 0, 1, None, b"\xff", [], "not JSON")
    finally:
        stores.close()
    (tmp_path / "a-file").write_text("not a directory")
    target = tmp_path / where
    # when its body is asked for in a file under a file, or in a directory
    status = cli.main(["dlq", "show", "1", "--full", str(target), *point_cli_at(monkeypatch, settings)])
    # then one line names the option and the file, not a traceback
    [error] = capsys.readouterr().err.splitlines()
    assert status == 2 and error.startswith(f"eventlab: error: --full {target}: ")
