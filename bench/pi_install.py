"""The README's first Quickstart command on an emulated arm64 Debian bookworm, step by step, timed.

Proves that ``python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/tbftd serve`` works
on a Raspberry Pi-like system (aarch64, Debian bookworm, its Python 3.11: Raspberry Pi OS bookworm
is Debian bookworm) and how long each step takes:

1. makes an arm64 bookworm root file system with ``debootstrap`` (qemu-user-static runs its second
   stage and everything after it through binfmt_misc), or reuses the one made before under
   ``--rootfs``; adds the user ``pi`` (uid 1000) and checks that ``uname -m`` says ``aarch64``;
2. puts a fresh copy of this checkout at ``/home/pi/tbftd``: a ``git clone`` of the committed
   tree, or with ``--worktree`` the working tree (tracked and untracked files that git does not
   ignore, uncommitted changes included; no ``.git``, no ``.venv``);
3. reads the command from README.md (the first ``sh`` block under ``## Quickstart``), runs its
   install parts one by one as ``pi`` inside the chroot (downloads, venv size and the installed
   packages are recorded; a package named ``nvidia*``, ``cuda*`` or ``triton*`` fails the run),
   then starts its ``tbftd serve`` part in the background (``--port`` is appended only when 8470 is
   taken on this host: the chroot shares the host's network);
4. from the host: the first ``/healthz`` 200, a posted batch of 64 uint8 3x32x32 samples
   (``application/octet-stream``), a prediction, and SIGTERM until the daemon exits 0;
5. prints a table (step, seconds, result) and the machine, and writes ``--json`` with every figure.

Everything runs under user-mode emulation on the host's CPU, which makes every step many times
slower than on a Pi: the figures say the command works and where the time goes, not how fast a Pi is.

Needs root, ``debootstrap``, ``qemu-user-static`` and ``binfmt-support`` (binfmt_misc is mounted
and ``qemu-aarch64`` enabled here if they are not), and network access to the Debian mirror and to
PyPI. Only the standard library is used on the host::

    sudo python3 bench/pi_install.py --worktree --json /tmp/pi-install.json
    sudo python3 bench/pi_install.py --rootfs /var/tmp/tbftd-pi/bookworm-arm64   # committed tree
    sudo python3 bench/pi_install.py --rebuild-rootfs                            # debootstrap again

The root file system is kept (about 0.4 GB, plus the venv) so later runs skip debootstrap; the pip
cache inside it is emptied before each install so every run downloads like a fresh Pi
(``--keep-pip-cache`` to reuse it). /proc, /sys, /dev and /dev/shm are mounted in the root for the
run and unmounted afterwards whatever happens (Ctrl+C and SIGTERM included); mounts left under the
root by a killed run are removed at the next start. Logs of every step go to ``--logs``.

Exit status: 0 when every step passed, 1 when one failed, 2 when the host cannot run it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOTFS = Path("/var/tmp/tbftd-pi/bookworm-arm64")
DEFAULT_LOGS = Path("/var/tmp/tbftd-pi/logs")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
ARCH = "arm64"
#: What Raspberry Pi OS Lite has that the Quickstart needs: Python 3.11, venv (ensurepip), pip, TLS roots.
DEFAULT_INCLUDE = ("python3", "python3-venv", "python3-pip", "ca-certificates")
#: The Pi's first user, as Raspberry Pi Imager makes it.
PI_USER = "pi"
PI_UID = 1000
PI_HOME = f"/home/{PI_USER}"
CHECKOUT_IN_ROOT = f"{PI_HOME}/tbftd"
#: Where the made root file system records how it was made; its absence means "half made".
MARKER_IN_ROOT = "var/lib/tbftd-bench/rootfs.json"
HOST = "127.0.0.1"
DEFAULT_PORT = 8470
#: Installed package names that mean pip took a CUDA build of torch.
FORBIDDEN_PREFIXES = ("nvidia", "cuda", "triton")
BATCH_SAMPLES = 64
PREDICT_SAMPLES = 4
SAMPLE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
CONTEXT = "pi-install"
#: Where Debian's qemu-user-static puts its binfmt_misc entry for systemd-binfmt.
SYSTEMD_BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LOG_TAIL_CHARS = 3000
# pip prints sizes with decimal units (pip._internal.utils.misc.format_size).
_PIP_DOWNLOAD = re.compile(r"Downloading (\S+) \(([0-9.]+) (bytes|kB|MB|GB)\)")
_PIP_UNIT_BYTES = {"bytes": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}
_MEGABYTE = 1000**2


class InstallError(Exception):
    """A step failed; the message says what and where to look."""


class HostError(Exception):
    """This host cannot run the check (not root, a tool missing)."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived; raised like KeyboardInterrupt so every ``finally`` runs."""


