# Worked answers to the exercises of notebook 05 · Projections.
#
# Each "# %% <name>" block replaces the exercise cell of that name (cell metadata eventlab.exercise)
# and runs in the notebook's namespace, after every cell above it; tests/test_exercises.py runs the
# notebook that way and checks that every check cell prints ✓.

# %% lost_revenue_query
query = """
    SELECT cancel_reason, count(*) AS orders, sum(total_cents) AS lost_cents
    FROM orders
    WHERE status = 'cancelled'
    GROUP BY cancel_reason
    ORDER BY lost_cents DESC
"""
