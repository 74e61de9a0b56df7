"""A real, private Exim 4 for integration tests: Debian's exim4-daemon-light binary unpacked
with `apt-get download` and `dpkg -x` (the package conflicts with Postfix, so it is never
installed), run by root with `-C` and a configuration, spool and log of its own in a temporary
directory, listening on its own loopback address.

    with running_exim() as exim:
        smtplib.SMTP(exim.address, exim.plain_port) ...
        exim.wait_received(1)

Like tests/postfix_server.py it uses the real ports 25, 465 and 587 (the product's encryption
rules depend on them), on 127.0.0.4 so that it never meets the test Postfix on 127.0.0.3:
- 25 offers no STARTTLS and no AUTH, and relays from loopback, like a plain internal relay;
- 587 offers STARTTLS, and AUTH only after it; mail needs AUTH;
- 465 is TLS from the first byte (tls_on_connect_ports); mail needs AUTH.
PIPELINING and CHUNKING are offered everywhere (Exim's defaults). Every message is appended to
one mailbox file; the main log says how each arrived (P=esmtpsa, A=plain:alice, X=TLS...).

Exim looks up its compiled-in user Debian-exim before it reads any configuration, so that
system user must exist (`.ci/run` creates it as the exim4-base package would).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.components import missing
from tests.postfix_server import accepts, log_tail, stop_process_group, wait_for_lines
from tests.selfsigned import self_signed_certificate

SUBMISSION_PORT, SMTPS_PORT, PLAIN_PORT = 587, 465, 25
# With log_selector +smtp_connection, the line that ends a session that got as far as EHLO:
# "SMTP connection from (client name) [127.0.0.1] closed by QUIT" (or "lost ...").
SESSION_END = "SMTP connection from ("
PORTS = (PLAIN_PORT, SUBMISSION_PORT, SMTPS_PORT)
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
EXIM_USER = "Debian-exim"  # compiled into Debian's binary; looked up before -C is read
# Where .ci/run unpacks the packages; EXIM_ROOT overrides it.
DEFAULT_ROOT = "/opt/gatewaymgr-exim"
USERNAME, PASSWORD = "alice", "correct horse battery staple"


@dataclass(frozen=True)
class EximInstance:
    address: str  # the loopback IP it listens on, e.g. "127.0.0.4"
    submission_port: int
    smtps_port: int
    plain_port: int
    certificate_pem: str  # the server's self-signed certificate for the hostname
    username: str  # the one user the AUTH authenticators accept
    mechanisms: tuple[str, ...]  # what AUTH offers, in order
    password: str
    mainlog: Path
    mailbox: Path  # every delivered message, appended in mbox format

    def log(self) -> str:
        try:
            return self.mainlog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def received(self) -> list[str]:
        """The main log's arrival lines ("<="), one per accepted message."""
        return [line for line in self.log().splitlines() if " <= " in line]

    def completed(self) -> list[str]:
        return [line for line in self.log().splitlines() if line.endswith(" Completed")]

    def wait_delivered(self, count: int, timeout: float = 20) -> list[str]:
        """Wait until `count` messages arrived and were delivered to the mailbox (delivery runs
        in a process of its own after the 250); returns the arrival lines."""
        deadline = time.monotonic() + timeout
        while len(self.completed()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self.completed())} of {count} deliveries after {timeout:g} s; "
                    f"log ends:\n{log_tail(self.mainlog)}"
                )
            time.sleep(0.1)
        return self.received()

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log().splitlines() if text in line]

    def wait_lines(self, text: str, count: int, timeout: float = 10) -> list[str]:
        """The log lines containing `text`, once there are `count` of them (Exim writes some
        only after its reply)."""
        return wait_for_lines(self.lines, text, count, self.mainlog, timeout)

    def failed_logins(self) -> list[str]:
        """The main log's lines for AUTH attempts the authenticators refused."""
        return [line for line in self.log().splitlines() if "authenticator failed" in line]

    def messages(self) -> str:
        try:
            return self.mailbox.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def credentials_condition(user: str, password: str) -> str:
    """An Exim condition that the AUTH variables `user` and `password` are the fixed user's
    (whose password holds no character that Exim's expansion would treat specially)."""
    return "${if and{{eq{" + user + "}{" + USERNAME + "}}{eq{" + password + "}{" + PASSWORD + "}}}}"


