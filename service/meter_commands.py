"""``tbftd meter probe|watch|emulate``: find, read and emulate USB power meters."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from energy.discovery import (
    CANDIDATE_PATTERNS,
    KINDS,
    candidate_ports,
    make_meter,
    probe_port,
    select_meter,
)
from energy.emulator import Emulator
from energy.estimator import Estimator
from energy.line_meter import LineFormat
from energy.meter import Meter, MeterDisconnected, MeterError, MeterSample, MeterTimeout
from energy.profiles import ConstantProfile, Profile, parse_profile
from energy.um import MODELS


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``meter`` command group."""
    meter = subparsers.add_parser(
        "meter",
        help="USB power meters: probe, watch, emulate",
        description="Find, read and emulate the USB power meter that measures each job's energy.",
    )
    meter.set_defaults(func=_print_help(meter))
    commands = meter.add_subparsers(dest="meter_command", metavar="COMMAND")

    probe = commands.add_parser(
        "probe",
        help="list serial ports and the meter that answers on each",
        description="Probe serial ports (by default "
        + ", ".join(CANDIDATE_PATTERNS)
        + ") for a UM24C/UM25C/UM34C or a line meter.",
    )
    probe.add_argument("--port", action="append", help="probe this port (repeatable) instead")
    probe.add_argument("--timeout", type=float, default=1.0, help="seconds to wait per port")
    _add_line_options(probe)
    probe.set_defaults(func=probe_command)

    watch = commands.add_parser(
        "watch",
        help="print live volts, amps, watts and energy",
        description="Read a meter at its rate and print each reading, with the energy so far.",
    )
    watch.add_argument("--port", help="the meter's port (default: probe the usual ports)")
    watch.add_argument("--kind", choices=KINDS, help="the meter's kind (default: probe)")
    watch.add_argument("--count", type=int, help="stop after this many readings")
    _add_line_options(watch)
    watch.set_defaults(func=watch_command)

    emulate = commands.add_parser(
        "emulate",
        help="run an emulated UM meter on a pseudo-terminal and print its port",
        description="Run an emulated RDTech meter on a pseudo-terminal until Ctrl+C. "
        "The first line printed is the port to open.",
    )
    emulate.add_argument(
        "--model", choices=[m.lower() for m in MODELS], default="um25c", help="model to emulate"
    )
    power = emulate.add_mutually_exclusive_group()
    power.add_argument("--watts", type=float, help="constant power in watts (default 5)")
    power.add_argument(
        "--profile",
        help="WATTS, constant:W, steps:W@S,..., cycle:W@S,... or cpu[:IDLE,PER_LOAD]",
    )
    emulate.add_argument("--volts", type=float, default=5.1, help="bus voltage shown (default 5.1)")
    emulate.add_argument("--link", help="path of the symlink to the pty (default: a temporary one)")
    emulate.add_argument("--seconds", type=float, help="stop after this many seconds")
    emulate.set_defaults(func=emulate_command)


def _print_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _add_line_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--line-columns",
        help="line meter columns, e.g. volts,amps,watts or millivolts,milliamps (skip to ignore one)",
    )
    parser.add_argument("--line-separator", default=",", help="line meter field separator")
    parser.add_argument("--line-keys", help="keys of key=value fields, one per column, e.g. V,I")
    parser.add_argument("--baud", type=int, help="baud rate (default: 9600 UM, 115200 line)")


def _line_format(args: argparse.Namespace) -> LineFormat | None:
    from service.cli import CLIError

    if not args.line_columns:
        if args.line_keys:
            raise CLIError("--line-keys needs --line-columns")
        return None
    try:
        return LineFormat.from_options(args.line_columns, args.line_separator, args.line_keys)
    except ValueError as exc:
        raise CLIError(f"bad line format: {exc}") from None


def probe_command(args: argparse.Namespace) -> int:
    """Probe ports and print what answered; exit status 1 if no meter did."""
    line_format = _line_format(args)
    ports = args.port or candidate_ports()
    if not ports:
        print(f"no serial ports found (looked for {', '.join(CANDIDATE_PATTERNS)})")
    found = False
    for port in ports:
        result = probe_port(
            port,
            line_format=line_format,
            baudrate=args.baud,
            timeout_seconds=args.timeout,
        )
        if result.info is None:
            print(f"{port}: {result.error}")
            continue
        found = True
        info = result.info
        print(f"{port}: {info.kind} {info.model} ({info.detail})")
    if not found:
        fallback = Estimator().describe()
        print(f"without a meter, energy is estimated: {fallback.source}, {fallback.detail}")
    return 0 if found else 1


