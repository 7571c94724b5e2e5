"""Resolve tbftd's dependencies for the platforms it installs on and fail on any CUDA package.

A Raspberry Pi must never download CUDA: PyPI's aarch64 wheels of torch 2.11 and later require
CUDA 13 (cuda-toolkit, cuDNN, NCCL, nvshmem, triton) on any aarch64 Linux, those of 2.10 and
earlier none, so ``pyproject.toml`` caps torch below 2.11 on aarch64. pip cannot check this for
another platform (``--platform`` does not evaluate environment markers); uv resolves for another
platform with the markers evaluated, so this script asks uv (``uv pip compile pyproject.toml
--python-platform ... --python-version ...``) for each target and reads the pinned set.

Targets and where they may take torch from:

* ``aarch64-manylinux_2_36`` (Raspberry Pi OS / Debian bookworm, glibc 2.36), Python 3.11 and
  3.12: PyPI alone, which is what a Pi's pip sees.
* ``x86_64-manylinux_2_36``, Python 3.11 and 3.12: PyPI has no CPU-only build of torch for x86_64
  Linux (every release there requires the CUDA packages), so a CPU build comes from PyTorch's CPU
  index or a local wheel. The check uses the sources pip is configured with on this machine
  (``find-links`` and ``extra-index-url`` from ``pip config list``) and ``--find-links`` given
  here; a target with no CPU build in them is reported as such, not as a pass.

Exit status 1 when a target resolves a package named ``nvidia-*``, ``cuda-*`` or ``triton*``
while a CPU build was available to it (on aarch64: always), or when uv fails; 0 otherwise.

    python deploy/check_dependencies.py                 # needs uv on PATH or `pip install uv`
    python deploy/check_dependencies.py --json /tmp/deps.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (uv's platform name, Python version, whether PyPI alone offers a CPU build of torch there).
TARGETS: tuple[tuple[str, str, bool], ...] = (
    ("aarch64-manylinux_2_36", "3.11", True),
    ("aarch64-manylinux_2_36", "3.12", True),
    ("x86_64-manylinux_2_36", "3.11", False),
    ("x86_64-manylinux_2_36", "3.12", False),
)
CUDA_PACKAGE = re.compile(r"^(nvidia-|cuda-|triton)", re.IGNORECASE)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


@dataclass
class Resolution:
    """One target's resolved set, and the verdict on it."""

    platform: str
    python: str
    torch: str | None = None
    packages: int = 0
    cuda_packages: list[str] = field(default_factory=list)
    cpu_build_offered: bool = True
    verdict: str = ""
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or (bool(self.cuda_packages) and self.cpu_build_offered)


def uv_command() -> list[str]:
    """uv on PATH, else the one the ``uv`` package installed beside this Python."""
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found:
        return [found]
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("check_dependencies: uv not found; install it with `pip install uv`") from None
    return [find_uv_bin()]


def pip_sources() -> tuple[list[str], list[str]]:
    """``find-links`` and ``extra-index-url`` values of this machine's pip configuration."""
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    find_links: list[str] = []
    indexes: list[str] = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        values = value.strip().strip("'\"").split()
        if key.endswith(".find-links"):
            find_links += values
        elif key.endswith(".extra-index-url"):
            # uv reads flat directories and PEP 503 indexes over http(s) or file://.
            indexes += values
    return list(dict.fromkeys(find_links)), list(dict.fromkeys(indexes))


def cpu_build_sources(find_links: list[str], indexes: list[str], python: str) -> list[str]:
    """The sources that offer a CPU build of torch for x86_64 and ``python``: local folders and
    ``file://`` indexes holding such a wheel, and PyTorch's CPU index (``.../whl/cpu``) if given."""
    tag = "cp" + python.replace(".", "")
    pattern = f"torch-*+cpu-{tag}-{tag}-*x86_64.whl"
    offered = []
    for link in find_links:
        folder = Path(link.removeprefix("file://"))
        if folder.is_dir() and any(folder.glob(pattern)):
            offered.append(link)
    for index in indexes:
        if index.startswith("file://"):
            if any(Path(index.removeprefix("file://"), "torch").glob(pattern)):
                offered.append(index)
        elif index.rstrip("/").endswith("/whl/cpu"):
            offered.append(index)
    return offered


def resolve(uv: list[str], platform: str, python: str, cpu_on_pypi: bool, find_links: list[str],
            indexes: list[str]) -> Resolution:
    """``uv pip compile`` of the project for one target, read into a :class:`Resolution`."""
    command = [*uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--python-platform", platform,
               "--python-version", python, "--no-header", "--no-annotate", "--quiet"]
    if not cpu_on_pypi:
        for link in find_links:
            command += ["--find-links", link]
        for index in indexes:
            command += ["--extra-index-url", index]
        # A local CPU wheel (2.13.0+cpu) must win over PyPI's CUDA build of the same release.
        command += ["--index-strategy", "unsafe-best-match"]
    # Never download an interpreter to evaluate a version this machine lacks: the markers suffice.
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    result = Resolution(platform, python)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    except subprocess.TimeoutExpired:
        result.error = "uv took over 600 s"
        return result
    if done.returncode != 0:
        result.error = (done.stderr.strip().splitlines() or [f"uv exited with {done.returncode}"])[-1]
        return result
    pins = dict(m.groups() for line in done.stdout.splitlines() if (m := _PIN.match(line.strip())))
    result.packages = len(pins)
    result.torch = pins.get("torch")
    result.cuda_packages = sorted(name for name in pins if CUDA_PACKAGE.match(name))
    # Decided from the sources, not from the outcome: pins that shut a CPU wheel out must fail.
    result.cpu_build_offered = cpu_on_pypi or bool(cpu_build_sources(find_links, indexes, python))
    if not result.cuda_packages:
        result.verdict = "ok: no CUDA package"
    elif result.cpu_build_offered:
        result.verdict = f"FAIL: {len(result.cuda_packages)} CUDA packages"
    else:
        result.verdict = (f"no CPU build of torch in PyPI or this machine's wheel sources for Python {python}: "
                          f"PyPI's torch pulls {len(result.cuda_packages)} CUDA packages; install from PyTorch's "
                          "CPU index (https://download.pytorch.org/whl/cpu)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL",
                        help="more places with CPU builds of torch, for the x86_64 targets")
    parser.add_argument("--json", type=Path, help="also write the resolutions as JSON here")
    args = parser.parse_args(argv)
    uv = uv_command()
    configured_links, indexes = pip_sources()
    find_links = list(dict.fromkeys([*configured_links, *args.find_links]))
    version = subprocess.run([*uv, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"{version}; x86_64 CPU sources: {', '.join(find_links + indexes) or 'none'}")
    results = [resolve(uv, platform, python, cpu, find_links, indexes) for platform, python, cpu in TARGETS]
    header = ("platform", "python", "torch", "packages", "verdict")
    rows = [(r.platform, r.python, r.torch or "-", str(r.packages), r.error and f"FAIL: {r.error}" or r.verdict)
            for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for r in results:
        if r.cuda_packages and r.cpu_build_offered:
            print(f"{r.platform} / Python {r.python}: {', '.join(r.cuda_packages)}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
