"""Load a catalog file into a deployed stack's inventory table (the InventoryTableName output).

  python scripts/seed_catalog.py --table <InventoryTableName> events/catalog.json

Each item sets price and stock outright (available, reserved = sold = 0): run it on an
empty table, or to restock before any order is placed. AWS credentials and region come
from the usual boto3 environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL for LocalStack).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import boto3  # noqa: E402

from order_saga.inventory import Inventory  # noqa: E402

REQUIRED = {"sku": str, "name": str, "price": int, "currency": str, "available": int}


def validate(items: object) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise ValueError("the catalog must be a non-empty JSON list")
    for n, item in enumerate(items):
        for key, kind in REQUIRED.items():
            if not isinstance(item, dict) or not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                raise ValueError(f"item {n}: {key!r} must be a {kind.__name__}")
        if item["price"] < 0 or item["available"] < 0:
            raise ValueError(f"item {n} ({item['sku']}): price and available must be >= 0")
    return items  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="the stack's InventoryTableName output")
    parser.add_argument("catalog", type=Path)
    args = parser.parse_args()
    try:
        items = validate(json.loads(args.catalog.read_text()))
    except (OSError, ValueError) as exc:
        print(f"error: {args.catalog}: {exc}", file=sys.stderr)
        return 2
    inventory = Inventory(boto3.client("dynamodb"), args.table)
    for item in items:
        inventory.put_item(item["sku"], item["name"], item["price"], item["currency"], item["available"])
    print(f"{len(items)} catalog items written to {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
