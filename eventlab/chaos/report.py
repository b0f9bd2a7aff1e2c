"""What a chaos run proves: the report built from what was injected and what the shop stored.

Everything the verdict rests on is read after the fact from durable evidence — the event store
(orders, sagas, who wrote what when), the audit's invariants, the mailbox file and the copies
found on the dead-letter topics — never from the services' own counters, which die with them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict

from eventlab.demo import percentile, recorded_seconds
from eventlab.projections.audit import audit, read_mailbox
from eventlab.store.sqlite import SqliteEventStore
from eventlab.tables import text_rows

__all__ = [
    "CONSUMING_SERVICES",
    "AuditCount",
    "BrokerPause",
    "ChaosReport",
    "DeadLetterSeen",
    "Kill",
    "KillOutcome",
    "Observations",
    "PoisonCounts",
    "PoisonSent",
    "PoisonSummary",
    "build_report",
]

#: The services that consume from Kafka, whose silence after a kill is the consumer gap.
CONSUMING_SERVICES: tuple[str, ...] = ("order", "payment", "inventory", "notification")
_TERMINAL = ("OrderCompleted", "OrderCancelled")


@dataclass(frozen=True)
class Kill:
    """A ``kill -9`` sent to ``process`` (pid ``pid``) at wall-clock time ``at`` (epoch seconds)."""

    at: float
    process: str
    pid: int


@dataclass(frozen=True)
class PoisonSent:
    """A poison message tagged ``chaos_id`` on ``topic``; ``consumers`` should each dead-letter it once."""

    chaos_id: str
    kind: str
    topic: str
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class DeadLetterSeen:
    """One copy of a tagged message found on a ``*.dlq`` topic (``dlq_id`` None if the header is absent)."""

    chaos_id: str
    consumer: str
    dlq_id: str | None


class BrokerPause(TypedDict, total=False):
    """The broker pause as it happened: ``at_s`` (since the start) for ``seconds``, or why it was ``skipped``."""

    at_s: float
    seconds: float
    skipped: str


class KillOutcome(TypedDict):
    """A kill in the report: when (``at_s`` since the start), whom, and the consumer gap that followed."""

    at_s: float
    process: str
    pid: int
    gap_s: float | None
    during_pause: bool


class PoisonCounts(TypedDict):
    """Dead letters expected for poison messages, and how many were found once, never, or more often."""

    expected: int
    once: int
    missing: int
    multiple: int


class PoisonSummary(PoisonCounts):
    """:class:`PoisonCounts` over every kind, with the messages ``sent``, the ``copies`` seen and ``by_kind``."""

    sent: int
    copies: int
    by_kind: dict[str, PoisonCounts]


class AuditCount(TypedDict):
    """One audit check in the report: whether it held and how many violations it found."""

    ok: bool
    count: int


@dataclass
class Observations:
    """What the chaos driver did and saw while the shop ran (the report's input besides the store)."""

    config: dict[str, Any] = field(default_factory=dict)
    placed: list[str] = field(default_factory=list)
    rejected: int = 0
    warmup: list[str] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    poison: list[PoisonSent] = field(default_factory=list)
    dead_letters: list[DeadLetterSeen] = field(default_factory=list)
    duplicates_sent: int = 0
    broker_pause: BrokerPause = field(default_factory=BrokerPause)
    restarts: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    """The outcome of a chaos run; ``ok`` when nothing was lost, stuck, violated, mailed twice or
    left without exactly one dead letter (and, with ``max_gap_s``, no consumer was silent longer)."""

    config: dict[str, Any]
    placed: int
    rejected: int
    unacknowledged: int
    terminal: int
    completed: int
    cancelled: dict[str, int]
    lost: int
    lost_orders: list[str]
    stuck: int
    stuck_orders: list[str]
    double_charges: int
    oversell: int
    emails: int
    duplicate_emails: int
    audit: dict[str, AuditCount]
    poison: PoisonSummary
    duplicates_sent: int
    kills: list[KillOutcome]
    longest_consumer_gap_s: float | None
    max_gap_s: float | None
    broker_pause: BrokerPause
    restarts: dict[str, int]
    saga_ms: dict[str, float]
    elapsed_s: float
    notes: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """One JSON-able object (what ``eventlab chaos --json`` prints)."""
        return {**asdict(self), "ok": self.ok}

    def table(self) -> str:
        """A plain-text report, verdict last."""
        p = self.poison
        gap = "n/a" if self.longest_consumer_gap_s is None else f"{self.longest_consumer_gap_s:.2f} s"
        rows: list[tuple[str, object]] = [
            ("placed (202)", self.placed),
            ("  rejected", self.rejected),
            ("  in store without a 202", self.unacknowledged),
            ("terminal", f"{self.terminal} ({self.completed} completed, {sum(self.cancelled.values())} cancelled)"),
            *((f"  cancelled: {reason}", n) for reason, n in sorted(self.cancelled.items())),
            ("lost", self.lost),
            ("stuck", self.stuck),
            ("double charges", self.double_charges),
            ("oversell", self.oversell),
            ("emails", self.emails),
            ("duplicate emails", self.duplicate_emails),
            ("poison sent", f"{p['sent']} messages, {p['expected']} dead letters expected"),
            ("  dead-lettered once", p["once"]),
            ("  never dead-lettered", p["missing"]),
            ("  dead-lettered twice+", p["multiple"]),
            ("  copies on *.dlq", p["copies"]),
            *((f"  {kind}", f"{k['once']}/{k['expected']} once") for kind, k in p["by_kind"].items()),
            ("duplicates injected", self.duplicates_sent),
            ("kills", len(self.kills)),
            *(
                (
                    f"  +{k['at_s']:.1f} s {k['process']}",
                    _gap_text(k["process"], k["gap_s"], k["during_pause"]),
                )
                for k in self.kills
            ),
            ("longest consumer gap", gap),
            ("broker pause", ", ".join(f"{k} {v}" for k, v in self.broker_pause.items()) or "none"),
            ("restarts", ", ".join(f"{k} {v}" for k, v in self.restarts.items() if v) or "none"),
            ("saga p50 / p99", f"{self.saga_ms['p50']:.0f} ms / {self.saga_ms['p99']:.0f} ms"),
            ("elapsed", f"{self.elapsed_s:.1f} s"),
            *((f"audit {name}", "ok" if c["ok"] else f"VIOLATED ({c['count']})") for name, c in self.audit.items()),
            *(("note", note) for note in self.notes),
        ]
        verdict = ["verdict: " + ("OK — nothing lost" if self.ok else "FAILED")]
        return "\n".join([text_rows(rows), *verdict, *(f"  - {problem}" for problem in self.problems)])


def _gap_text(process: str, gap: float | None, during_pause: bool = False) -> str:
    if process not in CONSUMING_SERVICES:
        return "(consumes nothing)"
    if gap is None:
        return "wrote nothing afterwards"
    return f"next event after {gap:.2f} s" + (" (overlaps the broker pause: not counted)" if during_pause else "")


#: After SIGCONT every member's session has expired: the whole group rebalances, which takes about
#: a session timeout plus a join on the embedded broker. A kill's silence overlapping the pause or
#: that settling measures the pause, not how fast a killed consumer is replaced.
PAUSE_SETTLE_S = 2.0


def _overlaps_pause(at_s: float, gap_s: float, pause: BrokerPause) -> bool:
    if "at_s" not in pause or "seconds" not in pause:
        return False
    start, end = pause["at_s"], pause["at_s"] + pause["seconds"] + PAUSE_SETTLE_S
    return at_s < end and at_s + gap_s > start


def _poison_summary(sent: Sequence[PoisonSent], seen: Iterable[DeadLetterSeen]) -> PoisonSummary:
    """Per poison message and expected consumer: how many distinct dead letters were found.

    Copies of one dead letter share its ``dlq_id``; without that header every copy counts as a
    dead letter of its own (the strict reading).
    """
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    copies = 0
    for n, dead in enumerate(seen):
        copies += 1
        ids[(dead.chaos_id, dead.consumer)].add(dead.dlq_id or f"copy-{n}")
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for poison in sent:
        for consumer in poison.consumers:
            found = len(ids.get((poison.chaos_id, consumer), ()))
            outcome = "once" if found == 1 else "missing" if found == 0 else "multiple"
            by_kind[poison.kind]["expected"] += 1
            by_kind[poison.kind][outcome] += 1
    totals = Counter[str]()
    for counts in by_kind.values():
        totals.update(counts)
    return {
        "sent": len(sent),
        **_poison_counts(totals),
        "copies": copies,
        "by_kind": {kind: _poison_counts(counts) for kind, counts in sorted(by_kind.items())},
    }


def _poison_counts(counts: Counter[str]) -> PoisonCounts:
    return {
        "expected": counts["expected"],
        "once": counts["once"],
        "missing": counts["missing"],
        "multiple": counts["multiple"],
    }


def build_report(
    observed: Observations, store_path: Path, mailbox: Path, *, max_gap_s: float | None = None
) -> ChaosReport:
    """Judge a finished run from ``observed``, the (stopped) event store and the mailbox file."""
    store = SqliteEventStore(store_path, create=False)
    try:
        records = store.read_records()
    finally:
        store.close()
    created: dict[str, float] = {}
    ended: dict[str, tuple[float, str]] = {}
    written_by: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.event_type == "OrderCreated":
            created[record.aggregate_id] = recorded_seconds(record.recorded_at)
        elif record.event_type in _TERMINAL and record.aggregate_id not in ended:
            reason = json.loads(record.data)["reason"] if record.event_type == "OrderCancelled" else ""
            ended[record.aggregate_id] = (recorded_seconds(record.recorded_at), reason)
        metadata = json.loads(record.metadata)
        if metadata.get("causation_id"):  # written by a consumer, not by an HTTP command
            written_by[metadata.get("source", "")].append(recorded_seconds(record.recorded_at))

    placed = list(dict.fromkeys(observed.placed))
    lost = [o for o in placed if o not in created or o not in ended]
    stuck = sorted(o for o in created if o not in ended)
    terminal = [o for o in placed if o in ended]
    reasons = Counter(ended[o][1] for o in terminal if ended[o][1])
    known = set(placed) | set(observed.warmup)
    latencies = [(ended[o][0] - created[o]) * 1000 for o in created if o in ended]

    checks = audit(store_path, grace=timedelta(0), mailbox=mailbox)
    audit_summary: dict[str, AuditCount] = {name: {"ok": r.ok, "count": r.count} for name, r in checks.items()}

    lines = read_mailbox(mailbox)
    emails = [line for line in lines if "error" not in line]
    torn = len(lines) - len(emails)  # lines a kill cut short
    notes = list(observed.notes) + ([f"{torn} mailbox lines are not JSON"] if torn else [])
    per_email = Counter((e.get("order_id"), e.get("kind")) for e in emails)
    duplicate_emails = sum(n - 1 for n in per_email.values() if n > 1)

    kills: list[KillOutcome] = []
    for kill in observed.kills:
        after = [t for t in written_by.get(kill.process, ()) if t > kill.at]
        gap = round(min(after) - kill.at, 3) if kill.process in CONSUMING_SERVICES and after else None
        at = round(kill.at - observed.started_at, 3)
        paused = gap is not None and _overlaps_pause(at, gap, observed.broker_pause)
        kills.append({"at_s": at, "process": kill.process, "pid": kill.pid, "gap_s": gap, "during_pause": paused})
    # A kill whose silence overlaps the broker pause measures the pause, not the takeover.
    gaps = [k["gap_s"] for k in kills if k["gap_s"] is not None and not k["during_pause"]]
    poison = _poison_summary(observed.poison, observed.dead_letters)

    problems = []
    if lost:
        problems.append(f"{len(lost)} placed orders lost (not stored or not terminal), e.g. {lost[0]}")
    if stuck:
        problems.append(f"{len(stuck)} orders stuck in a non-terminal state, e.g. {stuck[0]}")
    problems += [f"invariant {name} violated ({c['count']})" for name, c in audit_summary.items() if not c["ok"]]
    if duplicate_emails:
        problems.append(f"{duplicate_emails} duplicate emails")
    if poison["missing"]:
        problems.append(f"{poison['missing']} poison dead letters missing")
    if poison["multiple"]:
        problems.append(f"{poison['multiple']} poison messages dead-lettered more than once by one consumer")
    if max_gap_s is not None and gaps and max(gaps) > max_gap_s:
        problems.append(f"a consumer was silent {max(gaps):.2f} s after a kill (limit {max_gap_s:g} s)")

    return ChaosReport(
        config=observed.config,
        placed=len(placed),
        rejected=observed.rejected,
        unacknowledged=len([o for o in created if o not in known]),
        terminal=len(terminal),
        completed=len(terminal) - sum(reasons.values()),
        cancelled=dict(sorted(reasons.items())),
        lost=len(lost),
        lost_orders=lost[:20],
        stuck=len(stuck),
        stuck_orders=stuck[:20],
        double_charges=checks["no_double_charge"].count,
        oversell=checks["stock_never_negative"].count,
        emails=len(emails),
        duplicate_emails=duplicate_emails,
        audit=audit_summary,
        poison=poison,
        duplicates_sent=observed.duplicates_sent,
        kills=kills,
        longest_consumer_gap_s=max(gaps) if gaps else None,
        max_gap_s=max_gap_s,
        broker_pause=observed.broker_pause,
        restarts=dict(observed.restarts),
        saga_ms={"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1)},
        elapsed_s=round(observed.elapsed_s, 3),
        notes=notes,
        problems=problems,
    )
