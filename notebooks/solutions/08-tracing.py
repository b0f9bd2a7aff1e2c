# Worked answers to the exercises of notebook 08 · Tracing.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.
# ruff: noqa: F821 - the names come from the notebook

# %% payment_parent
payment = next(s for s in spans if s.service == "payment" and s.kind == "CONSUMER")
parent = next(s for s in spans if s.span_id == payment.parent_id)
