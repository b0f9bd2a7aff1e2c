# Worked answers to the exercises of notebook 07 · Failure lab.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.
# ruff: noqa: F821 - the names come from the notebook

# %% outage_nothing_lost
panel.outage.value = True
outage_orders = [run_order(shop, user, {"P012": 1}).order_id for user in ("U012", "U001")]
panel.outage.value = False
