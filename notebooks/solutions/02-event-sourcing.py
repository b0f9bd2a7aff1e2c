# Worked answers to the exercises of notebook 02 · Event sourcing.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.
# ruff: noqa: F821 - the names come from the notebook

# %% fold
state_002 = reduce(order.evolve, (e.event for e in shop.store.read_stream("order", "order-002")), None)

# %% conflict
taken = shop.store.read_stream("stock", "P005")[-1].version  # the newest version is certainly taken
try:
    shop.store.append([NewEvent(StockAdded(product_id="P005", quantity=1), taken, {"source": "clerk-c"})])
except ConcurrencyError as error:
    conflict = error
