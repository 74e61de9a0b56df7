"""An SMTP server that keeps a durable record of what it accepted, and misbehaves on request;
and the reconciliation of the outbox's database against that record.

The server runs in a process of its own (`python -m tests.durable_smtp --dir D --port P`), so
nothing done to the workers or to the test touches it. Every message it accepts is appended to
`D/journal.jsonl` and fsync'ed BEFORE the 250 to the final dot goes out: a message the server
said yes to is in the journal, whatever happens afterwards. Refusals (4xx/5xx at RCPT or to the
final dot) and cuts are journaled too, each with the Message-ID when the server saw the message
and the pid of the client process (looked up in /proc when the connection comes in), so a
duplicate can be traced to a worker that was killed.

Faults are set through `D/control.json`, which the server re-reads within 50 ms and acknowledges
in `D/state.json`; `DurableSmtp.set()` waits for that acknowledgement. Random faults are decided
by a hash of (seed, fault, the transaction's recipients, how many times the server saw them), so
a run injects the same faults into the same messages whatever the timing.

`reconcile()` is a pure function of the outbox rows and the journal: lost, stranded,
duplicates (explained or not), falsely failed, wrong reply. Tests that use it queue messages
whose recipient addresses are unique to each message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULTS: dict = {
    "down": False,  # the port is closed and open connections are dropped
    "stall_until": 0.0,  # epoch seconds: until then, no reply at stall_at
    "stall_at": "greeting",  # "greeting" (accept, say nothing) or "dot" (after the final dot)
    "data_delay": 0.0,  # seconds before answering the final dot: a slow server
    "seed": 1,
    # Rates, each in [0, 1): to the final dot (per message) and at RCPT (per recipient).
    "cut_mid_data": 0.0,  # drop the connection in the middle of the message
    "cut_after_dot": 0.0,  # journal the message as accepted, then drop without a reply
    "data_451": 0.0,
    "data_554": 0.0,
    "rcpt_450": 0.0,
    "rcpt_550": 0.0,
    # Fixed replies: at RCPT for an address; to the final dot when an address is among the
    # transaction's accepted recipients.
    "rcpt_replies": {},
    "data_replies": {},
}


# -- the server (its own process) ------------------------------------------------------------


def chance(seed: object, fault: str, key: str, seen: int) -> float:
    """A number in [0, 1) fixed by its arguments: the same faults on every run."""
    digest = hashlib.sha256(f"{seed}|{fault}|{key}|{seen}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def peer_pid(local_port: int, peer_port: int) -> int | None:
    """The pid of the local process holding the client end of a loopback connection."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                parts = line.split()
                local, remote = parts[1], parts[2]
                if (
                    int(local.rsplit(":", 1)[1], 16) == peer_port
                    and int(remote.rsplit(":", 1)[1], 16) == local_port
                ):
                    inode = parts[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return int(pid)
    return None


class Journal:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, **event) -> None:
        event["t"] = time.time()
        os.write(self.fd, (json.dumps(event) + "\n").encode())
        os.fsync(self.fd)  # on disk before the reply that tells the client


class Cut(Exception):
    """Drop the connection now, without a reply."""