@dataclass
class Step:
    """One timed step: ``ok`` False means it failed and the run stopped there."""

    name: str
    seconds: float
    ok: bool
    result: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Everything the run measured, in the order it happened."""

    steps: list[Step] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    quickstart: dict[str, Any] = field(default_factory=dict)
    packages: list[dict[str, str]] = field(default_factory=list)
    downloads: dict[str, Any] = field(default_factory=dict)
    torch: dict[str, Any] = field(default_factory=dict)
    daemon: dict[str, Any] = field(default_factory=dict)
    checkout: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    logs: str = ""
    #: Why the run stopped early (a failed step, an interruption); None when it ran to the end.
    failure: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the run went to the end and every step passed."""
        return self.failure is None and bool(self.steps) and all(step.ok for step in self.steps)


# --- the README ----------------------------------------------------------------------------


def quickstart_command(readme_text: str) -> str:
    """The first ``sh`` code block under ``## Quickstart``, as one command line."""
    match = re.search(r"^## Quickstart[ \t]*$(.*?)(?=^## |\Z)", readme_text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise InstallError("README.md has no '## Quickstart' section")
    block = re.search(r"^```(?:sh|bash|shell)[ \t]*\n(.*?)^```", match.group(1), re.MULTILINE | re.DOTALL)
    if block is None:
        raise InstallError("README.md's Quickstart has no ```sh block")
    lines = [line.strip() for line in block.group(1).splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    # A command continued over lines with a trailing backslash is one command.
    command = " ".join(line.removesuffix("\\").strip() for line in lines)
    if not command:
        raise InstallError("README.md's Quickstart ```sh block is empty")
    return command


def split_quickstart(command: str) -> tuple[list[str], str]:
    """The install parts of ``a && b && ... && tbftd serve`` and the serve part, which must be last."""
    parts = [part.strip() for part in command.split("&&")]
    if len(parts) < 2 or not re.search(r"(^|/)tbftd serve\b", parts[-1]):
        raise InstallError(f"cannot split the Quickstart command into install parts and 'tbftd serve': {command!r}")
    if any("tbftd serve" in part for part in parts[:-1]):
        raise InstallError(f"'tbftd serve' appears before the last part of the Quickstart command: {command!r}")
    return parts[:-1], parts[-1]


def record(report: Report, step: Step) -> None:
    """Append ``step`` to the report; a failed step ends the run with its result as the reason."""
    report.steps.append(step)
    if not step.ok:
        raise InstallError(f"{step.name}: {step.result}")


# --- processes -----------------------------------------------------------------------------


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a log file ('' if there is none)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-chars:].decode("utf-8", "replace")


def _kill_group(process: subprocess.Popen[bytes], grace_seconds: float = 10.0) -> None:
    """SIGTERM the process's session, then SIGKILL it if it has not exited after the grace."""
    for signum, wait_seconds in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 30.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_seconds)


