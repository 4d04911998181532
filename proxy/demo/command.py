"""The `spendgate demo` command: its options, and what it prints (stdout: the summary; stderr: progress and
problems). Either drives the running proxy, or with `--backfill Nd` writes history into a config's store."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

DEFAULT_URL = "http://127.0.0.1:4000"
DEMO_KEY = "sk-spendgate-demo"  # config.yaml's published demo key
MAX_BACKFILL_DAYS = 730
DEFAULT_SEED = 15  # a plan with all four projects, a couple of reworks, retries, research after the spike
HEAVY_MODEL, LIGHT_MODEL = "mock-claude", "mock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", help=f"spendgate's base URL (default: $SPENDGATE_URL or {DEFAULT_URL})")
    add("--key", help=f"the key the agents use (default: $SPENDGATE_KEY or {DEMO_KEY})")
    add("--minutes", type=_positive, default=1.0, metavar="N",
        help="spread the work over N minutes, so the dashboard moves live (default 1)")
    add("--fast", action="store_true", help="as fast as possible instead of over --minutes")
    add("--seed", type=int, default=DEFAULT_SEED, metavar="N",
        help=f"the same seed plays the same factory (default {DEFAULT_SEED})")
    add("--issues", type=_bounded(3, 500), default=12, metavar="N", help="issues to work (3-500, default 12)")
    add("--agents", type=_bounded(1, 32), default=4, metavar="N", help="agents working at once (default 4)")
    add("--model", metavar="NAME", help=f"use this model for every call (default: {HEAVY_MODEL} for research, "
                                        f"implementation and security; {LIGHT_MODEL} for the others)")
    add("--json", action="store_true", help="print the summary as JSON")
    add("--backfill", type=parse_days, metavar="Nd",
        help="write N days of history (e.g. 90d) straight into the store of --config instead; no running "
             "proxy needed")
    add("--config", metavar="PATH",
        help="with --backfill: the config whose store to write (default: $SPENDGATE_CONFIG or ./config.yaml)")
    add("--org", default="demo", help="with --backfill: the org the history belongs to (default demo)")


def run(args: argparse.Namespace, config_path: Path, out: TextIO, err: TextIO) -> int:
    # Imported here: building the CLI parser must not cost every other command the openai SDK's import.
    from proxy.demo.driver import Demo, DemoError, DemoOptions
    from proxy.demo.summary import as_json, as_text

    heavy, light = (args.model, args.model) if args.model else (HEAVY_MODEL, LIGHT_MODEL)
    if args.backfill:
        return _backfill(args, config_path, heavy, light, out, err)
    options = DemoOptions(
        url=(args.url or os.environ.get("SPENDGATE_URL") or DEFAULT_URL).rstrip("/"),
        key=args.key or os.environ.get("SPENDGATE_KEY") or DEMO_KEY,
        minutes=args.minutes, fast=args.fast, seed=args.seed, issues=args.issues, agents=args.agents,
        heavy_model=heavy, light_model=light)
    try:
        result = Demo(options, err).run()
    except DemoError as exc:
        print(f"spendgate demo: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(as_json(result), indent=2) if args.json else as_text(result), file=out)
    for crash in result.crashes:
        print("spendgate demo: an issue's worker failed:\n" + "".join(traceback.format_exception(crash)), file=err)
    return 1 if result.crashes else 130 if result.interrupted else 0


def _backfill(args: argparse.Namespace, config_path: Path, heavy: str, light: str, out: TextIO,
              err: TextIO) -> int:
    from proxy.app import load_config
    from proxy.demo.backfill import BackfillError, backfill
    from proxy.settings import ConfigError

    try:
        settings, catalog = load_config(config_path)
        report = asyncio.run(backfill(settings, catalog, days=args.backfill, org=args.org, seed=args.seed,
                                      heavy=heavy, light=light))
    except ConfigError as exc:
        print("\n".join(exc.lines), file=err)
        return 1
    except BackfillError as exc:
        print(f"spendgate demo --backfill: {exc}", file=err)
        return 1
    print(json.dumps(report.as_json(), indent=2) if args.json else report.as_text(), file=out)
    return 0


def parse_days(raw: str) -> int:
    """`90d` or `90` -> 90 (the type of --backfill)."""
    match = re.fullmatch(r"(\d{1,4})d?", raw.strip().lower())
    if not match or not 1 <= int(match.group(1)) <= MAX_BACKFILL_DAYS:
        raise argparse.ArgumentTypeError(
            f"expected a number of days such as 90d (1 to {MAX_BACKFILL_DAYS}), got {raw!r}")
    return int(match.group(1))


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {raw})")
    return value


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high} (got {raw})")
        return value
    return parse
