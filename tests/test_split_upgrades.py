"""A store per service over a shop's life: an upgrade that subscribes a service to more event types while
another process (the supervisor) also tracks it, and a shop that ran on one store given a store per
service later (refused: its data is not moved)."""

from __future__ import annotations

import pytest

from eventlab.events import ProductCreated, UserCreated
from eventlab.kafka.relay import catch_up_subscriptions, rewind
from eventlab.store import NewEvent, SqliteEventStore

pytestmark = pytest.mark.integration

#: Order's subscriptions before and after an upgrade that keeps its own copy of the users too.
BEFORE_UPGRADE = {"order": {"ProductCreated"}}
AFTER_UPGRADE = {"order": {"ProductCreated", "UserCreated"}}


def product(number: int) -> NewEvent:
    return NewEvent(ProductCreated(product_id=f"P{number}", name="Lamp", price_cents=2750, initial_stock=5), 1)


def user(number: int) -> NewEvent:
    return NewEvent(UserCreated(user_id=f"U{number}", name="Ada", email="ada@example.com"), 1)


def test_an_upgrade_seen_by_another_process_still_republishes_the_events_order_never_handled(tmp_path):
    # given a shared store with a product, a user and a product, all published, and an older Order (a store
    # of its own, subscribed to products only) that handled both products
    shared = SqliteEventStore(tmp_path / "events.db")
    first, registered, second = (shared.append([event])[0] for event in (product(1), user(1), product(2)))
    order_store = tmp_path / "order.db"
    with SqliteEventStore(order_store) as order:
        for event in (first, second):
            order.append([], processed=("order", event.event_id))
    shared.set_checkpoint("relay", shared.head())
    # and the supervisor of `eventlab up --processes` (its own store objects) tracked Order up to the head
    supervisor_shared, supervisor_order = SqliteEventStore(tmp_path / "events.db"), SqliteEventStore(order_store)
    catch_up_subscriptions(supervisor_shared, BEFORE_UPGRADE, {"order": supervisor_order})
    assert rewind(supervisor_shared, BEFORE_UPGRADE, {"order": supervisor_order}) == shared.head()
    # when the upgraded Order subscribes to users too: the relay process catches up, back before the user
    with SqliteEventStore(order_store) as relay_order:
        assert catch_up_subscriptions(shared, AFTER_UPGRADE, {"order": relay_order}) == first.position
    shared.set_checkpoint("relay", shared.head())  # published again; Order has not handled the user yet
    # then the supervisor sees the user as Order's lag
    assert supervisor_shared.pending_across("order", AFTER_UPGRADE["order"], supervisor_order) == 1
    # and when it stops, recording the tracking positions, and the shop starts on an empty embedded broker
    supervisor_shared.tracking_position_across("order", AFTER_UPGRADE["order"], supervisor_order)
    supervisor_shared.close()
    supervisor_order.close()
    with SqliteEventStore(order_store) as order:
        position = rewind(shared, AFTER_UPGRADE, {"order": order})
    # then the user Order never handled is published again
    assert position < registered.position
    shared.close()


def test_a_tracking_position_forgotten_while_another_process_computes_one_stays_forgotten(
    store_backend, tmp_path, monkeypatch
):
    # given a shared store whose two products Order (a store of its own, of each kind) handled, tracked up to
    # the first
    shared = SqliteEventStore(tmp_path / "shared.db")
    first, second = (shared.append([product(number)])[0] for number in (1, 2))
    order = store_backend.store
    order.append([], processed=("order", first.event_id))
    assert shared.tracking_position_across("order", BEFORE_UPGRADE["order"], order) == first.position
    order.append([], processed=("order", second.event_id))
    # when one process follows Order up to the head while another forgets Order's tracking meanwhile
    following = store_backend.reopen()
    checked = following.processed_among

    def checked_while_forgotten(consumer, event_ids):
        monkeypatch.setattr(following, "processed_among", checked)
        shared.forget_tracking_across("order", order)
        return checked(consumer, event_ids)

    monkeypatch.setattr(following, "processed_among", checked_while_forgotten)
    assert shared.tracking_position_across("order", BEFORE_UPGRADE["order"], following) == second.position
    # then the forgetting wins: the next tracking starts from the first event again
    assert order.checkpoint(f"tracking:order@{first.event_id}") == 0
    if following is not order:
        following.close()
    shared.close()