def run_logged(argv: Sequence[str], log_path: Path, timeout_seconds: float) -> tuple[int, float]:
    """Run ``argv`` with stdout and stderr into ``log_path``; its exit status and wall seconds.

    The child gets a session of its own so that it and its children can be ended together, on a
    timeout or when this script is interrupted. A timeout returns status 124, as timeout(1) does.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            log.write(f"\n[pi_install: timed out after {timeout_seconds:.0f} s]\n".encode())
            returncode = 124
        except BaseException:
            _kill_group(process)
            raise
        return returncode, time.perf_counter() - start


def capture(argv: Sequence[str], timeout_seconds: float = 600.0) -> str:
    """stdout of a short command that must succeed."""
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_seconds, check=False)
    if completed.returncode != 0:
        raise InstallError(f"{shlex.join(argv)} exited {completed.returncode}: {completed.stderr.strip()[-500:]}")
    return completed.stdout


def chroot_argv(root: Path, command: str, *, as_pi: bool = True, cwd: str = CHECKOUT_IN_ROOT) -> list[str]:
    """argv that runs shell ``command`` in ``cwd`` inside ``root``, as ``pi`` with a login-like environment.

    ``env -i`` keeps the host's environment (``TBFTD_*``, ``VIRTUAL_ENV``, ``PIP_*``) out, as on a
    Pi where the user types the command in a fresh shell.
    """
    user = [f"--userspec={PI_UID}:{PI_UID}"] if as_pi else []
    home = PI_HOME if as_pi else "/root"
    name = PI_USER if as_pi else "root"
    environment = [f"HOME={home}", f"USER={name}", f"LOGNAME={name}", f"PATH={CHROOT_PATH}", "LANG=C.UTF-8",
                   "SHELL=/bin/sh"]
    script = f"umask 022 && cd {shlex.quote(cwd)} && {command}"
    return ["chroot", *user, str(root), "/usr/bin/env", "-i", *environment, "/bin/sh", "-c", script]


# --- mounts --------------------------------------------------------------------------------


def mounts_under(root: Path) -> list[Path]:
    """Mount points strictly below ``root``, deepest first (the order to unmount them in)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    points: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point.startswith(prefix):
            points.append(Path(point))
    return sorted(set(points), key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(root: Path) -> list[str]:
    """Unmount everything below ``root``; what was unmounted. Lazily where a plain unmount fails."""
    done: list[str] = []
    for point in mounts_under(root):
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
        done.append(str(point))
    left = mounts_under(root)
    if left:
        raise InstallError(f"could not unmount {', '.join(map(str, left))}")
    return done


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys, /dev (a bind of the host's) and a private /dev/shm inside ``root`` for the block's length."""

    def mount(argv: list[str], point: Path) -> None:
        point.mkdir(parents=True, exist_ok=True)
        capture(["mount", *argv, str(point)])

    try:
        mount(["-t", "proc", "proc"], root / "proc")
        mount(["-t", "sysfs", "sysfs"], root / "sys")
        mount(["--bind", "/dev"], root / "dev")
        # Private before anything is mounted below it: with shared propagation a tmpfs on the
        # bind's shm would also cover the host's /dev/shm.
        capture(["mount", "--make-private", str(root / "dev")])
        # multiprocessing (the trainer child, its semaphores) needs a writable /dev/shm; the bind
        # shows only the empty directory the host's tmpfs sits on.
        mount(["-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm"], root / "dev" / "shm")
        yield
    finally:
        unmount_all_under(root)


def safe_rmtree(path: Path) -> None:
    """Remove ``path`` recursively, refusing while anything is mounted below it (a bound /dev would go too)."""
    if not path.exists():
        return
    unmount_all_under(path)
    capture(["rm", "-rf", "--one-file-system", str(path)])


# --- host ----------------------------------------------------------------------------------


def preflight() -> list[str]:
    """Check root and the tools; mount binfmt_misc and enable qemu-aarch64 if needed. What was changed."""
    if os.geteuid() != 0:
        raise HostError("run as root (debootstrap, chroot and mount need it)")
    for tool in ("debootstrap", "chroot", "mount", "umount", "git"):
        if shutil.which(tool) is None:
            raise HostError(f"{tool} not found (apt-get install debootstrap qemu-user-static binfmt-support git)")
    changes: list[str] = []
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        capture(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
        changes.append("mounted binfmt_misc")
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        if shutil.which("update-binfmts") is not None:
            capture(["update-binfmts", "--enable", "qemu-aarch64"])
            changes.append("enabled qemu-aarch64 in binfmt_misc")
        elif not entry.exists() and SYSTEMD_BINFMT_CONF.exists():
            # qemu-user-static installs systemd's binfmt.d entry; without systemd running (a
            # container) nothing registers it, so write it to the kernel as systemd-binfmt would.
            (binfmt / "register").write_text(SYSTEMD_BINFMT_CONF.read_text().strip())
            changes.append(f"registered qemu-aarch64 from {SYSTEMD_BINFMT_CONF}")
        else:
            raise HostError("qemu-aarch64 is not registered with binfmt_misc "
                            "(apt-get install qemu-user-static binfmt-support)")
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        raise HostError("qemu-aarch64 is still not enabled in binfmt_misc")
    return changes


def binfmt_interpreter() -> tuple[Path, bool]:
    """The aarch64 interpreter binfmt_misc runs, and whether it is fixed (flag F: no copy needed in the root)."""
    text = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text()
    interpreter = re.search(r"^interpreter (\S+)", text, re.MULTILINE)
    flags = re.search(r"^flags: (\S*)", text, re.MULTILINE)
    if interpreter is None:
        raise HostError("binfmt_misc's qemu-aarch64 entry names no interpreter")
    return Path(interpreter.group(1)), "F" in (flags.group(1) if flags else "")


def host_machine() -> dict[str, Any]:
    """The host's CPU, cores, kernel, Python and emulator."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    qemu = ""
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        if shutil.which(name):
            qemu = capture([name, "--version"]).splitlines()[0]
            break
    return {
        "host_cpu": cpu,
        "host_machine": platform.machine(),
        "host_cpus": len(os.sched_getaffinity(0)),
        "host_kernel": platform.release(),
        "host_python": platform.python_version(),
        "emulator": qemu,
    }


def host_rx_bytes() -> int:
    """Bytes received by every interface but loopback since boot (the whole machine's traffic)."""
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, counters = line.split(":", 1)
        if name.strip() != "lo":
            total += int(counters.split()[0])
    return total


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound here (the chroot shares this network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def directory_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it does not exist)."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                status = os.lstat(os.path.join(directory, name))
                if not stat.S_ISLNK(status.st_mode):
                    total += status.st_size
    return total


# --- steps ---------------------------------------------------------------------------------


def make_rootfs(root: Path, args: argparse.Namespace, logs: Path) -> Step:
    """debootstrap an arm64 bookworm into ``root`` (or reuse a finished one) and add the user pi."""
    marker = root / MARKER_IN_ROOT
    if marker.exists() and not args.rebuild_rootfs:
        made = json.loads(marker.read_text())
        wanted = set(args.include)
        if not wanted <= set(made.get("include", [])):
            raise InstallError(f"{root} was made with --include={','.join(made.get('include', []))}, "
                               f"not {','.join(args.include)}: pass --rebuild-rootfs or another --rootfs")
        return Step("rootfs (debootstrap)", 0.0, True,
                    f"reused, made {made['created']} in {made['seconds']:.0f} s", {"reused": True, **made})
    safe_rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    argv = ["debootstrap", f"--arch={ARCH}", f"--variant={args.variant}", f"--include={','.join(args.include)}",
            SUITE, str(root), args.mirror]
    log = logs / "debootstrap.log"
    try:
        returncode, seconds = run_logged(argv, log, args.debootstrap_timeout_seconds)
    finally:
        # A debootstrap that failed or was interrupted in its second stage leaves /proc and /sys mounted.
        unmount_all_under(root)
    if returncode != 0:
        raise InstallError(f"debootstrap exited {returncode} after {seconds:.0f} s (log {log}):\n{tail(log)}")
    user_command = (f"id -u {PI_USER} >/dev/null 2>&1 || "
                    f"useradd --create-home --uid {PI_UID} --shell /bin/bash {PI_USER}")
    returncode, user_seconds = run_logged(chroot_argv(root, user_command, as_pi=False, cwd="/"), log, 600.0)
    if returncode != 0:
        raise InstallError(f"adding the user {PI_USER} in the root failed ({returncode}, log {log}):\n{tail(log)}")
    made = {
        "suite": SUITE, "arch": ARCH, "variant": args.variant, "include": list(args.include), "mirror": args.mirror,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "seconds": round(seconds, 1),
        "bytes": directory_bytes(root),
    }
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(made, indent=2) + "\n")
    return Step("rootfs (debootstrap)", seconds + user_seconds, True,
                f"made, {made['bytes'] / _MEGABYTE:.0f} MB", {"reused": False, **made})


def check_arch(root: Path, logs: Path) -> tuple[Step, dict[str, str]]:
    """``uname -m``, Python and Debian versions inside the root; fails unless it is aarch64."""
    start = time.perf_counter()
    argv = chroot_argv(root, "uname -m; python3 -c 'import platform; print(platform.python_version())'", as_pi=False,
                       cwd="/")
    output = capture(argv).split()
    seconds = time.perf_counter() - start
    (logs / "arch.log").write_text(" ".join(output) + "\n")
    facts = {"chroot_uname_m": output[0] if output else "", "chroot_python": output[1] if len(output) > 1 else "",
             "chroot_debian": (root / "etc" / "debian_version").read_text().strip()}
    ok = facts["chroot_uname_m"] == "aarch64"
    result = f"uname -m {facts['chroot_uname_m']}, Python {facts['chroot_python']}, Debian {facts['chroot_debian']}"
    return Step("chroot: uname -m", seconds, ok, result if ok else f"FAIL: {result}, expected aarch64", facts), facts


def put_checkout(root: Path, worktree: bool) -> Step:
    """A fresh copy of this checkout at /home/pi/tbftd, owned by pi: a clone of HEAD or the working tree."""
    start = time.perf_counter()
    destination = root / CHECKOUT_IN_ROOT.lstrip("/")
    safe_rmtree(destination)
    head = capture(["git", "-C", str(REPO), "rev-parse", "HEAD"]).strip()
    changed = [line[3:] for line in capture(["git", "-C", str(REPO), "status", "--porcelain"]).splitlines()]
    if worktree:
        listed = capture(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        files = 0
        for name in sorted(set(filter(None, listed.split("\0")))):
            if name.split("/", 1)[0] in (".git", ".venv"):
                continue
            source = REPO / name
            if not source.exists() and not source.is_symlink():
                continue  # tracked but deleted in the working tree
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
            files += 1
        how = f"working tree of {head[:10]}, {files} files ({len(changed)} changed or untracked)"
    else:
        # --no-hardlinks: the chown below must not reach the host's own object files.
        capture(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(destination)])
        files = len(capture(["git", "-C", str(destination), "ls-files"]).splitlines())
        how = f"git clone of {head[:10]}, {files} files (uncommitted changes not included)"
    capture(["chown", "-R", f"{PI_UID}:{PI_UID}", str(destination)])
    details = {"mode": "worktree" if worktree else "clone", "head": head, "files": files, "changed": changed,
               "bytes": directory_bytes(destination)}
    return Step("checkout -> " + CHECKOUT_IN_ROOT, time.perf_counter() - start, True, how, details)


def copy_resolv_conf(root: Path) -> None:
    """The host's resolver configuration inside the root, so pip can resolve pypi.org."""
    target = root / "etc" / "resolv.conf"
    if target.is_symlink() or target.exists():
        target.unlink()
    shutil.copyfile("/etc/resolv.conf", target)


def pem_certificates(path: Path) -> list[str]:
    """The PEM blocks of a certificate bundle, each normalised to end in one newline."""
    text = path.read_text(errors="replace") if path.exists() else ""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.DOTALL)
    return [block.strip() + "\n" for block in blocks]


