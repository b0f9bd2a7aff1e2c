"""``eventlab chaos``: break the running shop on a seed and prove, from durable evidence, that
nothing was lost (:mod:`.inject` does the breaking, :mod:`.report` the proving).

Example:
    >>> report = run_chaos(Settings(data_dir=Path("/tmp/chaos")), ChaosConfig(orders=60, rate=20))  # doctest: +SKIP
    >>> report.ok, report.lost, report.poison["missing"]  # doctest: +SKIP
    (True, 0, 0)
"""

from __future__ import annotations

from eventlab.chaos.report import ChaosReport, Observations, build_report
from eventlab.chaos.run import COMMAND, ChaosConfig, ChaosError, run_chaos

__all__ = ["COMMAND", "ChaosConfig", "ChaosError", "ChaosReport", "Observations", "build_report", "run_chaos"]