class DurableServer:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.journal = Journal(directory / "journal.jsonl")
        self.faults = dict(FAULTS)
        self.version = -1
        self.control_mtime = 0
        self.seen: Counter = Counter()  # (fault family, key) -> times seen
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()

    def load_control(self) -> None:
        path = self.directory / "control.json"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self.control_mtime:
            return
        self.control_mtime = mtime
        control = json.loads(path.read_text())
        self.faults = {**FAULTS, **control.get("faults", {})}
        self.version = control.get("version", 0)

    async def apply(self) -> None:
        if self.faults["down"] and self.server is not None:
            self.server.close()
            self.server = None
            for writer in list(self.connections):
                writer.transport.abort()
        elif not self.faults["down"] and self.server is None:
            self.server = await asyncio.start_server(
                self.session, "127.0.0.1", self.port, reuse_address=True
            )
        state = self.directory / "state.json"
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": self.version, "pid": os.getpid()}))
        tmp.replace(state)

    async def run(self) -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            self.load_control()
            await self.apply()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
        if self.server is not None:
            self.server.close()
        for writer in list(self.connections):
            writer.transport.abort()

    async def stall(self, where: str, writer: asyncio.StreamWriter) -> None:
        while self.faults["stall_at"] == where and time.time() < self.faults["stall_until"]:
            await asyncio.sleep(0.05)
            if writer.transport.is_closing():
                raise Cut

    def decide(self, family: str, key: str, faults: Iterable[str]) -> str | None:
        """Which of `faults` (rates in self.faults) hits this time, or None."""
        self.seen[family, key] += 1
        roll = chance(self.faults["seed"], family, key, self.seen[family, key])
        edge = 0.0
        for fault in faults:
            edge += float(self.faults[fault])
            if roll < edge:
                return fault
        return None

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        peer = writer.get_extra_info("peername")
        pid = peer_pid(self.port, peer[1]) if peer else None
        try:
            await self.stall("greeting", writer)
            await self.conversation(reader, writer, pid)
        except (Cut, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.connections.discard(writer)
            writer.transport.abort()

    async def conversation(self, reader, writer, pid: int | None) -> None:
        async def reply(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        await reply("220 durable.test ESMTP")
        sender, rcpts = None, []
        while line := await reader.readline():
            command = line.decode("utf-8", "replace").strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                sender, rcpts = None, []
                if verb == "EHLO":
                    await reply(
                        "250-durable.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000"
                    )
                else:
                    await reply("250 durable.test")
            elif verb == "MAIL":
                sender, rcpts = command[10:].split(">")[0].lstrip("<"), []
                await reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                address = command[8:].split(">")[0].lstrip("<").strip()
                await reply(self.rcpt(address, rcpts, pid))
            elif verb == "DATA":
                if sender is None or not rcpts:
                    await reply("503 5.5.1 Error: need RCPT command")
                    continue
                await reply("354 End data with <CR><LF>.<CR><LF>")
                await reply(await self.data(reader, writer, sender, rcpts, pid))
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                await reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                await reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                await reply("221 2.0.0 Bye")
                return
            else:
                await reply("502 5.5.2 Error: command not recognized")

    def rcpt(self, address: str, rcpts: list[str], pid: int | None) -> str:
        fixed = self.faults["rcpt_replies"].get(address)
        fault = self.decide("rcpt", address, ("rcpt_450", "rcpt_550"))
        text = fixed or {
            "rcpt_450": "450 4.2.0 Try again later",
            "rcpt_550": "550 5.1.1 No such user",
        }.get(fault)
        if text is None:
            rcpts.append(address)
            return "250 2.1.5 Ok"
        code = int(text[:3])
        self.journal.write(kind="refused", stage="rcpt", rcpts=[address], code=code, pid=pid)
        return text

    async def data(self, reader, writer, sender: str, rcpts: list[str], pid: int | None) -> str:
        key = " ".join(sorted(rcpts))
        fault = self.decide("data", key, ("cut_mid_data", "cut_after_dot", "data_451", "data_554"))
        lines = []
        while True:
            line = await reader.readline()
            if not line:
                raise Cut
            if line in (b".\r\n", b".\n"):
                break
            lines.append(line[1:] if line.startswith(b"..") else line)
            if fault == "cut_mid_data" and len(lines) == 3:
                self.journal.write(kind="cut", stage="mid-data", rcpts=rcpts, pid=pid)
                raise Cut
        headers = BytesHeaderParser().parsebytes(b"".join(lines), headersonly=True)
        mid = headers.get("Message-ID", "")
        if self.faults["data_delay"]:
            await asyncio.sleep(float(self.faults["data_delay"]))
        if self.faults["stall_at"] == "dot" and time.time() < self.faults["stall_until"]:
            try:
                await self.stall("dot", writer)
            except Cut:  # the client gave up before our answer: we never took the message
                self.journal.write(kind="abandoned", mid=mid, rcpts=rcpts, pid=pid)
                raise
        fixed = next(
            (self.faults["data_replies"][r] for r in rcpts if r in self.faults["data_replies"]),
            None,
        )
        text = fixed or {
            "data_451": "451 4.3.0 Try again later",
            "data_554": "554 5.7.1 Rejected",
        }.get(fault)
        if text is not None:
            self.journal.write(
                kind="refused", stage="data", mid=mid, rcpts=rcpts, code=int(text[:3]), pid=pid
            )
            return text
        cut = fault == "cut_after_dot"
        self.journal.write(kind="accepted", mid=mid, rcpts=rcpts, pid=pid, cut=cut)
        if cut:
            raise Cut
        return "250 2.0.0 Ok: queued"


def serve(directory: Path, port: int) -> None:
    server = DurableServer(directory, port)
    asyncio.run(server.run())


# -- the controller (the test's or the bench's process) --------------------------------------


class DurableSmtp:
    """The server process, seen from the test: start, set faults, read the journal."""

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix="durable-smtp-"))
        self.port = port or free_port()
        self.host = "smtp.gatewaymgr.test"  # 127.0.0.1, named so the encryption rules allow it
        self.faults: dict = {}
        self.version = 0
        self.process: subprocess.Popen | None = None

    def start(self, **faults) -> DurableSmtp:
        self.faults.update(faults)
        self._write_control()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.durable_smtp",
                "--dir",
                self.directory,
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
        )
        self._wait_for_ack()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def set(self, **faults) -> None:
        """Change faults; returns once the server applies them."""
        self.faults.update(faults)
        self._write_control()
        self._wait_for_ack()

    def down(self) -> None:
        self.set(down=True)

    def up(self) -> None:
        self.set(down=False)

    def clear(self) -> None:
        """No more faults (the seed stays)."""
        self.set(**{k: v for k, v in FAULTS.items() if k != "seed"})

    def stall(self, seconds: float, at: str = "greeting") -> None:
        self.set(stall_until=time.time() + seconds, stall_at=at)

    def events(self) -> list[dict]:
        path = self.directory / "journal.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def accepted(self) -> Counter:
        """Message-ID -> how many times the server accepted it."""
        return Counter(e["mid"] for e in self.events() if e["kind"] == "accepted")

    def _write_control(self) -> None:
        self.version += 1
        path = self.directory / "control.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": self.version, "faults": self.faults}))
        tmp.replace(path)

    def _wait_for_ack(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((self.directory / "state.json").read_text())
                if state["version"] >= self.version:
                    return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("the durable SMTP server exited")
            time.sleep(0.02)
        raise RuntimeError("the durable SMTP server did not apply its control file")

    def __enter__(self) -> DurableSmtp:
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_worker(process: subprocess.Popen) -> int:
    """SIGKILL a worker process and the processes it started (RQ's scheduler); its pid."""
    children = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{process.pid}/task"):
            with open(f"/proc/{process.pid}/task/{task}/children") as listed:
                children += [int(pid) for pid in listed.read().split()]
    process.send_signal(signal.SIGKILL)
    process.wait()
    for child in children:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    return process.pid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the reconciliation (pure) ---------------------------------------------------------------

FINAL = ("sent", "failed", "cancelled")


@dataclass
class Reconciliation:
    messages: int = 0
    delivered: int = 0  # messages the server accepted for at least one recipient
    failed: int = 0  # FAILED in the database
    waiting: int = 0  # queued or sending, not yet past due + grace
    lost: list[str] = field(default_factory=list)
    stranded: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # all messages with an extra copy
    unexplained: list[str] = field(default_factory=list)  # ... of which some copy is unexplained
    extra_copies: int = 0
    falsely_failed: list[str] = field(default_factory=list)
    wrong_reply: list[str] = field(default_factory=list)
    max_attempts: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.stranded
            or self.unexplained
            or self.falsely_failed
            or self.wrong_reply
        )

    def counts(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "delivered": self.delivered,
            "failed (5xx)": self.failed,
            "waiting": self.waiting,
            "lost": len(self.lost),
            "stranded": len(self.stranded),
            "duplicated, explained": len(self.duplicated) - len(self.unexplained),
            "duplicated, unexplained": len(self.unexplained),
            "extra copies": self.extra_copies,
            "falsely failed": len(self.falsely_failed),
            "wrong reply kept": len(self.wrong_reply),
            "max attempts": self.max_attempts,
        }

    def table(self, extra: dict[str, str] | None = None) -> str:
        """One line per count; `extra` adds lines already formatted (a measure, a unit)."""
        lines = {k: f"{v:>7,}" for k, v in self.counts().items()} | (extra or {})
        width = max(len(k) for k in lines)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in lines.items())

    def __str__(self) -> str:
        examples = {
            name: getattr(self, name)[:3]
            for name in ("lost", "stranded", "unexplained", "falsely_failed", "wrong_reply")
            if getattr(self, name)
        }
        return self.table() + (f"\nexamples: {examples}" if examples else "")