def install_host_ca(root: Path, logs: Path) -> Step:
    """Trust inside the root the CA certificates the host trusts and the root lacks.

    A network that inspects TLS (a company proxy) signs pypi.org with its own CA, which the host
    trusts and a fresh Debian does not; a Pi on such a network needs the same certificate installed
    the Debian way, in /usr/local/share/ca-certificates, which this does.
    """
    start = time.perf_counter()
    bundle = Path("etc/ssl/certs/ca-certificates.crt")
    known = set(pem_certificates(root / bundle))
    extra = [pem for pem in pem_certificates(Path("/") / bundle) if pem not in known]
    if not extra:
        return Step("host CA certificates", time.perf_counter() - start, True, "none needed", {"installed": 0})
    directory = root / "usr/local/share/ca-certificates"
    directory.mkdir(parents=True, exist_ok=True)
    for index, pem in enumerate(extra, start=1):
        (directory / f"pi-install-host-{index}.crt").write_text(pem)
    log = logs / "ca-certificates.log"
    returncode, _ = run_logged(chroot_argv(root, "update-ca-certificates", as_pi=False, cwd="/"), log, 600.0)
    if returncode != 0:
        raise InstallError(f"update-ca-certificates failed in the root ({returncode}, log {log}):\n{tail(log)}")
    return Step("host CA certificates", time.perf_counter() - start, True,
                f"installed {len(extra)} the host trusts (TLS-inspecting network)", {"installed": len(extra)})


