"""Add stock to catalog items: `available` grows by the given units; reserved and sold are never touched.

  python scripts/restock.py --table <InventoryTableName> SKU=UNITS [SKU=UNITS ...]
  python scripts/restock.py --stack-outputs outputs.json MUG-BLUE=50

A sku that is not in the catalog is refused (add it with scripts/seed_catalog.py). Safe while orders are
live: the write is a conditional increment, unlike rewriting the item, which would reset the counts of
reserved and sold units.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import boto3  # noqa: E402

from order_saga.errors import UnknownItem  # noqa: E402
from order_saga.inventory import Inventory  # noqa: E402
from order_saga.store import Store  # noqa: E402


def parse(pairs: list[str]) -> list[tuple[str, int]]:
    out = []
    for pair in pairs:
        sku, sep, units = pair.partition("=")
        if not sep or not sku or not units.isdigit() or int(units) <= 0:
            raise ValueError(f"{pair!r}: give SKU=UNITS with a positive whole number of units")
        out.append((sku, int(units)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--table", help="the stack's InventoryTableName output")
    where.add_argument("--stack-outputs", type=Path, help="a JSON file of the stack's Outputs")
    parser.add_argument("units", nargs="+", metavar="SKU=UNITS")
    args = parser.parse_args()
    try:
        wanted = parse(args.units)
        table = args.table or json.loads(args.stack_outputs.read_text())["InventoryTableName"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    inventory = Inventory(Store(boto3.client("dynamodb")), table)
    status = 0
    for sku, units in wanted:
        try:
            item = inventory.restock(sku, units)
        except UnknownItem as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{sku}: +{units}, now available {item['available']} (reserved {item['reserved']}, sold {item['sold']})")
    return status


if __name__ == "__main__":
    sys.exit(main())