def exim_configuration(
    *,
    root: Path,
    binary: Path,
    address: str,
    hostname: str,
    key: Path,
    certificate: Path,
    mechanisms: tuple[str, ...],
) -> str:
    return f"""\
exim_path = {binary}
spool_directory = {root / "spool"}
log_file_path = {root / "log"}/%slog
pid_file_path = {root / "exim.pid"}
primary_hostname = {hostname}
smtp_banner = $smtp_active_hostname ESMTP Exim $version_number (gatewaymgr test)
local_interfaces = <; {address}.{PLAIN_PORT} ; {address}.{SUBMISSION_PORT} ; {address}.{SMTPS_PORT}
tls_on_connect_ports = {SMTPS_PORT}
tls_certificate = {certificate}
tls_privatekey = {key}
# STARTTLS everywhere but port 25, which stays a plain relay like the test Postfix's.
tls_advertise_hosts = ${{if ={{$received_port}}{{{PLAIN_PORT}}}{{}}{{*}}}}
# AUTH only once the connection is encrypted (587 after STARTTLS, 465 from the start).
auth_advertise_hosts = ${{if def:tls_in_cipher {{*}}{{}}}}
pipelining_advertise_hosts = *
chunking_advertise_hosts = *
# Nothing outside this machine: no DNS for client names, no ident callbacks.
host_lookup =
rfc1413_hosts =
qualify_domain = {hostname}
keep_environment =
# Deliver (to the mailbox file) as the Exim user, never as root; every message at once, also
# past the tenth of a connection (which Exim would otherwise leave for a queue runner).
deliver_drop_privilege = true
smtp_accept_queue_per_connection = 0
log_selector = +smtp_connection +received_recipients +smtp_protocol_error +smtp_syntax_error \
  +tls_certificate_verified +pipelining
acl_smtp_rcpt = check_rcpt

begin acl

check_rcpt:
  deny    message = Authentication required on port $received_port
          condition = ${{if ={{$received_port}}{{{PLAIN_PORT}}}{{no}}{{yes}}}}
          !authenticated = *
  accept  hosts = 127.0.0.0/8
  deny    message = Relay not permitted

begin routers

everything:
  driver = accept
  transport = mailbox

begin transports

mailbox:
  driver = appendfile
  file = {root / "mail" / "mailbox"}
  user = {EXIM_USER}
  mode = 0600

begin authenticators
""" + "".join(AUTHENTICATORS[mechanism] for mechanism in mechanisms)


# Exim's plaintext authenticators, offered in the order given (PLAIN's response is
# "\0user\0password": $auth2 and $auth3; LOGIN prompts for each: $auth1 and $auth2).
AUTHENTICATORS = {
    "PLAIN": f"""
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = {credentials_condition("$auth2", "$auth3")}
  server_set_id = $auth2
""",
    "LOGIN": f"""
login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = <| Username: | Password:
  server_condition = {credentials_condition("$auth1", "$auth2")}
  server_set_id = $auth1
""",
}


def find_binary() -> Path:
    root = Path(os.environ.get("EXIM_ROOT", DEFAULT_ROOT))
    binary = root / "usr" / "sbin" / "exim4"
    if not binary.exists():
        missing(
            f"Exim is not unpacked in {root} (apt-get download exim4-daemon-light exim4-base "
            f"exim4-config, then dpkg -x each into {root}, and apt-get install libidn12, as "
            ".ci/run does)"
        )
    try:
        pwd.getpwnam(EXIM_USER)
    except KeyError:
        missing(
            f"the system user {EXIM_USER} that Debian's Exim binary needs does not exist "
            f"(adduser --system --group --force-badname {EXIM_USER}, as .ci/run does)"
        )
    # The unpacked binary's libraries come from other packages, which must be installed.
    version = subprocess.run(
        [str(binary), "-bV", "-C", "/dev/null"], capture_output=True, text=True, check=False
    )
    if "error while loading shared libraries" in version.stderr:
        missing(f"Exim cannot start: {version.stderr.strip()} (apt-get install libidn12)")
    return binary


