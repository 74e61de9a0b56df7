"""ESMTP PIPELINING (RFC 2920) against real servers: Postfix's smtp-sink, which offers it, and
aiosmtpd, which does not (1.4) unless told to, and then reads pipelined commands as they come.

With PIPELINING, MAIL, RCPT... and DATA travel in one write, and the next message's envelope
travels with the previous message's final dot; each reply is still read and attributed to its
own command. Without it, each command waits for the reply to the one before. The tests assert
on what the server received, on what was waiting in its input when it handled each command
(sent ahead by the client), and on what each recipient was told.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core.mail import EmailMessage, get_connection

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
