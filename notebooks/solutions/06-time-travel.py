# Worked answers to the exercises of notebook 06 · Time travel.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.
# ruff: noqa: F821 - the names come from the notebook

# %% stock_when_declined
failed_at = next(e.position for e in shop.order("order-004").events if e.event_type == "PaymentCompleted")
p001 = projections.as_of(position=failed_at).pl("inventory").filter(pl.col("product_id") == "P001").row(0, named=True)
