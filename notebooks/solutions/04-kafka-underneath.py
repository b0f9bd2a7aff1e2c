# Worked answers to the exercises of notebook 04 · Kafka underneath.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.
# ruff: noqa: F821 - the names come from the notebook

# %% order_message
my_order = run_order(shop, "U004", {"P005": 1}).order_id
# five messages: the three orders above, order-003's again (the relay's rewind above) and yours
created_messages = read_topic(shop, "order.lifecycle.created", max_messages=5)
message = next(r for r in created_messages if r.key == my_order)
