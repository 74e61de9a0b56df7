"""ESMTP PIPELINING (RFC 2920) against real servers: Postfix's smtp-sink, which offers it, and
aiosmtpd, which does not (1.4) unless told to, and then reads pipelined commands as they come.

With PIPELINING, MAIL, RCPT... and DATA travel in one write, and the next message's envelope
travels with the previous message's final dot; each reply is still read and attributed to its
own command. Without it, each command waits for the reply to the one before. The tests assert
on what the server received, on what was waiting in its input when it handled each command
(sent ahead by the client), and on what each recipient was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core.mail import EmailMessage, get_connection
from django.db import connection

from notifications.delivery import Courier
from notifications.models import DeliveryAttempt, OutboundEmail, Status
from smtpsettings.options import parse_options
from smtpsettings.plan import Encryption, SmtpConfig, plan
from smtpsettings.problems import SmtpProblem
from smtpsettings.transport import Outgoing, SmtpTransport
from tests.components import binary
from tests.outbox import point_settings_at
from tests.smtpservers import TEST_HOST, Received, Recorder, free_port, require_test_host
from tests.smtpservers import smtp_server as aiosmtpd_server

BACKEND = "smtpsettings.backends.StoredSettingsBackend"


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def message(n: int, *recipients: str, sender: str = "gw@example.com") -> Outgoing:
    to = recipients or (f"u{n}@example.com",)
    data = f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: M{n}\r\n\r\nBody {n}.\r\n"
    return Outgoing(sender, list(to), data.encode())


def transport_for(port: int, **options) -> SmtpTransport:
    config = SmtpConfig(
        TEST_HOST,
        port,
        Encryption.AUTOMATIC,
        "",
        parse_options({"timeout": 5, "auto_tls": False, **options}),
        "",
    )
    return SmtpTransport(plan(config))


def send_all(transport: SmtpTransport, batch: list[Outgoing]) -> list[object]:
    """Each message with the next one as `following`, as the backends do: the results (the
    accepted dict, or the SmtpProblem raised), in order."""
    results: list[object] = []
    for index, outgoing in enumerate(batch):
        following = batch[index + 1] if index + 1 < len(batch) else None
        try:
            results.append(transport.send(*outgoing, following=following))
        except SmtpProblem as problem:
            results.append(problem)
    return results


# -- aiosmtpd, offering PIPELINING or not -----------------------------------------------------


@dataclass
class Seen:
    """A command as the server handled it; `ahead`: bytes of later input already waiting."""

    verb: str
    argument: str
    ahead: int


@dataclass
class Watching(Recorder):
    """Records what was already waiting in the server's input at each MAIL, RCPT and final dot
    (the client sent it before reading this reply), and misbehaves per address."""

    pipelining: bool = True
    seen: list[Seen] = field(default_factory=list)
    refuse_senders: dict[str, str] = field(default_factory=dict)  # sender -> reply to MAIL
    dot_replies: dict[str, str] = field(default_factory=dict)  # recipient -> reply to the dot
    cut_after_dot: set[str] = field(default_factory=set)  # recipient: accept, then hang up
    # Run (in a thread of its own, with its own database connection) at each final dot,
    # before the reply, with the dot's recipients.
    at_dot: Callable[[list[str]], None] | None = None

    def note(self, server, verb: str, argument: str) -> None:
        self.seen.append(Seen(verb, argument, len(server._reader._buffer)))

    def ahead(self, verb: str) -> list[bool]:
        return [s.ahead > 0 for s in self.seen if s.verb == verb]

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.note(server, "MAIL", address)
        if address in self.refuse_senders:
            return self.refuse_senders[address]
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.note(server, "RCPT", address)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        self.note(server, ".", envelope.rcpt_tos[0])
        if self.at_dot is not None:
            await asyncio.to_thread(_closing_connection(self.at_dot), list(envelope.rcpt_tos))
        reply = next((self.dot_replies[r] for r in envelope.rcpt_tos if r in self.dot_replies), "")
        if reply:
            return reply
        if self.cut_after_dot & set(envelope.rcpt_tos):
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
            server.transport.abort()  # taken, and the 250 never reaches the client
            return "250 OK"
        return await super().handle_DATA(server, session, envelope)


def _closing_connection(function: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    def run(recipients: list[str]) -> None:
        try:
            function(recipients)
        finally:
            connection.close()

    return run


def subjects(server) -> list[str]:
    return [m.message["Subject"] for m in server.messages]


def test_aiosmtpd_does_not_offer_pipelining_and_gets_the_classic_exchange():
    """Without PIPELINING, nothing is sent before the reply to what came before it."""
    recorder = Watching(pipelining=False)
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port)
        batch = [message(1, "a@example.com", "b@example.com"), message(2), message(3)]
        results = send_all(transport, batch)
        transport.close()
    assert all(not isinstance(r, Exception) for r in results), results
    assert subjects(server) == ["M1", "M2", "M3"]
    assert [(s.verb, s.argument) for s in recorder.seen[:4]] == [
        ("MAIL", "gw@example.com"),
        ("RCPT", "a@example.com"),
        ("RCPT", "b@example.com"),
        (".", "a@example.com"),
    ]
    assert [s for s in recorder.seen if s.ahead] == []
    assert server.recorder.connections == 1


def test_with_pipelining_the_next_envelope_travels_with_the_final_dot():
    recorder = Watching()
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port)
        batch = [message(1, "a@example.com", "b@example.com"), message(2), message(3)]
        results = send_all(transport, batch)
        transport.close()
    assert [r.reply for r in results] == ["250 OK: queued"] * 3
    assert subjects(server) == ["M1", "M2", "M3"]
    assert [m.rcpt_tos for m in server.messages] == [
        ["a@example.com", "b@example.com"],
        ["u2@example.com"],
        ["u3@example.com"],
    ]
    # MAIL with its RCPTs and DATA behind it; each final dot but the last with the next MAIL.
    assert recorder.ahead("MAIL") == [True, True, True]
    assert recorder.ahead("RCPT") == [True, True, True, True]
    assert recorder.ahead(".") == [True, True, False]
    assert server.recorder.connections == 1


@pytest.mark.django_db
def test_the_backend_sends_each_next_envelope_with_the_final_dot():
    recorder = Watching()
    with aiosmtpd_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        batch = [EmailMessage(f"B{i}", "Body", None, [f"u{i}@example.com"]) for i in range(4)]
        assert get_connection(BACKEND).send_messages(batch) == 4
    assert subjects(server) == ["B0", "B1", "B2", "B3"]
    assert recorder.ahead(".") == [True, True, True, False]
    assert server.recorder.connections == 1


def test_a_refused_rcpt_in_a_pipelined_group_keeps_its_own_reply():
    recorder = Watching(refuse_recipients={"gone@example.com": "550 5.1.1 No such user"})
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port)
        batch = [
            message(1),
            message(2, "a@example.com", "gone@example.com", "c@example.com"),
            message(3, "gone@example.com"),
            message(4),
        ]
        _, partly, nobody, _ = send_all(transport, batch)
        transport.close()
    assert partly == {"gone@example.com": (550, "5.1.1 No such user")}
    assert partly.reply == "250 OK: queued"
    assert isinstance(nobody, SmtpProblem) and nobody.kind == "recipients-refused"
    assert nobody.refused == {"gone@example.com": (550, "5.1.1 No such user")}
    assert "gone@example.com" in str(nobody)
    assert subjects(server) == ["M1", "M2", "M4"]
    assert server.messages[1].rcpt_tos == ["a@example.com", "c@example.com"]
    assert recorder.ahead(".") == [True, True, False]  # M3 never reached its dot
    assert server.recorder.connections == 1


def test_a_5xx_to_a_pipelined_mail_is_that_messages_and_the_next_one_goes():
    recorder = Watching(refuse_senders={"bad@example.com": "553 5.7.1 Sender address rejected"})
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port)
        batch = [message(1), message(2, sender="bad@example.com"), message(3)]
        first, refused, third = send_all(transport, batch)
        transport.close()
    assert first.reply == "250 OK: queued" and third.reply == "250 OK: queued"
    assert isinstance(refused, SmtpProblem) and refused.kind == "sender-refused"
    assert not refused.temporary and refused.step == "mail"
    assert "refused the sender address bad@example.com" in refused.advice
    assert refused.reply == (553, "5.7.1 Sender address rejected")
    assert subjects(server) == ["M1", "M3"]
    assert server.recorder.connections == 1


def test_a_4xx_after_the_dot_is_that_messages_and_the_pipelined_next_one_goes():
    recorder = Watching(dot_replies={"u1@example.com": "451 4.3.0 Try again later"})
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port)
        deferred, second = send_all(transport, [message(1), message(2)])
        transport.close()
    assert isinstance(deferred, SmtpProblem) and deferred.temporary
    assert deferred.step == "data" and deferred.reply == (451, "4.3.0 Try again later")
    assert second.reply == "250 OK: queued"
    assert subjects(server) == ["M2"]
    assert recorder.ahead(".") == [True, False]
    assert server.recorder.connections == 1


def test_a_connection_cut_after_the_dot_drops_the_envelope_sent_ahead():
    """M1 is taken but its 250 never arrives: a problem without a reply (M1 may be retried:
    the duplicate RFC 5321 allows), and M2, whose envelope went with that dot, goes over a
    new connection, once."""
    recorder = Watching(cut_after_dot={"u1@example.com"})
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port)
        cut, second = send_all(transport, [message(1), message(2)])
        transport.close()
    assert isinstance(cut, SmtpProblem) and cut.step == "data" and cut.temporary
    assert "closed the connection during data" in cut.advice
    assert second.reply == "250 OK: queued"
    assert subjects(server) == ["M1", "M2"]
    assert server.recorder.connections == 2


def test_an_envelope_sent_ahead_and_not_used_delivers_nothing():
    """The caller sends another message instead, or closes: the server waiting in DATA gets
    no content and no final dot, so the message sent ahead is never delivered."""
    recorder = Watching()
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port)
        transport.send(*message(1), following=message(2))
        transport.send(*message(3), following=message(4))
        transport.close()
        again = transport_for(server.port)
        again.send(*message(5))
        again.close()
    assert subjects(server) == ["M1", "M3", "M5"]
    assert [s.argument for s in recorder.seen if s.verb == "MAIL"] == ["gw@example.com"] * 5
    assert server.recorder.connections == 3


def test_no_envelope_travels_across_a_restart_or_a_throttle():
    recorder = Watching()
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port, restart_threshold=2)
        results = send_all(transport, [message(n) for n in range(1, 6)])
        transport.close()
    assert all(r.reply == "250 OK: queued" for r in results)
    assert subjects(server) == ["M1", "M2", "M3", "M4", "M5"]
    assert recorder.ahead(".") == [True, False, True, False, False]
    assert server.recorder.connections == 3

    recorder = Watching()
    with aiosmtpd_server(recorder=recorder) as server:
        transport = transport_for(server.port, max_per_second=1000)
        send_all(transport, [message(1), message(2)])
        transport.close()
    assert subjects(server) == ["M1", "M2"]
    assert recorder.ahead(".") == [False, False]


# -- Postfix's smtp-sink, which offers PIPELINING ---------------------------------------------


@dataclass
class Sink:
    port: int
    dump: Path

    def transactions(self) -> list[dict]:
        """Each message as smtp-sink dumped it: MAIL and RCPT arguments, and the subject."""
        found = []
        text = self.dump.read_text() if self.dump.exists() else ""
        for block in text.split("X-Client-Addr:")[1:]:
            lines = block.splitlines()
            found.append(
                {
                    "mail": next(ln[13:] for ln in lines if ln.startswith("X-Mail-Args: ")),
                    "rcpt": [ln[13:] for ln in lines if ln.startswith("X-Rcpt-Args: ")],
                    "subject": next(ln[9:] for ln in lines if ln.startswith("Subject: ")),
                }
            )
        return found


@contextlib.contextmanager
def smtp_sink(*options: str) -> Iterator[Sink]:
    """smtp-sink on a free loopback port, dumping every transaction to one file."""
    program = binary("smtp-sink", package="postfix", extra_dirs=("/usr/sbin",))
    directory = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    directory.chmod(0o777)  # smtp-sink writes as nobody when started by root
    dump = directory / "dump"
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [program, *user, *options, "-D", str(dump), f"127.0.0.1:{port}", "16"],
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            if process.poll() is not None:
                pytest.fail(f"smtp-sink exited: {process.stderr.read().decode()}")
            time.sleep(0.02)
        yield Sink(port, dump)
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.django_db
def test_smtp_sink_takes_a_pipelined_batch_from_the_backend_over_one_connection():
    with smtp_sink() as sink:
        point_settings_at(TEST_HOST, sink.port, restart_threshold=0)
        batch = [
            EmailMessage(f"Batch {i}", f"Body {i}\n.dot\n", None, [f"u{i}@example.com"])
            for i in range(30)
        ]
        batch[7].to.append("second@example.com")
        assert get_connection(BACKEND).send_messages(batch) == 30
        transactions = _wait_for(lambda: len(sink.transactions()) == 30, sink.transactions)
    assert [t["subject"] for t in transactions] == [f"Batch {i}" for i in range(30)]
    assert all(t["mail"] == "<gateway@example.com>" for t in transactions)
    assert [t["rcpt"] for t in transactions][6:9] == [
        ["<u6@example.com>"],
        ["<u7@example.com>", "<second@example.com>"],
        ["<u8@example.com>"],
    ]


def test_smtp_sink_without_pipelining_takes_the_classic_exchange():
    with smtp_sink("-p") as sink:
        transport = transport_for(sink.port)
        results = send_all(transport, [message(n) for n in range(1, 4)])
        transport.close()
        transactions = _wait_for(lambda: len(sink.transactions()) == 3, sink.transactions)
    assert all(not isinstance(r, Exception) for r in results), results
    assert [t["subject"] for t in transactions] == ["M1", "M2", "M3"]


def _wait_for(done, value, seconds: float = 10):
    """smtp-sink writes its dump after its reply: wait for the file to catch up."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return value()


