"""Projections: the shop's read models, built with DuckDB from the event store.

Each projection is a named set of DuckDB tables and views, every one a pure SQL function of the
event log (:mod:`.definitions`). :class:`Projections` copies the log into an in-memory DuckDB,
builds them, catches up incrementally from its checkpoint, and answers "as of" a position or a
time; results come as DuckDB relations or polars DataFrames (through Arrow). :func:`audit`
checks the shop's invariants in SQL, :func:`query` runs read-only ad-hoc SQL in a sandbox that
can read nothing else (:mod:`.sandbox`: refused with :class:`QueryRefused`, time-limited with
:class:`QueryTimeout`), and :func:`export_parquet` writes everything to Parquet. Nothing here
ever writes to the event store.

Modules, one concern each: :mod:`.definitions` (the relations' SQL), :mod:`.sources` (where the
log is read from, chosen by the caller), :mod:`.typed` (JSON typed once), :mod:`.engine`
(:class:`Projections`: rebuild, refresh, as of), :mod:`.snapshot` (reading a schema's relations,
:class:`Snapshot`), :mod:`.sandbox` (user SQL), :mod:`.render` (notebook HTML), :mod:`.audit`,
:mod:`.adhoc`, :mod:`.export` and :mod:`.cli`.

Example:
    >>> from eventlab.projections import Projections, audit
    >>> with Projections(store_path) as projections:
    ...     revenue = projections.pl("revenue")
    ...     report = audit(projections)
"""

from eventlab.projections.adhoc import query
from eventlab.projections.audit import CHECKS, AuditReport, Check, CheckResult, audit
from eventlab.projections.definitions import PROJECTIONS, RELATIONS, Projection, Relation
from eventlab.projections.engine import Projections
from eventlab.projections.export import export_parquet
from eventlab.projections.sandbox import ProjectionError, QueryOutOfMemory, QueryRefused, QueryTimeout
from eventlab.projections.snapshot import Snapshot

__all__ = [
    "CHECKS",
    "PROJECTIONS",
    "RELATIONS",
    "AuditReport",
    "Check",
    "CheckResult",
    "Projection",
    "ProjectionError",
    "Projections",
    "QueryOutOfMemory",
    "QueryRefused",
    "QueryTimeout",
    "Relation",
    "Snapshot",
    "audit",
    "export_parquet",
    "query",
]
