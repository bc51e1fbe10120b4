"""Load a catalog file into a stack's inventory table (the InventoryTableName output), and coupons into its
promotions table (PromotionsTableName).

  python scripts/seed_catalog.py --table <InventoryTableName> events/catalog.json
  python scripts/seed_catalog.py --stack-outputs outputs.json events/catalog.json [--promotions events/promotions.json]

The second form reads the table from a JSON file of the stack's Outputs (SAGA_STACK_OUTPUTS when run as
`sagalocal up --init`).
Each item (each coupon) is added only if its sku (code) is not there yet: seeding twice changes nothing, and never
resets the reserved and sold counts of live orders (scripts/restock.py adds stock). AWS credentials and
region come from the usual boto3 environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL for LocalStack).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import boto3  # noqa: E402

from order_saga.inventory import Inventory  # noqa: E402
from order_saga.promotions import Promotions  # noqa: E402
from order_saga.store import Store  # noqa: E402

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


def seed(client: object, table: str, catalog: Path) -> tuple[int, int]:
    """Add the catalog file's items that are not in the table yet: (added, already there)."""
    items = validate(json.loads(catalog.read_text()))
    inventory = Inventory(Store(client), table)
    added = sum(inventory.add_item(item["sku"], item["name"], item["price"], item["currency"], item["available"])
                for item in items)
    return added, len(items) - added


def iso_ms(value: str) -> int:
    import datetime

    return int(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def seed_promotions(client: object, table: str, path: Path) -> tuple[int, int]:
    """Add the coupons of a promotions file that are not in the table yet: (added, already there)."""
    coupons = json.loads(path.read_text())
    if not isinstance(coupons, list):
        raise ValueError("the promotions file must be a JSON list of coupons")
    promotions = Promotions(Store(client), table)
    added = 0
    for n, c in enumerate(coupons):
        try:
            added += promotions.add_coupon(c["code"], c["kind"], c["value"], iso_ms(c["valid_from"]),
                                           iso_ms(c["valid_until"]), c["max_redemptions"], c["per_customer"],
                                           c.get("currency"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"coupon {n}: {exc}") from exc
    return added, len(coupons) - added


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--table", help="the stack's InventoryTableName output")
    where.add_argument("--stack-outputs", type=Path, help="a JSON file of the stack's Outputs")
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--promotions", type=Path, help="coupons to add (events/promotions.json)")
    args = parser.parse_args()
    try:
        validate(json.loads(args.catalog.read_text()))
    except (OSError, ValueError) as exc:
        print(f"error: {args.catalog}: {exc}", file=sys.stderr)
        return 2
    table, promotions_table = args.table, None
    if args.stack_outputs is not None:
        try:
            outputs = json.loads(args.stack_outputs.read_text())
            table, promotions_table = outputs["InventoryTableName"], outputs.get("PromotionsTableName")
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: {args.stack_outputs}: no InventoryTableName output ({exc})", file=sys.stderr)
            return 2
    client = boto3.client("dynamodb")
    added, present = seed(client, table, args.catalog)
    print(f"{added} catalog items added to {table}"
          + (f"; {present} already there (add stock with scripts/restock.py)" if present else ""))
    if args.promotions is not None:
        if not promotions_table:
            print("error: --promotions needs --stack-outputs with a PromotionsTableName output", file=sys.stderr)
            return 2
        try:
            added, present = seed_promotions(client, promotions_table, args.promotions)
        except (OSError, ValueError) as exc:
            print(f"error: {args.promotions}: {exc}", file=sys.stderr)
            return 2
        print(f"{added} coupons added to {promotions_table}" + (f"; {present} already there" if present else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