# -- the outbox: the next envelope travels with the dot, its content waits for the commit ----


def queue_numbered(
    count: int, to: dict[int, list[str]] | None = None, senders: dict[int, str] | None = None
) -> list[int]:
    """Messages "N0".."N{count-1}" to nN@example.com (or to[N]), from the stored sender (or
    senders[N]), stored in one call; their ids in order."""
    to, senders = to or {}, senders or {}
    messages = [
        EmailMessage(f"N{n}", f"Body {n}", senders.get(n), to.get(n, [f"n{n}@example.com"]))
        for n in range(count)
    ]
    assert get_connection("notifications.backends.OutboxBackend").send_messages(messages) == count
    return list(OutboundEmail.objects.order_by("id").values_list("id", flat=True))


def replies(pk: int) -> dict[str, tuple[str, str]]:
    email = OutboundEmail.objects.get(pk=pk)
    return {r["address"]: (r["status"], r["reply"]) for r in email.recipients}


@pytest.mark.django_db(transaction=True)
def test_the_outbox_pipelines_and_sends_content_only_after_the_previous_commit(settings):
    """Each envelope but the first travels with the previous final dot; and when a message's
    content has arrived, the result of the one before it is committed already (a duplicate
    is possible only between a 250 and its commit). That result is its "sent" attempt: the
    rows are settled as Sent together afterwards (delivery.commit_sent)."""
    settings.OUTBOX_RETRY_FIRST_DELAY = 0
    uncommitted: list[str] = []

    def earlier_ones_committed(recipients: list[str]) -> None:
        n = int(recipients[0][1:].split("@")[0])
        earlier = OutboundEmail.objects.filter(subject__in=[f"N{i}" for i in range(n)])
        committed = DeliveryAttempt.objects.filter(email__in=earlier, outcome="sent")
        uncommitted.extend(
            earlier.exclude(pk__in=committed.values("email_id")).values_list("subject", flat=True)
        )

    recorder = Watching(at_dot=earlier_ones_committed)
    with aiosmtpd_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        ids = queue_numbered(6)
        assert Courier(worker="piped").drain() == 6
    assert subjects(server) == [f"N{n}" for n in range(6)]
    assert uncommitted == []
    assert recorder.ahead(".") == [True] * 5 + [False]
    assert server.recorder.connections == 1
    assert [replies(pk) for pk in ids] == [{f"n{n}@example.com": ("sent", "")} for n in range(6)]
    assert set(OutboundEmail.objects.values_list("status", "attempts")) == {(Status.SENT, 1)}


