"""A real, private Postfix for integration tests: its own main.cf, master.cf, queue and log in a
temporary directory, listening on a loopback address other than 127.0.0.1, discarding all mail.

    with running_postfix() as postfix:
        smtplib.SMTP(postfix.address, postfix.plain_port) ...
        postfix.wait_delivered(1)

It uses the real port numbers 25, 465 and 587, because the product's encryption rules depend on
them; binding them to 127.0.0.3 keeps clear of anything on 127.0.0.1 (such as a system Postfix
restricted to loopback). It never touches /etc/postfix or the system queue.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.components import missing
from tests.selfsigned import self_signed_certificate

if TYPE_CHECKING:
    from tests.dovecot_sasl import DovecotSasl

SUBMISSION_PORT, SMTPS_PORT, PLAIN_PORT = 587, 465, 25
PORTS = (PLAIN_PORT, SUBMISSION_PORT, SMTPS_PORT)
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class PostfixInstance:
    address: str  # the loopback IP it listens on, e.g. "127.0.0.3"
    submission_port: int  # 587: plain greeting, offers STARTTLS, self-signed certificate
    smtps_port: int  # 465: TLS from the first byte (wrapper mode)
    plain_port: int  # 25: no TLS offered at all
    certificate_pem: str  # the server's self-signed certificate for the hostname
    log_path: Path  # Postfix's own log (maillog_file, written by postlogd)

    def delivered(self) -> list[str]:
        """The log lines of deliveries so far (one per recipient, each with its queue ID)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if " status=sent " in line]

    def wait_delivered(self, count: int, timeout: float = 20) -> list[str]:
        """Wait until at least `count` deliveries are logged; the queue manager is asynchronous."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.delivered()
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(lines)} of {count} deliveries after {timeout:g} s; "
                    f"log ends:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def lines(self, text: str) -> list[str]:
        try:
            log = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in log.splitlines() if text in line]

    def wait_lines(self, text: str, count: int, timeout: float = 10) -> list[str]:
        """The log lines containing `text`, once there are `count` of them (postlogd writes
        asynchronously)."""
        return wait_for_lines(self.lines, text, count, self.log_path, timeout)

    def sasl_logins(self) -> list[str]:
        """smtpd's line for each message of a signed-in client: "client=..., sasl_method=PLAIN,
        sasl_username=alice", with the message's queue ID."""
        return self.lines(", sasl_method=")

    def failed_logins(self) -> list[str]:
        """smtpd's warning for each AUTH it refused ("SASL LOGIN authentication failed")."""
        return self.lines(" authentication failed")


def main_cf(
    *,
    root: Path,
    hostname: str,
    key: Path,
    certificate: Path,
    client_ca: Path | None = None,
    sasl_socket: Path | None = None,
) -> str:
    return (
        f"""\
compatibility_level = 3.6
queue_directory = {root / "queue"}
data_directory = {root / "data"}
mail_owner = postfix
setgid_group = postdrop

myhostname = {hostname}
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP Postfix (gatewaymgr test)
# Postfix insists that inet_interfaces exist on an interface, and lo carries only 127.0.0.1;
# master.cf binds each smtpd to the test address explicitly instead.
inet_interfaces = loopback-only
inet_protocols = ipv4

# Accept anything from loopback, deliver nothing: every transport is discard.
mydestination =
local_recipient_maps =
relay_domains =
relayhost =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit
default_transport = discard
local_transport = discard
relay_transport = discard
virtual_transport = discard
# Nothing outside the temporary directory: no /etc/aliases, no DNS for client names.
alias_maps =
alias_database =
smtpd_peername_lookup = no
append_dot_mydomain = no
biff = no

# postlogd refuses a maillog_file outside maillog_file_prefixes (default /var, /dev/stdout).
maillog_file = {root / "log" / "postfix.log"}
maillog_file_prefixes = {root}

# TLS is off here and switched on per port in master.cf, so 25 offers no STARTTLS.
smtpd_tls_security_level = none
smtpd_tls_chain_files = {key}, {certificate}
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_loglevel = 1
"""
        + (client_certificates_cf(client_ca) if client_ca else "")
        + (sasl_cf(sasl_socket) if sasl_socket else "")
    )


def sasl_cf(socket: Path) -> str:
    """Dovecot SASL for the ports that enable it in master.cf (587 and 465)."""
    return f"""\
smtpd_sasl_type = dovecot
smtpd_sasl_path = {socket}
smtpd_sasl_security_options = noanonymous
"""


def client_certificates_cf(client_ca: Path) -> str:
    """Ask every TLS client for a certificate issued by `client_ca`; require one where TLS is
    mandatory (465: Postfix ignores the requirement where TLS is optional, with a warning)."""
    return f"""\
smtpd_tls_CAfile = {client_ca}
smtpd_tls_ask_ccert = yes
smtpd_tls_req_ccert = yes
"""


# With SASL, 587 and 465 are submission ports as Postfix's documentation sets them up: AUTH only
# under TLS, and mail only from a signed-in client (loopback alone no longer relays there).
SASL_SUBMISSION = """\
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
"""