def pip_downloads(log: Path) -> list[dict[str, Any]]:
    """Each ``Downloading NAME (SIZE)`` line pip printed: file name and bytes as pip rounded them."""
    found = []
    for name, size, unit in _PIP_DOWNLOAD.findall(log.read_text(errors="replace")):
        found.append({"file": name, "bytes": int(float(size) * _PIP_UNIT_BYTES[unit])})
    return found


def inspect_venv(root: Path, logs: Path, report: Report) -> Step:
    """The installed packages (none may be CUDA's) and torch's version, CUDA version and import time."""
    start = time.perf_counter()
    venv = f"{CHECKOUT_IN_ROOT}/.venv/bin"
    listing = capture(chroot_argv(root, f"{venv}/pip --disable-pip-version-check list --format=json"))
    report.packages = [{"name": p["name"], "version": p["version"]} for p in json.loads(listing)]
    (logs / "pip-list.json").write_text(json.dumps(report.packages, indent=2) + "\n")
    probe = ("import json, platform, time; t = time.perf_counter(); import torch; "
             "s = time.perf_counter() - t; print(json.dumps({'python': platform.python_version(), "
             "'machine': platform.machine(), 'torch': torch.__version__, 'cuda': torch.version.cuda, "
             "'threads': torch.get_num_threads(), 'import_seconds': round(s, 2)}))")
    probed = capture(chroot_argv(root, f"{venv}/python -c {shlex.quote(probe)}"))
    report.torch = json.loads(probed.strip().splitlines()[-1])
    seconds = time.perf_counter() - start
    forbidden = sorted(p["name"] for p in report.packages
                       if p["name"].lower().replace("_", "-").startswith(FORBIDDEN_PREFIXES))
    summary = (f"{len(report.packages)} packages, torch {report.torch['torch']} (torch.version.cuda "
               f"{report.torch['cuda']}), import torch {report.torch['import_seconds']} s")
    if forbidden:
        return Step("packages: no CUDA", seconds, False, f"FAIL: CUDA packages installed: {', '.join(forbidden)}",
                    {"forbidden": forbidden})
    if report.torch["cuda"] is not None:
        return Step("packages: no CUDA", seconds, False, f"FAIL: a CUDA build of torch: {summary}", {})
    return Step("packages: no CUDA", seconds, True, summary, {"forbidden": []})


def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
         timeout_seconds: float = 600.0) -> tuple[int, Any]:
    """One request; the status and the JSON answer (the text where it is not JSON)."""
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def wait_for_healthz(base_url: str, daemon: subprocess.Popen[bytes], log: Path, timeout_seconds: float) -> float:
    """Seconds until ``/healthz`` first answered 200; fails if the daemon exits or the time runs out."""
    start = time.perf_counter()
    while True:
        if daemon.poll() is not None:
            raise InstallError(f"tbftd serve exited {daemon.returncode} before /healthz answered "
                               f"(log {log}):\n{tail(log)}")
        with contextlib.suppress(OSError, TimeoutError):
            status, _ = http("GET", f"{base_url}/healthz", timeout_seconds=10.0)
            if status == 200:
                return time.perf_counter() - start
        if time.perf_counter() - start > timeout_seconds:
            raise InstallError(f"/healthz did not answer 200 within {timeout_seconds:.0f} s (log {log}):\n{tail(log)}")
        time.sleep(1.0)