def reconcile(
    rows: list[dict],
    events: list[dict],
    *,
    killed: Iterable[int] = (),
    now: float,
    grace: float,
) -> Reconciliation:
    """The outbox's rows against the server's journal, per message and recipient.

    rows: {"message_id", "status", "recipients": [{"address", "status", "reply"}], "attempts",
    "next_attempt_at" (epoch), "lease_until" (epoch or None)}. events: the journal. killed: pids
    of workers that died without a chance to commit (SIGKILL, a forced stop).

    - lost: a recipient the database says was sent that the server never accepted;
    - stranded: queued or sending more than `grace` seconds after it was due or its lease ended;
    - duplicates: a recipient accepted more than once; a copy is explained when the server
      dropped the connection after journaling it (a cut after the final dot) or when it was the
      last message a killed worker got a 250 for (a kill between the 250 and the commit);
    - falsely failed: a recipient refused in the database without a 5xx from the server to it;
    - wrong reply: a refused recipient whose kept reply is not the server's last 5xx to it.
    """
    killed = set(killed)
    accepted: dict[tuple[str, str], list[dict]] = defaultdict(list)
    last_by_pid: dict[int, dict] = {}
    refusals: dict[str, list[dict]] = defaultdict(list)  # address -> 5xx events, in order
    for event in sorted(events, key=lambda e: e["t"]):
        if event["kind"] == "accepted":
            for address in event["rcpts"]:
                accepted[event["mid"], address].append(event)
            if event.get("pid") is not None:
                last_by_pid[event["pid"]] = event
        elif event["kind"] == "refused" and 500 <= event["code"] < 600:
            for address in event["rcpts"]:
                refusals[address].append(event)
    explained_by_kill = {id(e) for pid, e in last_by_pid.items() if pid in killed}

    result = Reconciliation(messages=len(rows))
    for row in rows:
        mid, status = row["message_id"], row["status"]
        result.max_attempts = max(result.max_attempts, row["attempts"])
        if status == "failed":
            result.failed += 1
        if any(accepted.get((mid, r["address"])) for r in row["recipients"]):
            result.delivered += 1
        if status not in FINAL:
            due = row["lease_until"] if status == "sending" else row["next_attempt_at"]
            if due is None or now > due + grace:
                result.stranded.append(mid)
            else:
                result.waiting += 1
        lost = falsely_failed = wrong = duplicated = unexplained = False
        for recipient in row["recipients"]:
            address = recipient["address"]
            copies = accepted.get((mid, address), [])
            if recipient["status"] == "sent" and not copies:
                lost = True
            if recipient["status"] == "refused":
                given = refusals.get(address)
                if not given:
                    falsely_failed = True
                elif not recipient.get("reply", "").startswith(str(given[-1]["code"])):
                    wrong = True
            if len(copies) > 1:
                duplicated = True
                result.extra_copies += len(copies) - 1
                explained = sum(1 for e in copies if e.get("cut") or id(e) in explained_by_kill)
                if len(copies) - 1 > explained:
                    unexplained = True
        for flag, bucket in (
            (lost, result.lost),
            (falsely_failed, result.falsely_failed),
            (wrong, result.wrong_reply),
            (duplicated, result.duplicated),
            (unexplained, result.unexplained),
        ):
            if flag:
                bucket.append(mid)
    return result


# -- the database side (I/O) -----------------------------------------------------------------


def outbox_rows() -> list[dict]:
    """Every outbox row, as reconcile() takes them."""
    from notifications.models import OutboundEmail

    def epoch(value):
        return value.timestamp() if value is not None else None

    return [
        {
            **row,
            "next_attempt_at": epoch(row["next_attempt_at"]),
            "lease_until": epoch(row["lease_until"]),
        }
        for row in OutboundEmail.objects.values(
            "message_id", "status", "recipients", "attempts", "next_attempt_at", "lease_until"
        )
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args(argv)
    serve(options.dir, options.port)


if __name__ == "__main__":
    main(sys.argv[1:])
