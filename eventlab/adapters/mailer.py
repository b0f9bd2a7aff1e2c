"""The mailer: delivers emails as JSON lines in ``mailbox.jsonl`` (a notebook can read it), once each.

Each email carries its idempotency key, ``<order id>/<kind>`` (Notification requests one email of
each kind per order), and the mailbox refuses a key it has already delivered, across threads and
processes (see :class:`~eventlab.adapters.journal.Journal`). So a Notification killed after
delivering but before recording ``EmailSent``, or a batch rolled back after the mailer ran, cannot
send an email twice: the redelivered request finds its key and only ``EmailSent`` is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from eventlab.adapters.journal import Journal, Record
from eventlab.events import EmailRequested

__all__ = ["MAILBOX", "FileMailer", "email_key"]

#: The mailbox's file name in the data directory.
MAILBOX = "mailbox.jsonl"


def email_key(order_id: str, kind: str) -> str:
    """The idempotency key of the email of ``kind`` about ``order_id``."""
    return f"{order_id}/{kind}"


class FileMailer:
    """Appends each email once, as a JSON line with its ``key``, to ``path``.

    Example:
        >>> mailer = FileMailer(store_path.parent / "mailbox.jsonl")
        >>> email = EmailRequested(order_id="O1", kind="order_confirmed", to="u1@example.com", subject="Thanks")
        >>> mailer(email), mailer(email)
        (True, False)
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._journal = Journal(self.path)

    def __repr__(self) -> str:
        return f"FileMailer({str(self.path)!r})"

    def __call__(self, email: EmailRequested) -> bool:
        """Deliver ``email`` unless its key was delivered before; return whether it was delivered now."""
        key = email_key(email.order_id, email.kind)

        def line(_records: Mapping[str, Record]) -> Record:
            return {"key": key, **email.model_dump()}

        _, delivered = self._journal.record_once(key, line)
        return delivered