def wait_listening(instance: EximInstance, daemon: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while closed := [port for port in PORTS if not accepts(instance.address, port)]:
        if daemon.poll() is not None:
            problem = f"exim -bdf exited with {daemon.returncode}"
        elif time.monotonic() > deadline:
            problem = f"not listening within {STARTUP_TIMEOUT:g} s"
        else:
            time.sleep(0.05)
            continue
        raise RuntimeError(
            f"Exim on {instance.address} ports {closed}: {problem}\n"
            f"{output.read_text(errors='replace')}"
            f"paniclog: {log_tail(instance.mainlog.with_name('paniclog'))}\n"
            f"mainlog ends:\n{log_tail(instance.mainlog)}"
        )


@contextlib.contextmanager
def running_exim(
    *,
    address: str = "127.0.0.4",
    hostname: str = "exim.gatewaymgr.test",
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
) -> Iterator[EximInstance]:
    """`mechanisms`: the AUTH mechanisms offered (after TLS), of PLAIN and LOGIN."""
    binary = find_binary()
    if os.geteuid() != 0:
        missing("a private Exim instance needs root (it binds port 25 and uses -C)")
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"{address} is not a loopback address")
    if busy := [port for port in PORTS if accepts(address, port)]:
        raise RuntimeError(
            f"{address} ports {busy} are already taken: a leftover test Exim, or a server "
            "listening on 0.0.0.0"
        )
    exim_user = pwd.getpwnam(EXIM_USER)
    root = Path(tempfile.mkdtemp(prefix="gatewaymgr-exim-"))
    try:
        root.chmod(0o755)  # the reception and delivery processes run as the Exim user
        for name in ("log", "spool", "mail"):
            (root / name).mkdir()
            os.chown(root / name, exim_user.pw_uid, exim_user.pw_gid)
        certificate_pem, key_pem = self_signed_certificate(hostname)
        key, certificate = root / "key.pem", root / "cert.pem"
        key.touch(mode=0o600)
        key.write_text(key_pem)
        os.chown(key, exim_user.pw_uid, exim_user.pw_gid)  # read after privilege is dropped
        certificate.write_text(certificate_pem)
        # Exim refuses a configuration that anyone but root (or its user) could write.
        configuration = root / "exim.conf"
        configuration.write_text(
            exim_configuration(
                root=root,
                binary=binary,
                address=address,
                hostname=hostname,
                key=key,
                certificate=certificate,
                mechanisms=mechanisms,
            )
        )
        configuration.chmod(0o644)
        instance = EximInstance(
            address=address,
            submission_port=SUBMISSION_PORT,
            smtps_port=SMTPS_PORT,
            plain_port=PLAIN_PORT,
            certificate_pem=certificate_pem,
            username=USERNAME,
            mechanisms=mechanisms,
            password=PASSWORD,
            mainlog=root / "log" / "mainlog",
            mailbox=root / "mail" / "mailbox",
        )
        output = root / "log" / "daemon.out"
        with output.open("wb") as sink:
            # -bdf: the listening daemon in the foreground, so it stays our child; no queue
            # runner (-q) is needed, since every message is delivered as soon as it arrives.
            daemon = subprocess.Popen(
                [str(binary), "-C", str(configuration), "-bdf"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_listening(instance, daemon, output)
            yield instance
        finally:
            stop_process_group(daemon, STOP_TIMEOUT)
    finally:
        shutil.rmtree(root, ignore_errors=True)
