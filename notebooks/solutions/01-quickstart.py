# Worked answers to the exercises of notebook 01 · Quickstart.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.
# ruff: noqa: F821 - the names come from the notebook

# %% first_order
my_order = shop.place_order("U002", {"P002": 1, "P005": 1})
shop.wait(my_order)