@pytest.mark.django_db(transaction=True)
def test_a_claim_lost_after_its_envelope_went_ahead_sends_nothing_of_it(settings):
    """While N1's envelope waits in the server (sent with N0's dot), another worker takes
    N1: the check in N0's commit sees it, N1's content never goes, the connection is dropped
    (the server discards N1's transaction) and N2 goes over a new one."""
    settings.OUTBOX_RETRY_FIRST_DELAY = 0

    def steal_n1(recipients: list[str]) -> None:
        if recipients == ["n0@example.com"]:
            OutboundEmail.objects.filter(subject="N1").update(claimed_by="thief")

    recorder = Watching(at_dot=steal_n1)
    with aiosmtpd_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue_numbered(3)
        Courier(worker="first").drain()
    assert subjects(server) == ["N0", "N2"]
    assert [s.argument for s in recorder.seen if s.verb == "RCPT"] == [
        "n0@example.com",
        "n1@example.com",  # sent ahead, never followed by its content
        "n2@example.com",
    ]
    assert server.recorder.connections == 2
    stolen = OutboundEmail.objects.get(subject="N1")
    assert (stolen.status, stolen.claimed_by, stolen.attempts) == (Status.SENDING, "thief", 0)
    assert set(OutboundEmail.objects.exclude(subject="N1").values_list("status", flat=True)) == {
        Status.SENT
    }


