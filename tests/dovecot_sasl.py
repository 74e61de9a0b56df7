"""A private Dovecot authentication service for the test Postfix's SASL (smtpd_sasl_type =
dovecot): its own dovecot.conf, base directory, passwd-file and log in a temporary directory,
nothing under /etc/dovecot, no IMAP or POP3 listener. Postfix reaches it on a UNIX socket
inside that directory.

    with running_dovecot_sasl() as sasl:
        with running_postfix(sasl=sasl) as postfix: ...
        sasl.failed_logins()

Dovecot is installed with `apt-get install dovecot-core`; its package's start is refused by
policy-rc.d on CI machines, and a system Dovecot, if one runs, is left alone (another
instance_name and base_dir).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.components import binary, missing
from tests.postfix_server import log_tail, stop_process_group

USERNAME, PASSWORD = "alice", "correct horse battery staple"
STARTUP_TIMEOUT = 20.0
INTERNAL_USER = "dovecot"  # default_internal_user, created by the dovecot-core package
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class DovecotSasl:
    socket: Path  # the auth listener, for Postfix's smtpd_sasl_path
    username: str  # the one user of the passwd-file
    password: str
    log_path: Path
    mechanisms: tuple[str, ...]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def failed_logins(self) -> list[str]:
        """Dovecot's lines for a wrong password (auth_verbose), one per failed AUTH."""
        return [line for line in self.log().splitlines() if "Password mismatch" in line]


def dovecot_conf(
    *, root: Path, socket: Path, passwd: Path, mechanisms: tuple[str, ...], failure_delay: int
) -> str:
    return f"""\
# Only the authentication service: no mail protocol listens.
protocols =
instance_name = gatewaymgr-test-{root.name}
base_dir = {root / "run"}
state_dir = {root / "state"}
log_path = {root / "dovecot.log"}
info_log_path = {root / "dovecot.log"}
ssl = no
auth_mechanisms = {" ".join(m.lower() for m in mechanisms)}
auth_verbose = yes
# Dovecot's own delay after a wrong password (2 s by default), and its penalty for an address
# that keeps failing, which grows with each failure: every failed AUTH costs seconds.
auth_failure_delay = {failure_delay} secs
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""


@contextlib.contextmanager
def running_dovecot_sasl(
    *, mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"), failure_delay: int = 2
) -> Iterator[DovecotSasl]:
    dovecot = binary("dovecot", package="dovecot-core", extra_dirs=("/usr/sbin",))
    for user, package in (("postfix", "postfix"), (INTERNAL_USER, "dovecot-core")):
        try:
            pwd.getpwnam(user)
        except KeyError:
            missing(f"the system user {user} is missing (apt-get install {package})")
    root = Path(tempfile.mkdtemp(prefix="gatewaymgr-dovecot-"))
    try:
        # mkdtemp makes it 0700; smtpd, running as postfix, must reach the socket inside.
        root.chmod(0o755)
        passwd = root / "passwd"
        # The auth process reads it as Dovecot's internal user; nobody else needs to.
        passwd.touch(mode=0o600)
        passwd.write_text(f"{USERNAME}:{{PLAIN}}{PASSWORD}\n")
        internal = pwd.getpwnam(INTERNAL_USER)
        os.chown(passwd, internal.pw_uid, internal.pw_gid)
        socket = root / "auth-postfix"
        configuration = root / "dovecot.conf"
        configuration.write_text(
            dovecot_conf(
                root=root,
                socket=socket,
                passwd=passwd,
                mechanisms=mechanisms,
                failure_delay=failure_delay,
            )
        )
        instance = DovecotSasl(
            socket=socket,
            username=USERNAME,
            password=PASSWORD,
            log_path=root / "dovecot.log",
            mechanisms=mechanisms,
        )
        output = root / "dovecot.out"
        with output.open("wb") as sink:
            # -F: the master in the foreground, our child, in a session of its own to stop.
            daemon = subprocess.Popen(
                [dovecot, "-F", "-c", str(configuration)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not socket.is_socket():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Dovecot's auth socket {socket} did not appear "
                        f"(exit code {daemon.poll()}):\n{output.read_text(errors='replace')}"
                        f"log ends:\n{log_tail(instance.log_path)}"
                    )
                time.sleep(0.05)
            yield instance
        finally:
            stop_process_group(daemon, STOP_TIMEOUT)
    finally:
        shutil.rmtree(root, ignore_errors=True)
