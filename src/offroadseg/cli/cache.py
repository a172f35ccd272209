"""``offroadseg cache``: list the stores in the cache folder and prune the ones no longer used."""

from __future__ import annotations

import argparse
import time

from offroadseg.cli.common import write_json
from offroadseg.errors import ConfigError


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _root(args: argparse.Namespace):
    from offroadseg.data.cache import cache_root

    return cache_root(args.dir)


def _row(s) -> str:
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.last_used))
    what = s.problem or s.detail
    samples = f"{s.samples} frames" if s.samples is not None else "?"
    return f"  {s.kind:<8} {s.path.name:<32} {_gib(s.bytes):>10}  used {used}  {samples:<12} {what}"


def cmd_list(args: argparse.Namespace) -> int:
    from offroadseg.data.cache_admin import list_stores

    root = _root(args)
    stores = list_stores(root)
    total = sum(s.bytes for s in stores)
    print(f"cache {root}: {len(stores)} store(s), {_gib(total)} (least recently used first)")
    for s in stores:
        print(_row(s))
    if stores:
        print(
            "  remove what you no longer use: offroadseg cache prune --older-than DAYS | --max-gb N | --all"
        )
    write_json(args.json, {"root": str(root), "bytes": total, "stores": [s.as_dict() for s in stores]})
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from offroadseg.data.cache_admin import prune_stores

    if args.older_than is None and args.max_gb is None and not args.all:
        raise ConfigError(
            "offroadseg cache prune: say what to remove; fix: add --older-than DAYS (not used for DAYS days), "
            "--max-gb N (least recently used first, until N GiB are left) or --all"
        )
    for flag, value in (("--older-than", args.older_than), ("--max-gb", args.max_gb)):
        if value is not None and value < 0:
            raise ConfigError(f"offroadseg cache prune: {flag} {value} is negative; fix: give a number >= 0")
    root = _root(args)
    result = prune_stores(
        root,
        older_than_days=args.older_than,
        max_bytes=None if args.max_gb is None else int(args.max_gb * 2**30),
        remove_all=args.all,
        dry_run=args.dry_run,
    )
    verb = "would remove" if args.dry_run else "removed"
    for s in result.removed:
        print(f"{verb}:{_row(s)[1:]}")
    extra = f" (+{_gib(result.leftover_bytes)} of partial builds)" if result.leftover_bytes else ""
    kept = sum(s.bytes for s in result.kept)
    print(
        f"cache {root}: {verb} {len(result.removed)} store(s), {_gib(result.freed_bytes)}{extra}; "
        f"kept {len(result.kept)}, {_gib(kept)}"
    )
    write_json(
        args.json,
        {
            "root": str(root),
            "dry_run": args.dry_run,
            "removed": [s.as_dict() for s in result.removed],
            "kept": [s.as_dict() for s in result.kept],
            "freed_bytes": result.freed_bytes,
        },
    )
    return 0


def register(sub) -> None:
    c = sub.add_parser(
        "cache", help="list the cached stores (decoded data, backbone features) and prune them"
    )
    csub = c.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    dir_help = (
        "cache folder (default: $OFFROADSEG_CACHE_DIR or the user cache dir; a config's data.cache.dir)"
    )
    ls = csub.add_parser("list", help="every store with its size, frames and last use")
    ls.add_argument("--dir", help=dir_help)
    ls.add_argument("--json", help="also write the list as JSON")
    ls.set_defaults(func=cmd_list)
    pr = csub.add_parser("prune", help="remove stores, least recently used first")
    pr.add_argument("--dir", help=dir_help)
    pr.add_argument("--older-than", type=float, metavar="DAYS", help="remove stores not used for DAYS days")
    pr.add_argument(
        "--max-gb", type=float, metavar="N", help="remove the least recently used until N GiB are left"
    )
    pr.add_argument("--all", action="store_true", help="remove every store")
    pr.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    pr.add_argument("--json", help="also write what was removed and kept as JSON")
    pr.set_defaults(func=cmd_prune)