@pytest.mark.django_db(transaction=True)
def test_each_recipient_keeps_its_reply_from_a_pipelined_group(settings):
    settings.OUTBOX_RETRY_FIRST_DELAY = 0
    recorder = Watching(
        refuse_recipients={"gone@example.com": "550 5.1.1 No such user"},
        refuse_senders={"bad@example.com": "553 5.7.1 Sender address rejected"},
        dot_replies={"later@example.com": "451 4.3.0 Try again later"},
        cut_after_dot={"cut@example.com"},
    )
    with aiosmtpd_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        ids = queue_numbered(
            6,
            to={
                1: ["a@example.com", "gone@example.com"],
                2: ["b@example.com"],
                3: ["later@example.com"],
                4: ["cut@example.com"],
            },
            senders={2: "bad@example.com"},
        )
        Courier(worker="piped").drain()
    n0, n1, n2, n3, n4, n5 = (OutboundEmail.objects.get(pk=pk) for pk in ids)
    assert replies(n1.pk) == {
        "a@example.com": ("sent", ""),
        "gone@example.com": ("refused", "550 5.1.1 No such user"),
    }
    assert n1.status == Status.SENT
    assert (n2.status, replies(n2.pk)) == (
        Status.FAILED,
        {"b@example.com": ("refused", "553 5.7.1 Sender address rejected")},
    )
    assert "refused the sender address bad@example.com" in n2.last_error
    assert (n3.status, replies(n3.pk)) == (
        Status.QUEUED,
        {"later@example.com": ("pending", "451 4.3.0 Try again later")},
    )
    # Taken by the server, its 250 lost with the connection: retried (the explained duplicate).
    assert n4.status == Status.QUEUED and "closed the connection" in n4.last_error
    assert (n0.status, n5.status) == (Status.SENT, Status.SENT)
    assert subjects(server) == ["N0", "N1", "N4", "N5"]
    assert server.recorder.connections == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("every", "seconds", "sent_before"),
    [
        (2, 3600, lambda n: n - n % 2),  # marked Sent two at a time
        (1000, 0, lambda n: n),  # a second (here none) after the oldest: at once
    ],
)
def test_rows_are_marked_sent_together_as_the_settings_say(settings, every, seconds, sent_before):
    """Each delivery is committed alone (its attempt); the rows are marked Sent together, after
    OUTBOX_SETTLE_EVERY deliveries or with the first delivery OUTBOX_SETTLE_SECONDS after the
    oldest, and at the end of the batch. Seen from the server, at each final dot."""
    settings.OUTBOX_SETTLE_EVERY, settings.OUTBOX_SETTLE_SECONDS = every, seconds
    seen: dict[int, tuple[int, int]] = {}

    def at_dot(recipients: list[str]) -> None:
        n = int(recipients[0][1:].split("@")[0])
        earlier = OutboundEmail.objects.filter(subject__in=[f"N{i}" for i in range(n)])
        accepted = DeliveryAttempt.objects.filter(email__in=earlier, outcome="sent").count()
        seen[n] = (earlier.filter(status=Status.SENT).count(), accepted)

    with aiosmtpd_server(recorder=Watching(at_dot=at_dot)) as server:
        point_settings_at(server.host, server.port)
        queue_numbered(6)
        assert Courier(worker="settling").drain() == 6
    assert seen == {n: (sent_before(n), n) for n in range(6)}
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {Status.SENT}
