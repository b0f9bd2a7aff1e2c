"""The interpreter's collector is tuned only while a shop runs in the process (eventlab.collector)."""

import gc

from eventlab import Settings, Shop
from eventlab.collector import THRESHOLDS, restore, tune


def _collector() -> tuple[tuple[int, int, int], bool]:
    return gc.get_threshold(), gc.get_freeze_count() > 0


def test_a_running_shop_freezes_its_start_up_heap_and_its_stop_puts_the_collector_back(tmp_path):
    # given the collector as this process has it (another shop of the session may be running)
    before = _collector()
    settings = Settings.from_env(env={}, data_dir=tmp_path)

    # when a shop runs
    with Shop(settings, http=False):
        # then its start-up heap is frozen (no collection walks it) and collections are rarer
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0

    # and once it has stopped, the collector is as it was
    assert _collector() == before


def test_overlapping_shops_keep_the_collector_tuned_until_the_last_one_stops():
    # given the collector as this process has it
    before = _collector()

    # when two shops tune it and the first one to stop restores it
    tune()
    tune()
    restore()

    # then it stays tuned for the one still running
    assert gc.get_threshold() == THRESHOLDS

    # and once the last one has stopped, it is as it was (a restore too many changes nothing)
    restore()
    assert _collector() == before
    if before[0] != THRESHOLDS:  # no other shop of the session is running
        restore()
        assert _collector() == before
