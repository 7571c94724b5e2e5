"""``tbftd status | jobs | energy | models``: an operator's view of a running daemon.

Each command talks to the daemon at ``--url`` (default ``$TBFTD_URL``, else
http://127.0.0.1:8470) through :mod:`service.client`, with the token from ``$TBFTD_API_TOKEN``,
and prints an aligned table whose headers carry their units, or the daemon's JSON with
``--json``. A daemon that does not answer is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from service.cli import CLIError
from service.client import (
    DEFAULT_URL,
    DaemonUnreachable,
    ResponseError,
    TbftdClient,
    TbftdError,
)
from service.progress_line import ProgressLine

#: Environment variable naming the daemon's URL for the operator commands.
URL_VARIABLE = "TBFTD_URL"
#: Relative times ``--since``/``--until`` take: a number and a unit (``90s``, ``30m``, ``1h``, ``2d``, ``1w``).
RELATIVE_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``status``, ``jobs``, ``energy`` and ``models``."""
    common = _common_options(nested=False)
    nested = _common_options(nested=True)

    status = subparsers.add_parser(
        "status", parents=[common], help="what a running daemon does: model, buffer, job, meter",
        description="Show the active model version, the sample buffer, the running job and the meter.")
    status.set_defaults(func=status_command)

    jobs = subparsers.add_parser(
        "jobs", parents=[common], help="list jobs with their energy, or follow one (--wait ID)",
        description="List fine-tuning jobs, newest first, with accuracy, seconds and joules; "
        "--wait ID (or `jobs wait ID`) follows one with a progress bar until it ends.")
    jobs.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled", "interrupted"))
    jobs.add_argument("--context", help="only this context's jobs")
    jobs.add_argument("--limit", type=int, default=20, help="most jobs listed (default 20)")
    jobs.add_argument("--wait", type=int, metavar="ID", help="follow job ID until it ends")
    jobs.set_defaults(func=jobs_command)
    job_commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND")
    wait = job_commands.add_parser(
        "wait", parents=[nested], help="follow a job with a progress bar until it ends",
        description="Follow a job (progress bar on stderr: epoch, loss, samples/s) until it ends; "
        "exit status 0 if it succeeded, 1 otherwise.")
    wait.add_argument("job_id", type=int, metavar="ID")
    wait.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="give up after this many seconds")
    wait.set_defaults(func=wait_command)
    jobs.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")

    energy = subparsers.add_parser(
        "energy", parents=[common], help="the per-job energy log (joules, watts, source)",
        description="Per-job energy, oldest first: seconds, joules (gross and above idle), mean and "
        "peak watts and what measured them. --since/--until take epoch seconds, ISO 8601 with a "
        "time zone (2024-05-01T12:00:00+02:00) or a time ago (90s, 30m, 1h, 2d, 1w).")
    energy.add_argument("--since", type=time_bound, help="from this time (inclusive)")
    energy.add_argument("--until", type=time_bound, help="up to this time (exclusive)")
    energy.add_argument("--context", help="only this context's jobs")
    energy.add_argument("--block", help="only jobs that trained this block")
    energy.add_argument("--csv", action="store_true", help="print the daemon's CSV")
    energy.set_defaults(func=energy_command)

    models = subparsers.add_parser(
        "models", parents=[common], help="a context's model versions; `models activate VERSION` rolls back or forward",
        description="List a context's model versions (its own and the base), or make one the model it is served.")
    models.add_argument("--context", default="default", help="the context (default: default)")
    models.set_defaults(func=models_command)
    model_commands = models.add_subparsers(dest="models_command", metavar="COMMAND")
    activate = model_commands.add_parser(
        "activate", parents=[nested], help="serve VERSION to a context",
        description="Serve VERSION to a context: a rollback or a roll forward of that context's model only.")
    activate.add_argument("version", type=int, metavar="VERSION")
    activate.add_argument("--context", default=argparse.SUPPRESS, help="the context (default: default)")
    activate.set_defaults(func=activate_command)


def _common_options(nested: bool) -> argparse.ArgumentParser:
    """``--url`` and ``--json``. A nested command (``jobs wait``) leaves them unset unless given,
    so that ``tbftd jobs --url X wait 3`` keeps the X given before it."""
    default: Any = argparse.SUPPRESS if nested else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=default,
                        help=f"the daemon's URL (default: ${URL_VARIABLE}, else {DEFAULT_URL}); "
                        "the token comes from $TBFTD_API_TOKEN")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS if nested else False,
                        help="print the daemon's JSON instead of a table")
    return common


