"""A real SMTP server on 127.0.0.1 for the embedded default: where Airflow's failure alerts arrive.

aiosmtpd's ``Controller`` runs the server in a thread of this process on a free
port; its ``Mailbox`` handler adds each message to a Maildir folder, so a
person (``make airflow`` prints the folder) or a test reads exactly what a mail
server would have delivered. Airflow reaches it through an
``AIRFLOW_CONN_SMTP_DEFAULT`` connection: plain SMTP, no TLS, on 127.0.0.1.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

from embedded.stack import free_port

SENDER = "privacy-pipeline-airflow@localhost"
# Who the embedded default alerts (PIPELINE_ALERT_EMAIL_TO); the server accepts any recipient.
ALERT_RECIPIENT = "ml-platform@localhost"


@dataclass(frozen=True)
class MailServer:
    host: str
    port: int
    maildir: Path

    @property
    def address(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def airflow_connection(self) -> str:
        """The ``AIRFLOW_CONN_SMTP_DEFAULT`` value that points Airflow's SMTP hook here."""
        return json.dumps(
            {
                "conn_type": "smtp",
                "host": self.host,
                "port": self.port,
                # Plain SMTP on the loopback: nothing to encrypt against, nothing to log in to.
                "extra": {"disable_tls": True, "disable_ssl": True, "from_email": SENDER, "timeout": 10},
            }
        )

    def messages(self) -> list[EmailMessage]:
        """Every message received so far, oldest first."""
        # A Maildir keeps each delivered message as one RFC 5322 file under new/.
        files = sorted((self.maildir / "new").iterdir(), key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in files]


def body_text(message: EmailMessage) -> str:
    """The message's HTML (or plain) body as text."""
    part = message.get_body(preferencelist=("html", "plain"))
    return "" if part is None else str(part.get_content())


@contextmanager
def mail_server(maildir: Path) -> Iterator[MailServer]:
    """An SMTP server on 127.0.0.1 (free port) storing every message into the Maildir ``maildir``."""
    # A Maildir's three folders; mailbox.Maildir makes them only when the top folder is new.
    for folder in ("new", "cur", "tmp"):
        (maildir / folder).mkdir(parents=True, exist_ok=True)
    port = free_port()
    controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield MailServer(host="127.0.0.1", port=port, maildir=maildir)
    finally:
        controller.stop()