def raw_query(shape: Sequence[int], labels: Sequence[int] | None) -> str:
    """The query of an ``application/octet-stream`` batch, as README's curl example sends it."""
    params = {"dtype": "uint8", "shape": ",".join(map(str, shape)), "context": CONTEXT, "device_id": CONTEXT}
    if labels is not None:
        params["labels"] = ",".join(map(str, labels))
    return urllib.parse.urlencode(params, safe=",")


def timed_http(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
               timeout_seconds: float = 600.0) -> tuple[int, Any, float]:
    """:func:`http`, with the seconds the request took."""
    start = time.perf_counter()
    status, answer = http(method, url, body, content_type, timeout_seconds)
    return status, answer, time.perf_counter() - start


def exercise_daemon(base_url: str, report: Report, timeout_seconds: float) -> None:
    """POST a batch and a prediction and read the status, as a device would; each a step."""
    generator = random.Random(0)
    sample_bytes = SAMPLE_SHAPE[0] * SAMPLE_SHAPE[1] * SAMPLE_SHAPE[2]
    labels = [i % NUM_CLASSES for i in range(BATCH_SAMPLES)]
    body = generator.randbytes(BATCH_SAMPLES * sample_bytes)
    url = f"{base_url}/v1/samples?{raw_query((BATCH_SAMPLES, *SAMPLE_SHAPE), labels)}"
    status, answer, seconds = timed_http("POST", url, body, "application/octet-stream", timeout_seconds)
    accepted = answer.get("accepted") if isinstance(answer, dict) else None
    ok = status == 201 and accepted == BATCH_SAMPLES
    record(report, Step(f"POST /v1/samples ({BATCH_SAMPLES} x uint8 3x32x32)", seconds, ok,
                        f"{status}, accepted {accepted}" + ("" if ok else f": FAIL {str(answer)[:300]}"),
                        {"status": status, "answer": answer, "body_bytes": len(body)}))

    body = generator.randbytes(PREDICT_SAMPLES * sample_bytes)
    url = f"{base_url}/v1/predict?{raw_query((PREDICT_SAMPLES, *SAMPLE_SHAPE), None)}"
    status, answer, seconds = timed_http("POST", url, body, "application/octet-stream", timeout_seconds)
    classes = answer.get("classes") if isinstance(answer, dict) else None
    version = answer.get("model_version") if isinstance(answer, dict) else None
    ok = (status == 200 and isinstance(classes, list) and len(classes) == PREDICT_SAMPLES
          and all(isinstance(c, int) and 0 <= c < NUM_CLASSES for c in classes) and version is not None)
    record(report, Step(f"POST /v1/predict ({PREDICT_SAMPLES} samples)", seconds, ok,
                        f"{status}, classes {classes}, model_version {version}"
                        + ("" if ok else f": FAIL {str(answer)[:300]}"),
                        {"status": status, "classes": classes, "model_version": version}))

    status, answer, seconds = timed_http("GET", f"{base_url}/v1/status", timeout_seconds=timeout_seconds)
    ok = status == 200 and isinstance(answer, dict)
    report.daemon["status"] = answer
    meter = answer.get("meter") or {} if ok else {}
    buffered = (answer.get("buffer") or {}).get("samples") if ok else None
    ok = ok and buffered == BATCH_SAMPLES
    record(report, Step("GET /v1/status", seconds, ok,
                        f"{status}, model {answer.get('model_version') if ok else '?'}, {buffered} samples "
                        f"buffered, meter {meter.get('kind')} ({meter.get('source')})"
                        + ("" if ok else f": FAIL {str(answer)[:300]}"), {"status": status}))


def stop_daemon(daemon: subprocess.Popen[bytes], timeout_seconds: float) -> Step:
    """SIGTERM the daemon and time its exit; passes only on exit status 0."""
    start = time.perf_counter()
    os.kill(daemon.pid, signal.SIGTERM)
    try:
        returncode = daemon.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        _kill_group(daemon, grace_seconds=0.0)
        return Step("SIGTERM -> exit", time.perf_counter() - start, False,
                    f"FAIL: still running after {timeout_seconds:.0f} s, killed", {"returncode": None})
    seconds = time.perf_counter() - start
    ok = returncode == 0
    return Step("SIGTERM -> exit", seconds, ok, f"exit {returncode}" if ok else f"FAIL: exit {returncode}",
                {"returncode": returncode})


