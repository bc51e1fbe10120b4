"""The promotions service: coupons, and the redemptions that hold them for an order.

  pk = COUPON#<code>  sk = COUPON             the coupon: kind (percent | amount), value, currency (amount
                                              coupons), valid_from, valid_until (epoch ms), max_redemptions,
                                              per_customer, redeemed (held + committed redemptions)
  pk = COUPON#<code>  sk = CUSTOMER#<sub>     how many of the coupon's redemptions a customer holds (`used`)
  pk = COUPON#<code>  sk = ORDER#<order id>   the order's redemption: HELD | COMMITTED | RELEASED | SKIPPED

The API prices the discount (the client never does). ApplyCoupon holds a redemption in one transaction with
both counters, each conditional on its limit, so no interleaving of orders can exceed either limit:
DynamoDB serializes the conditions on the coupon item and on the customer's item. ConfirmOrder commits the
redemption; ReleaseCoupon gives it back (both counters down). A release before any hold leaves a RELEASED
tombstone, so a late ApplyCoupon cannot hold afterwards.

The coupon failure policy (the template's CouponFailurePolicy, CouponPolicy below): `fail` (the default) raises a
refusal (CouponInvalid, CouponExpired, CouponExhausted) and the saga compensates; `continue` lets the order go on
at its original amount. ApplyCoupon then writes a SKIPPED redemption, holding no count, in the same transaction
as the order's new amounts: it is the record that the coupon was not applied, and like a tombstone it blocks any
later hold for the order (a retry, a late attempt): the first of the hold and the skip to land decides. A release
finds nothing to give back in it.

Retention (`purge_at`, the table's TTL attribute, epoch seconds): a RELEASED redemption (a release, or a
tombstone) or a SKIPPED one is kept for Timing.tombstone_ms from the write that releases (or skips) it (it holds
no count);
a COMMITTED one for the order retention from the write that completes its order (never before: a capture the
processor refuses after the pivot still releases it). A HELD redemption, the coupon and the customers' counts
never expire (the counts are what the per-customer limit reads).
"""

from __future__ import annotations

import os
import time
from typing import Any

from order_saga.config import Timing, retention_ms_from_env
from order_saga.dynamo import to_ddb, values
from order_saga.errors import CouponExhausted, CouponExpired, CouponInvalid
from order_saga.store import Items, Store

HELD, COMMITTED, RELEASED, SKIPPED = "HELD", "COMMITTED", "RELEASED", "SKIPPED"
PERCENT, AMOUNT = "percent", "amount"
FAIL, CONTINUE = "fail", "continue"
REFUSALS = (CouponInvalid, CouponExpired, CouponExhausted)  # a coupon refused for a business reason


# What the order records of its coupon (`coupon_outcome`), once ApplyCoupon decided.
APPLIED, NOT_APPLIED = "APPLIED", "NOT_APPLIED"


def held_coupon(order: dict[str, Any]) -> str | None:
    """The coupon whose redemption the order holds or may hold: its code, unless ApplyCoupon recorded that it went
    on without it (then its redemption is SKIPPED: nothing to commit, retire or give back)."""
    return None if order.get("coupon_outcome") == NOT_APPLIED else order.get("coupon")


def coupon_policy_from_env() -> str:
    """COUPON_FAILURE_POLICY (the template's CouponFailurePolicy): `fail` or `continue`; anything else (or nothing)
    fails at cold start."""
    policy = os.environ["COUPON_FAILURE_POLICY"]
    if policy not in (FAIL, CONTINUE):
        raise ValueError(f"COUPON_FAILURE_POLICY is {policy!r}: it is {FAIL!r} or {CONTINUE!r}")
    return policy


def _iso(ms: Any) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))


def coupon_key(code: str) -> dict[str, Any]:
    return to_ddb({"pk": f"COUPON#{code}", "sk": "COUPON"})


def redemption_key(code: str, order_id: str) -> dict[str, Any]:
    return to_ddb({"pk": f"COUPON#{code}", "sk": f"ORDER#{order_id}"})


def customer_key(code: str, customer: str) -> dict[str, Any]:
    return to_ddb({"pk": f"COUPON#{code}", "sk": f"CUSTOMER#{customer}"})