def master_cf(address: str, *, sasl: bool = False) -> str:
    # chroot is "n" throughout: Debian's stock master.cf chroots most daemons, which would need
    # copies of /etc files inside the queue directory. There is deliberately no smtp/relay/local
    # transport, so a configuration mistake defers mail instead of sending it anywhere.
    submission = SASL_SUBMISSION if sasl else ""
    return f"""\
{address}:{PLAIN_PORT} inet n - n - - smtpd
{address}:{SUBMISSION_PORT} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=may
{submission}{address}:{SMTPS_PORT} inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
{submission}pickup     unix n - n 60 1 pickup
cleanup    unix n - n - 0 cleanup
qmgr       unix n - n 300 1 qmgr
tlsmgr     unix - - n 1000? 1 tlsmgr
rewrite    unix - - n - - trivial-rewrite
bounce     unix - - n - 0 bounce
defer      unix - - n - 0 bounce
trace      unix - - n - 0 bounce
verify     unix - - n - 1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
showq      unix n - n - - showq
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def wait_for_lines(
    find: Callable[[str], list[str]], text: str, count: int, log: Path, timeout: float = 10
) -> list[str]:
    """`find(text)` once it returns `count` lines: an MTA may log after its reply, so a client
    can be ahead of the log."""
    deadline = time.monotonic() + timeout
    while len(found := find(text)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(found)} of {count} lines with {text!r} after {timeout:g} s; "
                f"log ends:\n{log_tail(log)}"
            )
        time.sleep(0.05)
    return found


def stop_process_group(daemon: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM to a daemon's process group (the daemon and whatever it started), SIGKILL if
    it does not go within `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except FileNotFoundError:
        return "(no log file)"


def accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def master_pid(root: Path) -> int | None:
    try:
        return int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def live_group_members(pgid: int) -> list[int]:
    """Processes (zombies aside) in the process group the master daemon leads."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def stop(postfix: str, config: Path, root: Path, foreground: subprocess.Popen[bytes]) -> None:
    """`postfix stop`, then make sure every process of this instance is gone."""
    subprocess.run(
        [postfix, "-c", str(config), "stop"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,  # "not running" is fine: startup may have failed
    )
    try:
        foreground.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        foreground.kill()
        foreground.wait()
    pid = master_pid(root)
    if pid is None:
        return
    # The master calls setsid(), so its process group is exactly this instance's processes;
    # it signals them on the way out, and they may take a moment to go.
    deadline = time.monotonic() + STOP_TIMEOUT
    while live_group_members(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def wait_listening(
    instance: PostfixInstance, foreground: subprocess.Popen[bytes], output: Path
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    # Each probe shows up in the log as a "lost connection after CONNECT"; that is harmless.
    while closed := [port for port in PORTS if not accepts(instance.address, port)]:
        if foreground.poll() is not None:
            problem = f"postfix start-fg exited with {foreground.returncode}"
        elif time.monotonic() > deadline:
            problem = f"not listening within {STARTUP_TIMEOUT:g} s"
        else:
            time.sleep(0.05)
            continue
        raise RuntimeError(
            f"Postfix on {instance.address} ports {closed}: {problem}\n"
            f"{output.read_text(errors='replace')}"
            f"postfix log ends:\n{log_tail(instance.log_path)}"
        )


@contextlib.contextmanager
def running_postfix(
    *,
    address: str = "127.0.0.3",
    hostname: str = "postfix.gatewaymgr.test",
    client_ca_pem: str = "",
    sasl: DovecotSasl | None = None,
) -> Iterator[PostfixInstance]:
    """`client_ca_pem`: a CA whose client certificates the TLS ports ask for (and 465 requires).
    `sasl`: a running Dovecot (tests/dovecot_sasl.py) for AUTH on 587 and 465."""
    postfix = shutil.which("postfix") or shutil.which("postfix", path="/usr/sbin")
    if not postfix or not Path("/usr/lib/postfix/sbin/master").exists():
        missing("Postfix is not installed (apt-get install postfix)")
    if os.geteuid() != 0:
        missing("a private Postfix instance needs root (it binds port 25, then drops to postfix)")
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"{address} is not a loopback address")
    # Otherwise the readiness probe below would mistake someone else's listener for ours.
    if busy := [port for port in PORTS if accepts(address, port)]:
        raise RuntimeError(
            f"{address} ports {busy} are already taken: a leftover test Postfix, or a server "
            f"listening on 0.0.0.0 (such as a system Postfix with inet_interfaces = all)"
        )

    root = Path(tempfile.mkdtemp(prefix="gatewaymgr-postfix-"))
    try:
        # mkdtemp makes it 0700; the daemons run as the postfix user and need to reach inside.
        root.chmod(0o755)
        config = root / "config"
        config.mkdir()
        (root / "log").mkdir()
        # postfix chdir()s into the queue directory before it creates the rest of the queue.
        (root / "queue").mkdir(mode=0o755)
        certificate_pem, key_pem = self_signed_certificate(hostname)
        key, certificate = config / "key.pem", config / "cert.pem"
        key.touch(mode=0o600)  # read by smtpd as root before it drops privileges
        key.write_text(key_pem)
        certificate.write_text(certificate_pem)
        client_ca = config / "client-ca.pem" if client_ca_pem else None
        if client_ca:
            client_ca.write_text(client_ca_pem)
        (config / "main.cf").write_text(
            main_cf(
                root=root,
                hostname=hostname,
                key=key,
                certificate=certificate,
                client_ca=client_ca,
                sasl_socket=sasl.socket if sasl else None,
            )
        )
        (config / "master.cf").write_text(master_cf(address, sasl=sasl is not None))
        instance = PostfixInstance(
            address=address,
            submission_port=SUBMISSION_PORT,
            smtps_port=SMTPS_PORT,
            plain_port=PLAIN_PORT,
            certificate_pem=certificate_pem,
            log_path=root / "log" / "postfix.log",
        )
        # -c selects this instance's main.cf and master.cf. start-fg keeps the master our
        # (grand)child, so nothing is left to init to reap; it still runs the checks and
        # creates the queue directories as "start" does.
        output = root / "log" / "start-fg.out"
        with output.open("wb") as sink:
            foreground = subprocess.Popen(
                [postfix, "-c", str(config), "start-fg"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(instance, foreground, output)
            yield instance
        finally:
            stop(postfix, config, root, foreground)
    finally:
        shutil.rmtree(root, ignore_errors=True)