def _format_sample(sample: MeterSample, elapsed_seconds: float, joules: float) -> str:
    volts = f"{sample.volts:7.3f} V" if sample.volts is not None else "      - V"
    amps = f"{sample.amps:7.4f} A" if sample.amps is not None else "      - A"
    line = f"{elapsed_seconds:7.1f} s  {volts}  {amps}  {sample.watts:7.3f} W  {joules:9.2f} J"
    if sample.counter_milliwatt_hours is not None:
        line += f"  counter {sample.counter_milliwatt_hours} mWh (group {sample.counter_group})"
    return line


def watch_command(args: argparse.Namespace) -> int:
    """Print readings at the meter's rate, with the energy integrated since the first."""
    from service.cli import CLIError

    if args.count is not None and args.count < 1:
        raise CLIError("--count must be at least 1")
    if args.kind in ("line",) and not args.line_columns:
        raise CLIError("a line meter needs --line-columns")
    line_format = _line_format(args)
    meter: Meter
    try:
        if args.port is not None and args.kind is None:
            # Probe here rather than in select_meter, to say why nothing answered.
            result = probe_port(args.port, line_format=line_format, baudrate=args.baud)
            if result.info is None:
                raise CLIError(f"{args.port}: {result.error}")
            if result.info.kind == "line" and line_format is None:
                raise CLIError(f"{args.port}: {result.info.detail} (--line-columns)")
            kind = result.info.model.lower() if result.info.kind == "um" else "line"
            meter = make_meter(kind, args.port, line_format=line_format, baudrate=args.baud)
        else:
            meter = select_meter(args.port, args.kind, line_format=line_format, baudrate=args.baud)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        meter.open()
    except MeterError as exc:
        raise CLIError(str(exc)) from None
    try:
        info = meter.describe()
        print(f"{info.source}: {info.detail}, {info.rate_hz:g} Hz")
        sys.stdout.flush()
        interval = 1 / info.rate_hz
        clock = meter.clock
        first: MeterSample | None = None
        previous: MeterSample | None = None
        joules = 0.0
        printed = 0
        due = clock.now()
        while args.count is None or printed < args.count:
            try:
                sample = meter.read()
            except MeterTimeout as exc:
                print(f"(no reading: {exc})")
            except MeterDisconnected as exc:
                raise CLIError(f"meter disconnected: {exc}") from None
            else:
                if first is None:
                    first = sample
                if previous is not None:
                    joules += (previous.watts + sample.watts) / 2 * (sample.seconds - previous.seconds)
                previous = sample
                print(_format_sample(sample, sample.seconds - first.seconds, joules))
                sys.stdout.flush()
                printed += 1
                if printed == args.count:
                    break
            due += interval
            clock.sleep(due - clock.now())
    finally:
        meter.close()
    return 0


def emulate_command(args: argparse.Namespace) -> int:
    """Run an emulator until Ctrl+C (or ``--seconds``); the first line printed is its port."""
    from service.cli import CLIError

    profile: Profile
    if args.profile is not None:
        try:
            profile = parse_profile(args.profile)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    else:
        watts = 5.0 if args.watts is None else args.watts
        if watts < 0:
            raise CLIError(f"--watts must not be negative, got {watts}")
        profile = ConstantProfile(watts)
    if args.volts <= 0:
        raise CLIError(f"--volts must be positive, got {args.volts}")
    emulator = Emulator(args.model, profile, volts=args.volts, link_path=args.link)
    try:
        port = emulator.start()
    except OSError as exc:
        raise CLIError(f"cannot start the emulator: {exc}") from None
    try:
        print(port)
        print(
            f"{emulator.model.name} emulator ({profile.describe()}) on {port} -> "
            f"{emulator.pty_path}; Ctrl+C to stop",
            file=sys.stderr,
        )
        sys.stdout.flush()
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass  # Ctrl+C is how this command is meant to end
    finally:
        emulator.stop()
    return 0
