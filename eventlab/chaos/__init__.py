"""``eventlab chaos``: break the running shop on a seed and prove, from durable evidence, that
nothing was lost (:mod:`.inject` does the breaking, :mod:`.report` the proving).

Example:
    >>> report = run_chaos(Settings(data_dir=Path("/tmp/chaos")), ChaosConfig(orders=60, rate=20))  # doctest: +SKIP
    >>> report.ok, report.lost, report.poison["missing"]  # doctest: +SKIP
    (True, 0, 0)
"""

from __future__ import annotations

from eventlab.chaos.report import ChaosReport, Observations, build_report
from eventlab.chaos.run import ChaosConfig, ChaosError, add_command, run_chaos

__all__ = ["ChaosConfig", "ChaosError", "ChaosReport", "Observations", "add_command", "build_report", "run_chaos"]
