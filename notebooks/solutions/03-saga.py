# Worked answers to the exercises of notebook 03 · The order saga.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.
# ruff: noqa: F821 - the names come from the notebook

# %% cancelled_for_stock
no_stock = run_order(shop, "U004", {"P004": 1000}).order_id  # P004 has 200 in stock

# %% compensation_cause
released = next(e for e in declined.events if e.event_type == "StockReleased")
cause = next(e for e in declined.events if e.event_id == released.metadata["causation_id"])