def run_quickstart(root: Path, args: argparse.Namespace, logs: Path, report: Report) -> None:
    """Steps 3 and 4: the README's install parts timed, then its serve part exercised from the host."""
    readme = root / CHECKOUT_IN_ROOT.lstrip("/") / "README.md"
    command = quickstart_command(readme.read_text())
    install_parts, serve_part = split_quickstart(command)
    report.quickstart = {"command": command, "install_parts": install_parts, "serve_part": serve_part}

    if not args.keep_pip_cache:
        # A fresh Pi has an empty cache; without this a second run would download nothing.
        safe_rmtree(root / PI_HOME.lstrip("/") / ".cache" / "pip")
    copy_resolv_conf(root)
    rx_before_bytes = host_rx_bytes()
    for index, part in enumerate(install_parts, start=1):
        log = logs / f"install-{index}.log"
        returncode, seconds = run_logged(chroot_argv(root, part), log, args.install_timeout_seconds)
        ok = returncode == 0
        details: dict[str, Any] = {"command": part, "returncode": returncode, "log": str(log)}
        result = "ok" if ok else f"FAIL: exit {returncode} (log {log})"
        if "pip install" in part:
            downloads = pip_downloads(log)
            downloaded_bytes = sum(d["bytes"] for d in downloads)
            report.downloads = {
                "pip_reported_files": downloads,
                "pip_reported_bytes": downloaded_bytes,
                "pip_cache_bytes": directory_bytes(root / PI_HOME.lstrip("/") / ".cache" / "pip"),
                "host_rx_bytes_whole_machine": host_rx_bytes() - rx_before_bytes,
                "venv_bytes": directory_bytes(root / CHECKOUT_IN_ROOT.lstrip("/") / ".venv"),
            }
            details.update(report.downloads)
            if ok:
                # pip's own figures: its HTTP cache stays empty where a proxy strips the caching headers.
                result = (f"downloaded {downloaded_bytes / _MEGABYTE:.0f} MB in {len(downloads)} files as pip "
                          f"reported them, venv {report.downloads['venv_bytes'] / _MEGABYTE:.0f} MB")
        elif ok and "venv" in part:
            result = f"venv {directory_bytes(root / CHECKOUT_IN_ROOT.lstrip('/') / '.venv') / _MEGABYTE:.0f} MB"
        report.steps.append(Step(part, seconds, ok, result, details))
        if not ok:
            raise InstallError(f"{part!r} exited {returncode} inside the chroot (log {log}):\n{tail(log)}")

    record(report, inspect_venv(root, logs, report))

    port = args.port if args.port is not None else DEFAULT_PORT
    serve = serve_part
    if args.port is not None or not port_is_free(DEFAULT_PORT):
        if args.port is None:
            port = free_port()
            report.notes.append(f"127.0.0.1:{DEFAULT_PORT} is taken on this host: ran the daemon with --port {port}")
        serve = f"{serve_part} --port {port}"
    report.daemon.update({"command": serve, "port": port})
    base_url = f"http://{HOST}:{port}"
    log = logs / "serve.log"
    with log.open("ab") as serve_log:
        argv = chroot_argv(root, f"exec {serve}")  # exec: the chroot's pid is the daemon's, SIGTERM reaches it
        serve_log.write(f"$ {shlex.join(argv)}\n".encode())
        serve_log.flush()
        start = time.perf_counter()
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=serve_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    stopped = False
    try:
        try:
            seconds = wait_for_healthz(base_url, daemon, log, args.healthz_timeout_seconds)
        except InstallError as error:
            report.steps.append(Step(f"{serve} -> /healthz 200", time.perf_counter() - start, False,
                                     f"FAIL: {str(error).splitlines()[0]}"))
            raise
        report.steps.append(Step(f"{serve} -> /healthz 200", seconds, True, f"200 on {base_url}", {"url": base_url}))
        exercise_daemon(base_url, report, args.request_timeout_seconds)
        step = stop_daemon(daemon, args.stop_timeout_seconds)
        stopped = True
        report.steps.append(step)
        if not step.ok:
            raise InstallError(f"the daemon did not stop cleanly: {step.result} (log {log}):\n{tail(log)}")
    finally:
        if not stopped:
            _kill_group(daemon)
        report.daemon["log_tail"] = tail(log, 1500)


# --- output --------------------------------------------------------------------------------


