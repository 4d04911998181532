"""The `spendgate` command: serve, check-config, hash-key, keys new, webhook test, demo, reconcile."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pricing.catalog import Catalog
from proxy.demo.command import add_arguments as add_demo_arguments  # stdlib only: the SDK loads on `demo`
from proxy.settings import ConfigError, Settings

DEFAULT_CONFIG = "config.yaml"


def _config_path(arg: str | None) -> Path:
    return Path(arg or os.environ.get("SPENDGATE_CONFIG") or DEFAULT_CONFIG)


def _load_or_report(path: Path) -> tuple[Settings, Catalog] | None:
    """Settings and catalog, or None after printing every config problem (one per line) on stderr."""
    from proxy.app import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    loaded = _load_or_report(path)
    if loaded is None:
        return 1
    settings, _ = loaded
    print(f"{path}: ok ({len(settings.models)} models, {len(settings.keys)} keys)")
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    from proxy.auth import hash_key

    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    print(hash_key(key))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    from proxy.auth import hash_key, new_key

    key = new_key()
    print(f"key:        {key}\nkey_sha256: {hash_key(key)}")
    print("Put only key_sha256 in config.yaml; hand the key to its user. It is not stored anywhere.",
          file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy import logs
    from proxy.app import create_app
    from proxy.server import serve

    path = _config_path(args.config)
    loaded = _load_or_report(path)
    if loaded is None:
        return 1
    settings, catalog = loaded
    secrets = [m.api_key.get_secret_value() for m in settings.models if m.api_key is not None]
    logs.configure(settings.server.log_level, secrets)
    app = create_app(settings, catalog=catalog, config_path=path)  # the catalog is built once
    # SIGTERM drains: new calls get 503 while those in flight finish and are recorded (proxy/server.py).
    return serve(app, host=args.host or settings.server.host, port=args.port or settings.server.port,
                 max_header_bytes=settings.server.max_header_bytes, drain_timeout_s=settings.server.drain_timeout_s,
                 drain_delay_s=settings.server.drain_delay_s)


def cmd_webhook_test(args: argparse.Namespace) -> int:
    import asyncio

    from proxy.webhooks import send_test

    loaded = _load_or_report(_config_path(args.config))
    if loaded is None:
        return 1
    settings, _ = loaded
    if args.name not in {w.name for w in settings.webhooks}:
        print(f"no webhook named {args.name!r} in the config", file=sys.stderr)
        return 1
    status, error = asyncio.run(send_test(settings.webhooks, args.name))
    print(f"{args.name}: HTTP {status}" if error is None else f"{args.name}: failed: {error}")
    return 0 if error is None else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo.command import run

    return run(args, _config_path(args.config), sys.stdout, sys.stderr)


def cmd_reconcile(args: argparse.Namespace) -> int:
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from policies.errors import LedgerUnavailable
    from proxy.reconcile import format_report, reconcile_settings

    loaded = _load_or_report(_config_path(args.config))
    if loaded is None:
        return 1
    settings, _ = loaded
    try:
        report = asyncio.run(reconcile_settings(settings, dry_run=args.dry_run, lag_s=args.lag_s))
    except LedgerUnavailable as exc:  # its message never carries the URL's password
        print(f"reconcile: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:  # the driver's text may name the server: the class is enough
        print(f"reconcile: the store {settings.store.redacted_url} is unreachable ({type(exc).__name__})",
              file=sys.stderr)
        return 1
    print("\n".join(format_report(report)))
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendgate", description="LLM proxy with metering and budgets")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="config file (default: $SPENDGATE_CONFIG or ./config.yaml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate the config file and exit")
    check.add_argument("--config")
    check.set_defaults(func=cmd_check_config)
    hk = sub.add_parser("hash-key", help="print the sha256 of a virtual key for config.yaml")
    hk.add_argument("key", help="the key, or - to read it from standard input")
    hk.set_defaults(func=cmd_hash_key)
    keys = sub.add_parser("keys", help="virtual key tools")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    kn = keys_sub.add_parser("new", help="generate a high-entropy key and its hash")
    kn.set_defaults(func=cmd_keys_new)
    wh = sub.add_parser("webhook", help="webhook tools")
    wh_sub = wh.add_subparsers(dest="webhook_command", required=True)
    wt = wh_sub.add_parser("test", help="send one signed sample budget.threshold event to webhook NAME")
    wt.add_argument("name")
    wt.add_argument("--config")
    wt.set_defaults(func=cmd_webhook_test)
    demo = sub.add_parser("demo", help="drive a simulated software factory through the running proxy "
                                       "(or --backfill Nd: write its history into the store)")
    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    rec = sub.add_parser("reconcile", help="compare the Redis ledger's budget counters with the store and "
                                           "repair the drift (safe to run from several replicas at once)")
    rec.add_argument("--config")
    rec.add_argument("--dry-run", action="store_true", help="report the drift, write nothing")
    rec.add_argument("--lag-s", type=float,
                     help="read a counter only once its last settle is this old, so every replica's writer has put "
                          "the settled calls in SQL (default: 2, or 2 x store.flush_interval_ms + 1 s if longer)")
    rec.set_defaults(func=cmd_reconcile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