# -- commands ------------------------------------------------------------------------------------


def status_command(args: argparse.Namespace) -> int:
    """Print the daemon's status."""
    client = _client(args)
    status = _call(client, client.status)
    if args.json:
        return _print_json(status)
    buffer, meter, running = status["buffer"], status["meter"], status["running_job"]
    rows = [
        ("daemon", client.url),
        ("uptime", format_duration(status["uptime_seconds"])),
        ("model version", f"{status['models']['default']} (default model)"),
        ("context models", ", ".join(f"{name} v{version}" for name, version in status["models"]["contexts"].items())
         or "none: every context has the default model"),
        ("buffer", (f"{buffer['samples']:,} / {buffer['max_samples']:,} samples, "
                    f"{format_bytes(buffer['bytes'])} / {format_bytes(buffer['max_bytes'])} "
                    f"({100 * buffer['fill']:.1f}% full)")),
        ("running job", "none" if running is None else f"{running['id']}: {describe_progress(running['progress'])}"),
        ("queued jobs", str(status["queued_jobs"])),
        ("meter", meter["source"] + (" (estimate)" if meter["estimate"] else "")),
        ("meter health", meter["health"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def jobs_command(args: argparse.Namespace) -> int:
    """List jobs, or follow one with ``--wait``."""
    if args.wait is not None:
        args.job_id = args.wait
        return wait_command(args)
    client = _client(args)
    if args.limit < 1:
        raise CLIError("--limit must be at least 1")
    jobs = _call(client, lambda: client.jobs(state=args.state, context=args.context, limit=min(args.limit, 1000)))
    if args.json:
        return _print_json({"jobs": jobs})
    if not jobs:
        print("no jobs")
        return 0
    headers = ("job", "context", "state", "outcome", "drift", "block", "samples", "val acc before → after %",
               "version", "created", "seconds (s)", "joules (J)", "energy source")
    rows = []
    for job in jobs:
        record = job.get("energy")
        rows.append((
            str(job["id"]), job["context"], job["state"], job_outcome(job), job["drift_type"] or "-",
            job["block"] or "-", _integer(job["sample_count"]),
            _accuracy_change(job["accuracy_before"], job["accuracy_after"]),
            _version_change(job), format_time(job["created_at"]),
            _number(record["seconds"] if record else None, 1), _number(record["joules"] if record else None, 1),
            record["source"] if record else "-",
        ))
    print_table(headers, rows, numeric=(0, 6, 10, 11))
    return 0


def wait_command(args: argparse.Namespace) -> int:
    """Follow a job with a progress bar until it ends; 0 if it succeeded."""
    client = _client(args, retries=3)
    bar = JobProgressBar(sys.stderr)
    try:
        job = _call(client, lambda: client.wait_for_job(args.job_id, args.timeout, bar.update))
    finally:
        bar.finish()
    if args.json:
        _print_json(job)
    else:
        print(describe_outcome(job))
    return 0 if job["state"] == "succeeded" else 1


def energy_command(args: argparse.Namespace) -> int:
    """Print the energy log."""
    client = _client(args)
    if args.csv:
        sys.stdout.write(_call(client, lambda: client.energy(args.since, args.until, args.context, args.block, csv=True)))
        return 0
    log = _call(client, lambda: client.energy(args.since, args.until, args.context, args.block))
    if args.json:
        return _print_json(log)
    records = log["jobs"]
    if not records:
        print("no jobs measured in that range")
        return 0
    headers = ("job", "context", "drift", "block", "state", "finished", "seconds (s)", "joules (J)",
               "net joules (J)", "mean watts (W)", "peak watts (W)", "energy source", "notes")
    rows = []
    for r in records:
        rows.append((
            str(r["job_id"]), r["context"], r["drift_type"] or "-", r["block"] or "-", r["state"],
            format_time(r["finished_at"]), _number(r["seconds"], 1), _number(r["joules"], 1),
            _number(r["net_joules"], 1), _number(r["mean_watts"], 2), _number(r["peak_watts"], 2), r["source"],
            "low confidence" if r["low_confidence"] else "",
        ))
    total_joules = sum(r["joules"] for r in records)
    total_seconds = sum(r["seconds"] for r in records)
    rows.append(("total", "", "", "", f"{len(records)} job{'s' * (len(records) != 1)}", "",
                 _number(total_seconds, 1), _number(total_joules, 1), "", "", "", "", ""))
    print_table(headers, rows, numeric=(0, 6, 7, 8, 9, 10), rule_before_last=True)
    return 0


def models_command(args: argparse.Namespace) -> int:
    """List the model versions."""
    client = _client(args)
    models = _call(client, lambda: client.models(args.context))
    if args.json:
        return _print_json(models)
    scope = models["scope"]
    print(f"context {models['context']}" + (f" (shares group {scope}'s model)" if scope != models["context"] else "")
          + f": served version {models['active']}" + (" (the default model)" if models["active"] == models["default"] else ""))
    headers = ("version", "served", "of", "parent", "job", "created", "val acc before → after %", "notes")
    rows = []
    for v in models["versions"]:
        accuracy = v.get("accuracy") or {}
        rows.append((str(v["version"]), "*" if v["version"] == models["active"] else "",
                     v.get("scope") or "base", _integer(v["parent_version"]), _integer(v["job_id"]),
                     format_time(v["created_at"]), _accuracy_change(accuracy.get("before"), accuracy.get("after")),
                     v.get("notes") or ""))
    print_table(headers, rows, numeric=(0, 3, 4))
    return 0


def activate_command(args: argparse.Namespace) -> int:
    """Serve a version to a context."""
    client = _client(args)
    context = getattr(args, "context", "default")
    before = _call(client, lambda: client.models(context))["active"]
    version = _call(client, lambda: client.activate(args.version, context))
    if args.json:
        return _print_json(version)
    print(f"context {context}: serving version {version['version']} (was {before})")
    return 0


# -- helpers the demo shares ---------------------------------------------------------------------


class JobProgressBar:
    """Shows a job's progress (state, epoch, loss, samples/s) as it is polled.

    On a terminal, one line redrawn in place; otherwise (a log, a pipe) a line when the job's state
    or epoch changes. Feed it job dicts with :meth:`update`; call :meth:`finish` at the end.
    """

    def __init__(self, stream: TextIO, label: str = "") -> None:
        self.line = ProgressLine(stream, label)
        self._last_line: tuple[Any, ...] | None = None

    def update(self, job: dict[str, Any]) -> None:
        """Show ``job`` (a dict as :meth:`TbftdClient.job` returns it)."""
        progress = job.get("progress") or {}
        text = f"job {job['id']} {job.get('block') or ''} {job['state']}"
        if job["state"] == "running":
            text += f": {describe_progress(progress)}"
        if not self.line.tty:
            # A line at each state change and validated epoch: enough for a log, not one a poll.
            phase = progress.get("phase")
            key = (job["state"], phase == "prepare", progress.get("epoch") if phase == "validate" else None)
            if key == self._last_line:
                return
            self._last_line = key
        self.line.draw(text, _progress_fraction(job["state"], progress))

    def finish(self) -> None:
        """End the bar's line."""
        self.line.finish()


def describe_progress(progress: dict[str, Any] | None) -> str:
    """``epoch 3/10, loss 0.412, 310 samples/s`` from a job's progress dict."""
    if not progress:
        return "starting"
    if progress.get("phase") == "prepare":
        return "evaluating the current model"
    parts = [f"epoch {progress.get('epoch')}/{progress.get('epochs')}"]
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.3f}")
    if progress.get("val_accuracy") is not None:
        parts.append(f"val acc {100 * progress['val_accuracy']:.1f}%")
    if progress.get("samples_per_second"):
        parts.append(f"{progress['samples_per_second']:.0f} samples/s")
    return ", ".join(parts)


def job_outcome(job: dict[str, Any]) -> str:
    """What a job came to: ``decision.outcome`` (promoted, kept the model, nothing to adapt), else
    its state's word."""
    outcome = (job.get("decision") or {}).get("outcome")
    if outcome:
        return str(outcome)
    return {"succeeded": "done", "queued": "-", "running": "-"}.get(job["state"], job["state"])


def describe_outcome(job: dict[str, Any]) -> str:
    """One line on a finished job: state, block, accuracy, seconds, joules and their source."""
    text = f"job {job['id']} {job['state']}: {job.get('block') or '-'} on {job['context']}"
    if job.get("accuracy_before") is not None and job.get("accuracy_after") is not None:
        text += f", validation accuracy {_accuracy_change(job['accuracy_before'], job['accuracy_after'])}%"
    decision = job.get("decision") or {}
    if decision.get("outcome") == "nothing to adapt":
        text += ", nothing to adapt (no drift detected)"
    elif decision:
        text += f", {'promoted to' if decision.get('promoted') else 'not promoted:'} version {decision.get('version')}"
    energy = job.get("energy")
    if energy:
        text += f", {energy['seconds']:.1f} s, {energy['joules']:.1f} J ({energy['source']})"
    if job.get("error"):
        text += f" ({job['error']})"
    return text


def time_bound(text: str) -> float:
    """Epoch seconds from epoch seconds, ISO 8601 with a zone, or a time ago (``1h``, ``2d``).

    An argparse ``type``: raises ArgumentTypeError with a readable message.
    """
    relative = RELATIVE_TIME.match(text)
    if relative:
        return time.time() - float(relative.group(1)) * SECONDS_PER_UNIT[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected epoch seconds, ISO 8601 with a time zone or a time ago like 1h or 2d, got {text!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone: {text}Z or {text}+00:00")
    return parsed.timestamp()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[int] = (),
                stream: TextIO | None = None, rule_before_last: bool = False) -> None:
    """Columns aligned under ``headers``; the ``numeric`` columns right-aligned."""
    out = stream or sys.stdout
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).rjust(w) if i in numeric else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    print(line(headers), file=out)
    print(rule, file=out)
    for index, row in enumerate(rows):
        if rule_before_last and index == len(rows) - 1:
            print(rule, file=out)
        print(line(row), file=out)


def format_time(epoch_seconds: float | None) -> str:
    """Local time, to the second (``2024-05-01 14:03:07``), or ``-``."""
    if epoch_seconds is None:
        return "-"
    return datetime.fromtimestamp(epoch_seconds).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float) -> str:
    """``3 h 12 min``, ``4 min 7 s`` or ``12.3 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def format_bytes(count: float) -> str:
    """``12.0 MiB`` style."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def daemon_url(explicit: str | None) -> str:
    """``--url``, else ``$TBFTD_URL``, else the default."""
    return explicit or os.environ.get(URL_VARIABLE) or DEFAULT_URL


def _client(args: argparse.Namespace, retries: int = 0) -> TbftdClient:
    # One-shot commands do not retry: an operator wants "no daemon" at once, not after backoff.
    return TbftdClient(daemon_url(args.url), retries=retries, backoff_seconds=0.5, timeout_seconds=30.0)


def _call(client: TbftdClient, request: Callable[[], Any]) -> Any:
    """Run a client call; turn the client's errors into one-line CLI errors."""
    try:
        return request()
    except DaemonUnreachable as exc:
        raise CLIError(f"no daemon at {exc.url}: {exc.reason} (start one with `tbftd serve`, or give --url)") from None
    except ResponseError as exc:
        raise CLIError(f"the daemon at {client.url} answered {exc.status}: {exc.message}") from None
    except TbftdError as exc:
        raise CLIError(str(exc)) from None


def _print_json(value: Any) -> int:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _progress_fraction(state: str, progress: dict[str, Any]) -> float:
    if state in ("succeeded", "failed", "cancelled", "interrupted"):
        return 1.0 if state == "succeeded" else 0.0
    epochs, batches = progress.get("epochs") or 0, progress.get("batches") or 0
    if not epochs or not batches or progress.get("phase") == "prepare":
        return 0.0
    done = (progress.get("epoch", 1) - 1) * batches + progress.get("batch", 0)
    return max(0.0, min(1.0, done / (epochs * batches)))


def _accuracy_change(before: float | None, after: float | None) -> str:
    if before is None and after is None:
        return "-"
    return f"{_number(None if before is None else 100 * before, 1)} → {_number(None if after is None else 100 * after, 1)}"


def _version_change(job: dict[str, Any]) -> str:
    if job.get("model_version_in") is None:
        return "-"
    out = job.get("model_version_out")
    decision = job.get("decision") or {}
    if out is None:
        return f"{job['model_version_in']}"
    return f"{job['model_version_in']} → {out}" + ("" if decision.get("promoted", True) else " (kept)")


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _integer(value: int | None) -> str:
    return "-" if value is None else str(value)