def table(report: Report) -> str:
    """The steps as a Markdown table, then the machine and what emulation means for the figures."""
    lines = ["| step | seconds | result |", "| --- | ---: | --- |"]
    for step in report.steps:
        lines.append(f"| {step.name.replace('|', '/')} | {step.seconds:.1f} | {step.result.replace('|', '/')} |")
    install = [s for s in report.steps if s.name in report.quickstart.get("install_parts", [])]
    if install:
        lines.append(f"| install parts together | {sum(s.seconds for s in install):.1f} | |")
    m = report.machine
    lines += [
        "",
        (f"host: {m.get('host_cpu')} ({m.get('host_cpus')} CPUs, {m.get('host_machine')}, "
         f"Linux {m.get('host_kernel')}), {m.get('emulator')}"),
        (f"chroot: uname -m {m.get('chroot_uname_m', '?')}, Debian {m.get('chroot_debian', '?')}, "
         f"Python {report.torch.get('python') or m.get('chroot_python', '?')}, "
         f"torch {report.torch.get('torch', '?')} (torch.version.cuda {report.torch.get('cuda', '?')})"),
        f"Quickstart command (README.md): {report.quickstart.get('command', '?')}",
        *[f"note: {note}" for note in report.notes],
        ("note: every step ran under qemu-user emulation of aarch64 on this x86 host, many times slower than a "
         "Raspberry Pi (downloads excepted): the figures show that the command works and where the time goes, "
         "not a Pi's speed."),
        f"logs: {report.logs}",
        "result: " + ("PASS" if report.ok else f"FAIL: {(report.failure or 'a step failed').splitlines()[0]}"),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rootfs", type=Path, default=DEFAULT_ROOTFS,
                        help=f"the arm64 root file system, made once and reused (default {DEFAULT_ROOTFS})")
    parser.add_argument("--rebuild-rootfs", action="store_true", help="debootstrap again even if --rootfs is made")
    parser.add_argument("--worktree", action="store_true",
                        help="copy the working tree (uncommitted changes included) instead of a git clone of HEAD")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"Debian mirror (default {DEFAULT_MIRROR})")
    parser.add_argument("--variant", default="minbase", help="debootstrap variant (default minbase)")
    parser.add_argument("--include", type=lambda s: tuple(filter(None, s.split(","))), default=DEFAULT_INCLUDE,
                        help=f"packages debootstrap adds (default {','.join(DEFAULT_INCLUDE)})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port for tbftd serve (default: the README's {DEFAULT_PORT}, or a free one "
                             "if it is taken)")
    parser.add_argument("--no-host-ca", dest="host_ca", action="store_false",
                        help="do not install in the root the CA certificates the host trusts and the root lacks")
    parser.add_argument("--keep-pip-cache", action="store_true", help="keep pi's pip cache from the last run")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--logs", type=Path, default=DEFAULT_LOGS,
                        help=f"where each run's logs go (default {DEFAULT_LOGS})")
    parser.add_argument("--debootstrap-timeout-seconds", type=float, default=3600.0)
    parser.add_argument("--install-timeout-seconds", type=float, default=3 * 3600.0, help="per install part")
    parser.add_argument("--healthz-timeout-seconds", type=float, default=900.0)
    parser.add_argument("--request-timeout-seconds", type=float, default=600.0)
    parser.add_argument("--stop-timeout-seconds", type=float, default=300.0)
    return parser


def run(args: argparse.Namespace, report: Report) -> None:
    """Every step in order; the first failure raises after its step is recorded."""
    root: Path = args.rootfs.resolve()
    logs = Path(report.logs)
    report.notes.extend(preflight())
    report.machine.update(host_machine())
    interpreter, fixed = binfmt_interpreter()
    stale = unmount_all_under(root) if root.exists() else []
    if stale:
        report.notes.append(f"unmounted what a previous run left under {root}: {', '.join(stale)}")
    try:
        step = make_rootfs(root, args, logs)
    except InstallError as error:
        report.steps.append(Step("rootfs (debootstrap)", 0.0, False, f"FAIL: {str(error).splitlines()[0]}"))
        raise
    report.steps.append(step)
    if not fixed:
        # Without binfmt's F flag the kernel looks the interpreter up inside the chroot.
        target = root / str(interpreter).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interpreter.resolve(), target)
    step, facts = check_arch(root, logs)
    report.machine.update(facts)
    record(report, step)
    if args.host_ca:
        step = install_host_ca(root, logs)
        report.steps.append(step)
        if step.details.get("installed"):
            report.notes.append(f"this network inspects TLS: {step.details['installed']} host CA certificate(s) "
                                "installed in the root so pip can reach PyPI (--no-host-ca to leave them out)")
    step = put_checkout(root, args.worktree)
    report.checkout = step.details
    report.steps.append(step)
    if args.worktree:
        report.notes.append("--worktree: the checkout is this working tree, uncommitted changes included")
    with chroot_mounts(root):
        run_quickstart(root, args, logs, report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check, print the table, write the JSON; 0 when every step passed."""
    args = build_parser().parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    report = Report(logs=str(args.logs / stamp))
    Path(report.logs).mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    status = 0
    try:
        run(args, report)
    except HostError as error:
        print(f"pi_install: {error}", file=sys.stderr)
        report.failure = str(error)
        status = 2
    except InstallError as error:
        print(f"pi_install: FAIL: {error}", file=sys.stderr)
        report.failure = str(error)
        status = 1
    except (KeyboardInterrupt, Interrupted) as error:
        print(f"pi_install: interrupted ({type(error).__name__} {error}); mounts removed", file=sys.stderr)
        report.failure = f"interrupted ({type(error).__name__} {error})"
        status = 1
    finally:
        if args.rootfs.exists():
            with contextlib.suppress(InstallError):
                unmount_all_under(args.rootfs.resolve())
    if status == 0 and not report.ok:
        status = 1
    if report.steps:
        print(table(report))
    if args.json is not None:
        document = {"ok": report.ok and status == 0, **asdict(report), "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