class Promotions:
    def __init__(self, store: Store, table: str, timing: Timing | None = None) -> None:
        self.store = store
        self.table = table
        self.timing = timing or Timing(lease_ms=0, deadline_ms=0, reservation_ttl_ms=0,
                                       retention_ms=retention_ms_from_env())

    # ---- the catalog of coupons (operators, seeding) ------------------------------------------------------
    def add_coupon(self, code: str, kind: str, value: int, valid_from: int, valid_until: int,
                   max_redemptions: int, per_customer: int, currency: str | None = None) -> bool:
        """Add a coupon; False if the code exists (a coupon is never overwritten: its count would reset)."""
        if kind not in (PERCENT, AMOUNT) or value < 1 or (kind == PERCENT and value > 99):
            raise ValueError("a coupon is 1-99 percent off, or an amount (minor units) off")
        if kind == AMOUNT and not currency:
            raise ValueError("an amount coupon names its currency")
        if valid_until <= valid_from or max_redemptions < 1 or per_customer < 1:
            raise ValueError("a coupon needs a validity window and limits of at least 1")
        item = {"pk": f"COUPON#{code}", "sk": "COUPON", "code": code, "kind": kind, "value": value,
                "currency": currency, "valid_from": valid_from, "valid_until": valid_until,
                "max_redemptions": max_redemptions, "per_customer": per_customer, "redeemed": 0}
        return self.store.put(TableName=self.table, Item=to_ddb({k: v for k, v in item.items() if v is not None}),
                              ConditionExpression="attribute_not_exists(pk)").ok

    def coupon(self, code: str) -> dict[str, Any] | None:
        return self.store.get(self.table, coupon_key(code))

    # ---- the API: pricing -------------------------------------------------------------------------------------
    @staticmethod
    def discount(coupon: dict[str, Any] | None, code: str, subtotal: int, currency: str, now: int) -> int:
        """The discount a coupon gives on `subtotal` now (minor units; the total stays at least 1). Raises
        CouponInvalid or CouponExpired; exhaustion is decided when ApplyCoupon holds a redemption."""
        if coupon is None:
            raise CouponInvalid(f"no coupon {code}")
        if not int(coupon["valid_from"]) <= now < int(coupon["valid_until"]):
            raise CouponExpired(f"coupon {code} is valid from {_iso(coupon['valid_from'])} until "
                                f"{_iso(coupon['valid_until'])}")
        if coupon["kind"] == PERCENT:
            discount = subtotal * int(coupon["value"]) // 100
        else:
            if coupon.get("currency") != currency:
                raise CouponInvalid(f"coupon {code} is an amount in {coupon.get('currency')}, "
                                    f"the order is in {currency}")
            discount = int(coupon["value"])
        return max(0, min(discount, subtotal - 1))

    # ---- ApplyCoupon ----------------------------------------------------------------------------------------
    def hold_items(self, code: str, order_id: str, customer: str, per_customer: int, now: int) -> Items:
        """ApplyCoupon's part of its transaction: the redemption, the coupon's count under its global limit and
        validity window, and the customer's count under the per-customer limit."""
        redemption = {"pk": f"COUPON#{code}", "sk": f"ORDER#{order_id}", "order_id": order_id, "code": code,
                      "customer": customer, "status": HELD, "held_at": now}
        return {
            "redemption": {"Put": {"TableName": self.table, "Item": to_ddb(redemption),
                                   "ConditionExpression": "attribute_not_exists(pk)"}},
            "coupon": {"Update": {"TableName": self.table, "Key": coupon_key(code),
                                  "UpdateExpression": "SET redeemed = redeemed + :one",
                                  "ConditionExpression": ("attribute_exists(pk) AND redeemed < max_redemptions "
                                                          "AND valid_from <= :now AND valid_until > :now"),
                                  "ExpressionAttributeValues": values(one=1, now=now)}},
            "customer": {"Update": {"TableName": self.table, "Key": customer_key(code, customer),
                                    "UpdateExpression": "SET used = if_not_exists(used, :zero) + :one",
                                    "ConditionExpression": "attribute_not_exists(used) OR used < :limit",
                                    "ExpressionAttributeValues": values(zero=0, one=1, limit=per_customer)}},
        }

    @staticmethod
    def refusal(code: str, coupon: dict[str, Any] | None, customer_refused: bool, now: int) -> Exception:
        """Why a hold was refused, from the items as they are."""
        if coupon is None:
            return CouponInvalid(f"no coupon {code}")
        if not int(coupon["valid_from"]) <= now < int(coupon["valid_until"]):
            return CouponExpired(f"coupon {code} is valid from {_iso(coupon['valid_from'])} until "
                                 f"{_iso(coupon['valid_until'])}")
        if int(coupon["redeemed"]) >= int(coupon["max_redemptions"]):
            return CouponExhausted(f"coupon {code} reached its {coupon['max_redemptions']} redemptions")
        if customer_refused:
            return CouponExhausted(f"the customer used coupon {code} its {coupon['per_customer']} times already")
        return CouponInvalid(f"coupon {code} could not be held")

    def skip_item(self, code: str, order_id: str, customer: str, refusal: Exception, now: int) -> dict[str, Any]:
        """ApplyCoupon under the `continue` policy: the order's redemption, SKIPPED (why, and no count held), if it
        has none yet; kept as long as a tombstone."""
        skipped = {"pk": f"COUPON#{code}", "sk": f"ORDER#{order_id}", "order_id": order_id, "code": code,
                   "customer": customer, "status": SKIPPED, "error": type(refusal).__name__, "skipped_at": now,
                   "purge_at": self.timing.tombstone_until(now)}
        return {"Put": {"TableName": self.table, "Item": to_ddb(skipped),
                        "ConditionExpression": "attribute_not_exists(pk)"}}

    @staticmethod
    def refused_as_read(code: str, coupon: dict[str, Any] | None, now: int) -> Exception | None:
        """A refusal the coupon item already shows (no coupon, outside its window, every redemption taken), before
        any hold is tried; None when a hold may succeed (the per-customer limit is checked by the hold)."""
        if coupon is None or not int(coupon["valid_from"]) <= now < int(coupon["valid_until"]) or (
                int(coupon["redeemed"]) >= int(coupon["max_redemptions"])):
            return Promotions.refusal(code, coupon, False, now)
        return None

    # ---- ConfirmOrder ----------------------------------------------------------------------------------------
    def commit_item(self, code: str, order_id: str, now: int) -> dict[str, Any]:
        return {"Update": {"TableName": self.table, "Key": redemption_key(code, order_id),
                           "UpdateExpression": "SET #status = :committed, committed_at = :now",
                           "ConditionExpression": "#status IN (:held, :committed)",
                           "ExpressionAttributeNames": {"#status": "status"},
                           "ExpressionAttributeValues": values(held=HELD, committed=COMMITTED, now=now)}}

    def retire_item(self, code: str, order_id: str, now: int) -> dict[str, Any]:
        """The completion's part (the same transaction that makes the order COMPLETED): the COMMITTED redemption is
        kept for the order retention from now, as its order is."""
        return {"Update": {"TableName": self.table, "Key": redemption_key(code, order_id),
                           "UpdateExpression": "SET purge_at = :purge", "ConditionExpression": "#status = :committed",
                           "ExpressionAttributeNames": {"#status": "status"},
                           "ExpressionAttributeValues": values(committed=COMMITTED,
                                                               purge=self.timing.retained_until(now))}}

    # ---- ReleaseCoupon, the reaper ---------------------------------------------------------------------------
    def release_items(self, code: str, order_id: str, now: int) -> Items:
        """Give the redemption back (both counts down), or leave a tombstone if none was held. [] when it was
        released before, or skipped (it holds no count). Conditional on the status read, so a concurrent hold is
        noticed."""
        redemption = self.store.get(self.table, redemption_key(code, order_id))
        if redemption is None:
            tombstone = {"pk": f"COUPON#{code}", "sk": f"ORDER#{order_id}", "order_id": order_id, "code": code,
                         "status": RELEASED, "released_at": now, "purge_at": self.timing.tombstone_until(now)}
            return {"redemption": {"Put": {"TableName": self.table, "Item": to_ddb(tombstone),
                                           "ConditionExpression": "attribute_not_exists(pk)"}}}
        if redemption["status"] in (RELEASED, SKIPPED):
            return {}
        customer = str(redemption["customer"])
        return {
            "redemption": {"Update": {
                "TableName": self.table, "Key": redemption_key(code, order_id),
                "UpdateExpression": "SET #status = :released, released_at = :now, purge_at = :purge",
                "ConditionExpression": "#status = :was", "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": values(released=RELEASED, now=now, was=redemption["status"],
                                                    purge=self.timing.tombstone_until(now))}},
            "coupon": {"Update": {
                "TableName": self.table, "Key": coupon_key(code),
                "UpdateExpression": "SET redeemed = redeemed - :one", "ConditionExpression": "redeemed > :zero",
                "ExpressionAttributeValues": values(one=1, zero=0)}},
            "customer": {"Update": {
                "TableName": self.table, "Key": customer_key(code, customer),
                "UpdateExpression": "SET used = used - :one", "ConditionExpression": "used > :zero",
                "ExpressionAttributeValues": values(one=1, zero=0)}},
        }
