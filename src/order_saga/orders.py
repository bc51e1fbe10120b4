"""The order service: the order item, its saga status, its step log, and its lease.

The lease: an execution owns its order (lease_owner) until lease_expires_at, under a fencing token (fence)
that only ever increases. Every side effect a step makes is written in one transaction with an update of
the order item that checks the lease (owner, fence, unexpired, saga still EXECUTING), logs the step and,
past half the lease's life, renews it. So a step is one request, and a step whose lease was lost, or whose
saga is compensating, changes nothing. When the lease expires with the saga unfinished, the reaper takes
the order over (a new fence), so a late write of the old execution cannot land.

Unfinished orders carry `active`, the partition key of the sparse index ActiveByLeaseExpiry: one of
IndexShards values spread by order id, so no index partition takes every saga.

Finished orders (COMPLETED, COMPENSATED) carry `purge_at`, the table's TTL attribute: the write that finishes the
saga sets it to the order retention from then. An unfinished or parked (FAILED) order never carries it, and no
write takes an order out of COMPLETED or COMPENSATED, so an order never expires while anything can still need it.

Open orders per customer: the table also holds one item per customer (order_id `CUSTOMER#<sub>`, never an order id,
which is `ord_<hex>`) whose `open_orders` is the string set of the customer's open orders' ids: unfinished or parked,
not COMPLETED nor COMPENSATED. The API's order write adds the new id in the same transaction, on condition that the
set holds fewer than the cap (take_slot); every write that finishes an order (`complete`, and `compensation_update`
with `finish`) removes it in the same transaction (release_slot). So the set is exactly the open orders, however
requests race: a set, not a number, so that a repeat adds or removes nothing twice, and an order placed before the
set existed is never subtracted. The item has no `purge_at`: it is kept (one small item per customer).

An id can still outlive its order's openness when something finished the order without release_slot (code from
before the set, a deploy rolled back, an operator closing a parked order by hand) or deleted it. The API's refusal
at the cap heals that (prune_open_orders): it reads the orders the set holds, and takes out the ids whose order is
finished (COMPLETED, COMPENSATED) or gone, each re-checked in the same transaction as the DELETE, so an id whose
order came back meanwhile (a new order under an expired order's key) stays counted.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from order_saga import models
from order_saga.config import Timing
from order_saga.dynamo import to_ddb, values
from order_saga.errors import LeaseLost, OrderLocked, OrderNotActive
from order_saga.promotions import NOT_APPLIED
from order_saga.store import Store

# Order statuses (what the customer sees), next to the saga status (what the saga did).
ORDER_RECEIVED = "RECEIVED"
ORDER_CONFIRMED = "CONFIRMED"
ORDER_CANCELLED = "CANCELLED"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"

# The states of the state machine in the order they can run: breaks ties in the step log's times.
STEP_ORDER = (
    "ReserveInventory", "ApplyCoupon", "AuthorizePayment", "AuthorizePayment.1", "AuthorizePayment.2",
    "AuthorizePayment.3", "ConfirmOrder", "Reaper", "RefundPayment", "VoidPayment", "ReleaseCoupon",
    "ReleaseInventory", "CancelOrder", "ParkSaga",
)
# A compensation may act while the saga is in any of these (FAILED: its own execution, redriven, claims a parked
# saga back first: Orders.claim_for_compensation). Never on an order past the pivot (CONFIRMING: it only goes
# forward) nor on a COMPLETED one (final for every execution and for the reaper; refunding a delivered order is a
# separate operation, never a compensation).
COMPENSABLE = (models.PENDING, models.EXECUTING, models.COMPENSATING, models.FAILED)
# The order is owned and on its way: a second execution is refused (OrderLocked).
UNDERWAY = (models.EXECUTING, models.CONFIRMING, models.COMPLETED)
CUSTOMER_PREFIX = "CUSTOMER#"  # the per-customer item's key: order_id CUSTOMER#<sub>
# Final saga statuses: no write takes an order out of them, and only they carry purge_at (the TTL). An id in a
# customer's open orders whose order is in one of them, or is gone, counts nothing (prune_open_orders).
FINISHED = (models.COMPLETED, models.COMPENSATED)
# The most ids the set can hold: the template's MaxValue of MaxOpenOrdersPerCustomer (a cap lowered by a deploy
# leaves the set over the new cap, never over the highest). What one refusal reads, at most: 10 BatchGetItem pages.
MOST_OPEN_ORDERS = 1000
PRUNE_CHECKS = 99  # ConditionChecks beside the set's update in one transaction (TransactWriteItems: 100 items)


def is_order(item: dict[str, Any]) -> bool:
    """An order, not a customer's open-orders item (the table holds both)."""
    return not str(item.get("order_id", "")).startswith(CUSTOMER_PREFIX)


@dataclass(frozen=True)
class OpenOrders:
    """A customer's open orders as a refusal at the cap found them (prune_open_orders)."""

    held: frozenset[str]  # the ids the set held when it was read
    pruned: frozenset[str]  # taken out of the set: their order is finished or gone
    running: tuple[dict[str, Any], ...]  # the orders among them still running (they carry `active`)

    @property
    def counted(self) -> int:
        """The open orders the set holds now, as far as this refusal knows."""
        return len(self.held - self.pruned)


@dataclass(frozen=True)
class Lease:
    order_id: str
    owner: str  # the execution id, or "reaper:<request id>"
    fence: int
    deadline_at: int
    expires_at: int


class Orders:
    def __init__(self, store: Store, table: str, timing: Timing) -> None:
        self.store = store
        self.table = table
        self.timing = timing

    def key(self, order_id: str) -> dict[str, Any]:
        return to_ddb({"order_id": order_id})

    def get(self, order_id: str, consistent: bool = True) -> dict[str, Any] | None:
        return self.store.get(self.table, self.key(order_id), consistent)

    # ---- the API ---------------------------------------------------------------------------------------
    def new_order(self, order_id: str, customer_id: str, items: list[dict[str, Any]],
                  lines: list[models.PricedLine], total: int, currency: str, execution_arn: str, digest: str,
                  now: int, coupon: str | None = None, discount: int = 0,
                  amounts: list[int] | None = None) -> dict[str, Any]:
        """The PENDING order the API writes: unowned, with a lease that runs out (the reaper cancels an order
        whose execution never starts). `total` is after the coupon's `discount`; `amounts` are what each payment
        method pays (one method: the total)."""
        priced = {"subtotal": total + discount, "discount": discount, "coupon": coupon} if coupon else {}
        return {
            "order_id": order_id, "customer_id": customer_id, "items": items,
            "lines": [line.model_dump() for line in lines], "total": total, "currency": currency, **priced,
            "payment_amounts": amounts or [total],
            "status": ORDER_RECEIVED, "saga_status": models.PENDING, "execution_arn": execution_arn,
            "request_hash": digest, "steps": {}, "created_at": now, "updated_at": now,
            "active": self.timing.shard(order_id), "fence": 0,
            "lease_expires_at": now + min(self.timing.lease_ms, self.timing.deadline_ms),
            "deadline_at": now + self.timing.deadline_ms,
        }

    def put_new(self, order: dict[str, Any]) -> dict[str, Any]:
        return {"Put": {"TableName": self.table, "Item": to_ddb(order),
                        "ConditionExpression": "attribute_not_exists(order_id)"}}

    # ---- open orders per customer ------------------------------------------------------------------------
    def customer_key(self, customer_id: str) -> dict[str, Any]:
        return to_ddb({"order_id": CUSTOMER_PREFIX + customer_id})

    def take_slot(self, customer_id: str, order_id: str, cap: int) -> dict[str, Any]:
        """The API's part, in the transaction that writes the new order: the order is one of the customer's open
        orders, on condition that fewer than `cap` are open. Cancelled by it: over the cap, nothing written."""
        return {"Update": {
            "TableName": self.table, "Key": self.customer_key(customer_id),
            "UpdateExpression": "ADD open_orders :order SET customer_id = :customer",
            "ConditionExpression": "attribute_not_exists(open_orders) OR size(open_orders) < :cap",
            "ExpressionAttributeValues": values(order={order_id}, customer=customer_id, cap=cap)}}

    def release_slot(self, customer_id: str, order_id: str) -> dict[str, Any]:
        """The finishing write's part (COMPLETED or COMPENSATED, in the same transaction): the order is open no more.
        Unconditional and idempotent: removing an id the set does not hold changes nothing."""
        return {"Update": {
            "TableName": self.table, "Key": self.customer_key(customer_id),
            "UpdateExpression": "DELETE open_orders :order",
            "ExpressionAttributeValues": values(order={order_id})}}

    def prune_open_orders(self, customer_id: str, held: set[str]) -> OpenOrders:
        """At the cap: read the orders of `held` (the customer's open orders, as the refused transaction found
        them) and take out of the set those finished or gone, which nothing else would ever take out. Strongly
        consistent reads (an order is written in the transaction that adds its id: a read lagging behind it must
        not find it gone), BatchGetItem pages of 100 (UnprocessedKeys asked again), at most MOST_OPEN_ORDERS ids;
        then, only when some are to go, one transaction per PRUNE_CHECKS of them (release_finished)."""
        ids = sorted(held)[:MOST_OPEN_ORDERS]
        found = {str(item["order_id"]): item for item in
                 self.store.batch_get(self.table, [self.key(order_id) for order_id in ids], consistent=True)}
        finished = {order_id for order_id in ids
                    if order_id not in found or found[order_id].get("saga_status") in FINISHED}
        running = tuple(order for order in found.values() if "active" in order)
        pruned = self.release_finished(customer_id, finished) if finished else set()
        return OpenOrders(frozenset(held), frozenset(pruned), running)

    def release_finished(self, customer_id: str, order_ids: set[str]) -> set[str]:
        """Take `order_ids` out of the customer's open orders, each on condition that its order is still finished
        or gone, in the same transaction. The set's DELETE of named ids is safe by itself against concurrent adds
        of others and concurrent finishes (removing an absent id changes nothing); the condition guards the one
        race it is not safe against: an id read as gone whose order is placed again meanwhile (its expired order's
        key reused, as the API allows) is live, and must stay counted. A transaction cancelled by such an id is
        sent once more without it. Returns the ids taken out."""
        released: set[str] = set()
        ordered = sorted(order_ids)
        for start in range(0, len(ordered), PRUNE_CHECKS):
            chunk = ordered[start:start + PRUNE_CHECKS]
            for _attempt in range(2):
                cancelled = self.store.transact({
                    "customer": {"Update": {
                        "TableName": self.table, "Key": self.customer_key(customer_id),
                        "UpdateExpression": "DELETE open_orders :finished",
                        "ExpressionAttributeValues": values(finished=set(chunk))}},
                    **{f"order:{order_id}": {"ConditionCheck": {
                        "TableName": self.table, "Key": self.key(order_id),
                        "ConditionExpression": "attribute_not_exists(order_id) OR saga_status IN (:s0, :s1)",
                        "ExpressionAttributeValues": values(s0=FINISHED[0], s1=FINISHED[1])}}
                       for order_id in chunk}})
                if cancelled is None:
                    released.update(chunk)
                    break
                chunk = [order_id for order_id in chunk if not cancelled.failed(f"order:{order_id}")]
                if not chunk:
                    break
        return released

    def open_orders(self, customer_id: str) -> set[str]:
        """The customer's open orders' ids, as the per-customer item holds them."""
        item = self.get(CUSTOMER_PREFIX + customer_id) or {}
        return set(item.get("open_orders") or ())

    # ---- ReserveInventory: the lease ---------------------------------------------------------------------
    def acquire(self, saga: models.SagaState, owner: str, now: int) -> tuple[dict[str, Any], Lease]:
        """Take the PENDING order's lease for this execution: PENDING -> EXECUTING. One write, ReserveInventory's
        first (the step then reserves under the lease).

        The same write stamps `marks_sends`: this execution runs the state machine version of this ReserveInventory,
        so its AuthorizePayment is the one of the same deploy, which writes the payment's sent marker before every
        first send (payments.py). The flag is what lets a compensation (which runs the `live` code, whatever version
        the execution runs) or the reaper void a PENDING payment of this order without the gateway: a version that
        did not mark its sends does not stamp it either (see `sends_marked`).

        A repeat by the same execution returns the same order and lease. Another execution, while the
        lease is held, is refused with OrderLocked; an order that does not exist or is no longer PENDING
        with OrderNotActive.
        """
        sets = ["saga_status = :executing", "lease_owner = :owner", "fence = fence + :one", "updated_at = :now",
                "marks_sends = :marks"]
        vals: dict[str, Any] = {"executing": models.EXECUTING, "owner": owner, "one": 1, "now": now,
                                "pending": models.PENDING, "marks": True}
        if self.timing.renewal_due(saga.lease_expires_at, now):
            sets.append("lease_expires_at = :expires")
            vals["expires"] = min(now + self.timing.lease_ms, saga.deadline_at or now + self.timing.deadline_ms)
        written = self.store.update(
            TableName=self.table, Key=self.key(saga.order_id), UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression=("saga_status = :pending "
                                 "AND (attribute_not_exists(lease_owner) OR lease_expires_at < :now)"),
            ExpressionAttributeValues=values(**vals), ReturnValues="ALL_NEW")
        order = written.item or {}
        if not written.ok:
            if not order:
                raise OrderNotActive(f"order {saga.order_id} does not exist")
            if order.get("lease_owner") == owner and order.get("saga_status") in UNDERWAY:
                pass  # a repeat (or a lost response): the lease is ours
            elif order.get("saga_status") == models.PENDING and order.get("lease_owner") not in (None, owner):
                raise OrderLocked(f"order {saga.order_id} is owned by {order.get('lease_owner')} until "
                                  f"{order.get('lease_expires_at')}")
            elif order.get("saga_status") in UNDERWAY:
                raise OrderLocked(f"order {saga.order_id} is owned by {order.get('lease_owner')}")
            else:
                raise OrderNotActive(f"order {saga.order_id} is {order.get('saga_status')}")
        return order, self.lease_of_order(order)

    @staticmethod
    def lease_of_order(order: dict[str, Any]) -> Lease:
        return Lease(order["order_id"], str(order["lease_owner"]), int(order["fence"]), int(order["deadline_at"]),
                     int(order["lease_expires_at"]))

    # ---- forward steps -----------------------------------------------------------------------------------
    def lease_of(self, saga: models.SagaState, owner: str) -> Lease:
        """The lease a forward step runs under (ReserveInventory put its fence in the saga state)."""
        if saga.fence is None or saga.deadline_at is None or saga.lease_expires_at is None:
            raise LeaseLost(f"the saga state of order {saga.order_id} carries no lease: ReserveInventory has not "
                            f"taken it")
        return Lease(saga.order_id, owner, saga.fence, saga.deadline_at, saga.lease_expires_at)

    def renewed(self, lease: Lease, now: int) -> int:
        """The lease's expiry after this step: renewed past half its life, never past the saga's deadline."""
        if self.timing.renewal_due(lease.expires_at, now):
            return min(now + self.timing.lease_ms, lease.deadline_at)
        return lease.expires_at

    def step_update(self, lease: Lease, step: str, now: int, **fields: Any) -> dict[str, Any]:
        """The order's part of a forward step's transaction: the lease check, the step log, the renewal, and what
        the step records on the order (`fields`: ApplyCoupon's coupon outcome)."""
        sets = ["steps.#step = :entry", "updated_at = :now"] + [f"#f_{name} = :f_{name}" for name in fields]
        vals: dict[str, Any] = {"entry": {"status": SUCCEEDED, "at": now}, "now": now, "owner": lease.owner,
                                "fence": lease.fence, "executing": models.EXECUTING,
                                **{f"f_{name}": value for name, value in fields.items()}}
        expires = self.renewed(lease, now)
        if expires != lease.expires_at:
            sets.append("lease_expires_at = :expires")
            vals["expires"] = expires
        return {"Update": {
            "TableName": self.table, "Key": self.key(lease.order_id),
            "UpdateExpression": "SET " + ", ".join(sets),
            "ConditionExpression": ("lease_owner = :owner AND fence = :fence AND lease_expires_at >= :now "
                                    "AND saga_status = :executing"),
            "ExpressionAttributeNames": {"#step": step, **{f"#f_{name}": name for name in fields}},
            "ExpressionAttributeValues": values(**vals),
        }}

    def coupon_skipped_update(self, lease: Lease, now: int, subtotal: int, discount: int, error: str,
                              cause: str) -> dict[str, Any]:
        """ApplyCoupon's order update under the `continue` policy, the coupon refused (`error`): the step logged under
        the lease as any step's, and the order back at its original amount: the subtotal as its total, no discount,
        the first payment method paying the discount not given (as ApplyCoupon moves that payment's amount in the
        same transaction), and why the coupon was not applied."""
        update = self.step_update(lease, "ApplyCoupon", now, total=subtotal, discount=0, coupon_outcome=NOT_APPLIED,
                                  coupon_error=error, coupon_cause=cause[:1000])
        body = update["Update"]
        body["UpdateExpression"] += ", payment_amounts[0] = payment_amounts[0] + :not_given"
        body["ExpressionAttributeValues"].update(values(not_given=discount))
        return update

    def pivot(self, lease: Lease, now: int) -> dict[str, Any]:
        """The order's part of ConfirmOrder's stock commit: EXECUTING -> CONFIRMING under an unexpired lease, which
        becomes the pivot lease (ConfirmOrder's worst case, retries included). From here the saga only goes
        forward: compensations refuse the order, and the reaper finishes it instead of undoing it."""
        return {"Update": {
            "TableName": self.table, "Key": self.key(lease.order_id),
            "UpdateExpression": ("SET saga_status = :confirming, pivot_at = :now, lease_expires_at = :expires, "
                                 "updated_at = :now"),
            "ConditionExpression": ("lease_owner = :owner AND fence = :fence AND lease_expires_at >= :now "
                                    "AND saga_status = :executing"),
            "ExpressionAttributeValues": values(
                confirming=models.CONFIRMING, now=now, expires=now + self.timing.pivot_lease_ms, owner=lease.owner,
                fence=lease.fence, executing=models.EXECUTING),
        }}

    def complete(self, lease: Lease, step: str, now: int) -> dict[str, Any]:
        """The order's part of the final write past the pivot: COMPLETED, the order CONFIRMED, out of the reaper's
        index, kept for the order retention (`purge_at`). Owned by owner and fence, not by expiry: past the pivot only
        a takeover (a new fence) stops it."""
        return {"Update": {
            "TableName": self.table, "Key": self.key(lease.order_id),
            "UpdateExpression": ("SET steps.#step = :entry, updated_at = :now, saga_status = :completed, "
                                 "#status = :confirmed, purge_at = :purge REMOVE active"),
            "ConditionExpression": "lease_owner = :owner AND fence = :fence AND saga_status = :confirming",
            "ExpressionAttributeNames": {"#step": step, "#status": "status"},
            "ExpressionAttributeValues": values(
                entry={"status": SUCCEEDED, "at": now}, now=now, completed=models.COMPLETED,
                confirmed=ORDER_CONFIRMED, owner=lease.owner, fence=lease.fence, confirming=models.CONFIRMING,
                purge=self.timing.retained_until(now)),
        }}

    def give_up_pivot(self, lease: Lease, now: int) -> bool:
        """The processor refused a capture past the pivot: the one definite outcome that turns the saga back.
        CONFIRMING -> COMPENSATING, so the compensations (or the reaper's) may undo it."""
        return self.store.update(
            TableName=self.table, Key=self.key(lease.order_id),
            UpdateExpression="SET saga_status = :compensating, updated_at = :now",
            ConditionExpression="lease_owner = :owner AND fence = :fence AND saga_status = :confirming",
            ExpressionAttributeValues=values(compensating=models.COMPENSATING, now=now, owner=lease.owner,
                                             fence=lease.fence, confirming=models.CONFIRMING)).ok

    @staticmethod
    def sends_marked(order: dict[str, Any] | None) -> bool:
        """The order's execution authorizes its payments with code that writes the sent marker before each first
        send: stamped when its ReserveInventory took the lease (acquire; CreateOrder did on the versions that had it),
        pinned to the execution's state machine version. Absent (an execution on a version before the
        marker, one that never took the lease, an order taken over before it):
        an unmarked PENDING payment may still have been sent, and is voided at the gateway."""
        return bool((order or {}).get("marks_sends"))

    def claim_for_compensation(self, lease: Lease, now: int, redrive_count: int = 0) -> dict[str, Any] | None:
        """A compensation's first write, before it undoes anything (a gateway call included): the order is this
        lease's and compensable, and from now on COMPENSATING, so that no late step of the same execution (a
        ConfirmOrder still running after its task timed out) can land afterwards: the pivot needs EXECUTING.

        A parked order (FAILED) is claimed back only by its execution redriven since it was parked: the execution's
        ARN and the same fence, and `redrive_count` ($$.Execution.RedriveCount) above the count it was parked at.
        So a late attempt of the run that failed (still running when its task gave up) cannot take it back. The
        claim makes the redriven run the owner (its owner token, whatever start time a redrive gives it), and puts
        the order back in the reaper's index under a fresh lease: a redriven execution that dies again is taken
        over like any other.

        Returns the order as claimed (the write's ALL_NEW: no request more), which the compensation reads its
        permissions from (`sends_marked`); None: not ours, or not compensable (past the pivot, finished, parked by
        this run)."""
        running = {f"s{i}": status for i, status in enumerate(COMPENSABLE) if status != models.FAILED}
        claimed = self.store.update(
            TableName=self.table, Key=self.key(lease.order_id),
            UpdateExpression="SET saga_status = :compensating",
            ConditionExpression=(f"lease_owner = :owner AND fence = :fence AND saga_status IN "
                                 f"({', '.join(':' + k for k in running)})"),
            ExpressionAttributeValues=values(compensating=models.COMPENSATING, owner=lease.owner,
                                             fence=lease.fence, **running), ReturnValues="ALL_NEW")
        if claimed.ok:
            return claimed.item or {"order_id": lease.order_id}
        if redrive_count < 1:
            return None
        reclaimed = self.store.update(
            TableName=self.table, Key=self.key(lease.order_id),
            UpdateExpression=("SET saga_status = :compensating, lease_owner = :owner, active = :shard, "
                              "lease_expires_at = :expires, redriven_at = :now, updated_at = :now"),
            ConditionExpression=("begins_with(lease_owner, :execution) AND fence = :fence AND saga_status = :failed "
                                 "AND parked_redrive_count < :count"),
            ExpressionAttributeValues=values(
                compensating=models.COMPENSATING, owner=lease.owner, execution=lease.owner.split("#")[0] + "#",
                fence=lease.fence, failed=models.FAILED, count=redrive_count, shard=self.timing.shard(lease.order_id),
                now=now, expires=now + self.timing.lease_ms), ReturnValues="ALL_NEW")
        return (reclaimed.item or {"order_id": lease.order_id}) if reclaimed.ok else None

    @staticmethod
    def holds(order: dict[str, Any] | None, lease: Lease) -> bool:
        """`lease` owns the order (owner and fence; expiry aside)."""
        return bool(order) and order.get("lease_owner") == lease.owner and order.get("fence") == lease.fence

    @staticmethod
    def refusal(order: dict[str, Any] | None, lease: Lease, now: int) -> Exception:
        """Why a step's lease check failed, from the order as it is."""
        if not order:
            return OrderNotActive(f"order {lease.order_id} does not exist")
        status = order.get("saga_status")
        if order.get("lease_owner") != lease.owner or order.get("fence") != lease.fence:
            return LeaseLost(f"order {lease.order_id} was taken over by {order.get('lease_owner')} "
                             f"(fence {order.get('fence')} > {lease.fence})")
        if status != models.EXECUTING:
            return OrderNotActive(f"order {lease.order_id} is {status}")
        return LeaseLost(f"the lease on order {lease.order_id} expired at {order.get('lease_expires_at')} "
                         f"(now {now}; saga deadline {order.get('deadline_at')})")

    # ---- compensations ------------------------------------------------------------------------------------
    def compensation_lease(self, saga: models.SagaState, owner: str, now: int) -> Lease | None:
        """The lease a compensation runs under; None when another owner (the reaper) compensates, or the
        order is already cancelled, or does not exist.

        A compensation may run after the lease expired (a slow rollback): it keeps the order as long as
        nobody took it over. When the saga state carries no fence (ReserveInventory failed, perhaps after it took
        the lease), the compensation takes the lease: from nobody, or from this same execution.
        """
        if saga.fence is not None and saga.deadline_at is not None:
            return Lease(saga.order_id, owner, saga.fence, saga.deadline_at, saga.lease_expires_at or now)
        written = self.store.update(
            TableName=self.table, Key=self.key(saga.order_id),
            UpdateExpression="SET lease_owner = :owner, fence = fence + :one, lease_expires_at = :expires",
            ConditionExpression=("(attribute_not_exists(lease_owner) OR lease_owner = :owner OR (saga_status = :failed "
                                 "AND begins_with(lease_owner, :execution))) "
                                 "AND saga_status IN (:pending, :executing, :failed)"),
            ExpressionAttributeValues=values(owner=owner, one=1, expires=now + self.timing.lease_ms,
                                             execution=owner.split("#")[0] + "#",
                                             pending=models.PENDING, executing=models.EXECUTING,
                                             failed=models.FAILED),
            ReturnValues="ALL_NEW")
        if written.ok and written.item:
            return self.lease_of_order(written.item)
        if written.item and written.item.get("lease_owner") == owner:
            return self.lease_of_order(written.item)  # ours already (a repeat): the compensation finds it done
        return None

    def compensation_update(self, lease: Lease, step: str, failure: dict[str, Any] | None, now: int,
                            finish: bool = False, log_once: bool = False) -> dict[str, Any]:
        """The order's part of a compensation's transaction: COMPENSATING (or, for CancelOrder, COMPENSATED
        and CANCELLED), the failed forward step recorded once (`failure`), and this compensation logged.
        `log_once`: only if this compensation is not logged yet (with nothing else to write, a repeat writes
        nothing)."""
        sets = ["saga_status = :status", "steps.#step = :entry", "updated_at = :now"]
        names = {"#step": step}
        vals: dict[str, Any] = {"status": models.COMPENSATED if finish else models.COMPENSATING,
                                "entry": {"status": SUCCEEDED, "at": now}, "now": now,
                                "owner": lease.owner, "fence": lease.fence}
        if failure is not None:  # the forward step that failed, recorded once (a step may have written, then failed)
            sets.append("failure = if_not_exists(failure, :failure)")
            vals["failure"] = {"step": failure["step"], "at": now, "error": failure["error"],
                               "cause": (failure.get("cause") or "")[:1000]}
        if finish:  # the saga ends here: the order is kept for the order retention, then DynamoDB's TTL deletes it
            sets += ["#state = :cancelled", "purge_at = :purge"]
            names["#state"] = "status"
            vals.update(cancelled=ORDER_CANCELLED, purge=self.timing.retained_until(now))
        statuses = {k: v for k, v in _compensable_values().items() if v != models.FAILED}  # parked: claim first
        vals.update(statuses)
        return {"Update": {
            "TableName": self.table, "Key": self.key(lease.order_id),
            "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE active" if finish else ""),
            "ConditionExpression": (f"lease_owner = :owner AND fence = :fence AND saga_status IN "
                                    f"({', '.join(':' + k for k in statuses)})"
                                    + (" AND attribute_not_exists(steps.#step)" if log_once else "")),
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values(**vals),
        }}


    PARKABLE = (models.PENDING, models.EXECUTING, models.COMPENSATING)

    @staticmethod
    def owner_of(order: dict[str, Any] | None, execution_arn: str, start_ms: int) -> str | None:
        """The owner token under which the execution `execution_arn`, started at `start_ms` (epoch ms), holds the
        order: its lease owner, `<ARN>#<$$.Execution.StartTime>`, read back and compared by the instant it names
        (whatever ISO 8601 form the start time has); "" for an order never leased that was created for that
        execution; None when the order is another execution's (the reaper's, or one of the same name started
        after its name was freed), or there is no order."""
        if not order:
            return None
        owner = order.get("lease_owner")
        if owner is None:
            return "" if order.get("execution_arn") == execution_arn else None
        arn, _, started = str(owner).rpartition("#")
        if arn != execution_arn:
            return None
        try:
            when = datetime.datetime.fromisoformat(started.replace("Z", "+00:00"))
        except ValueError:
            return None
        return str(owner) if round(when.timestamp() * 1000) == start_ms else None

    @classmethod
    def parkable(cls, order: dict[str, Any] | None) -> bool:
        """Unfinished (and not parked): what ParkSaga parks, once `owner_of` found it the failed execution's."""
        return bool(order) and order.get("saga_status") in cls.PARKABLE

    @staticmethod
    def parked_by(order: dict[str, Any] | None, owner: str) -> bool:
        """Parked already, by this execution (a retried ParkSaga that died before its message)."""
        return bool(order) and order.get("saga_status") == models.FAILED and "ParkSaga" in (order.get("steps") or {}) \
            and str(order.get("lease_owner", "")) == owner

    def park(self, order_id: str, owner: str, error: str, now: int, redrive_count: int = 0) -> bool:
        """ParkSaga: the execution `owner` failed with its order unfinished (a compensation spent its retries); the
        order is FAILED and out of the reaper's index until an operator redrives the execution. Only an order this
        execution still owns (`owner`, or "" for an order never leased) and unfinished: not one the reaper took
        over, nor one past the pivot, finished, or parked already. False: nothing parked."""
        statuses = {f"s{i}": status for i, status in enumerate(self.PARKABLE)}
        ownership = "lease_owner = :owner" if owner else "attribute_not_exists(lease_owner)"
        return self.store.update(
            TableName=self.table, Key=self.key(order_id),
            UpdateExpression=("SET saga_status = :failed, parked_error = :error, parked_redrive_count = :count, "
                              "steps.ParkSaga = :entry, updated_at = :now REMOVE active"),
            ConditionExpression=f"{ownership} AND saga_status IN (:s0, :s1, :s2)",
            ExpressionAttributeValues=values(failed=models.FAILED, error=error[:1000], now=now, count=redrive_count,
                                             entry={"status": SUCCEEDED, "at": now}, **statuses,
                                             **({"owner": owner} if owner else {}))).ok

    # ---- the reaper ---------------------------------------------------------------------------------------
    def abandoned(self, now: int) -> list[dict[str, Any]]:
        """Unfinished orders whose lease has expired, from every shard of ActiveByLeaseExpiry (keys only)."""
        found: list[dict[str, Any]] = []
        for shard in self.timing.all_shards():
            found += self.store.query(
                TableName=self.table, IndexName="ActiveByLeaseExpiry",
                KeyConditionExpression="active = :shard AND lease_expires_at < :now",
                ExpressionAttributeValues=values(shard=shard, now=now))
        return sorted(found, key=lambda entry: entry["lease_expires_at"])

    def take_over(self, entry: dict[str, Any], owner: str, now: int) -> tuple[dict[str, Any], Lease] | None:
        """The reaper's takeover of an abandoned order: a new owner and fence; the saga COMPENSATING, or, past the
        pivot, still CONFIRMING (the reaper finishes it).

        Conditional on the lease expiry the reaper saw, so it never races a live execution (which would
        have renewed) nor a second reaper: exactly one takeover wins.
        """
        order = self.get(entry["order_id"])
        if order is None or "active" not in order or order.get("lease_expires_at") != entry["lease_expires_at"]:
            return None
        pivoted = order.get("saga_status") == models.CONFIRMING
        written = self.store.update(
            TableName=self.table, Key=self.key(entry["order_id"]),
            UpdateExpression=("SET previous_owner = if_not_exists(lease_owner, :nobody), lease_owner = :owner, "
                              "fence = fence + :one, "
                              "lease_expires_at = :expires, saga_status = :compensating, steps.#step = :entry, "
                              "updated_at = :now"),
            ConditionExpression="attribute_exists(active) AND lease_expires_at = :seen AND saga_status = :was",
            ExpressionAttributeNames={"#step": "Reaper"},
            ExpressionAttributeValues=values(
                owner=owner, one=1, expires=now + (self.timing.pivot_lease_ms if pivoted else self.timing.lease_ms),
                compensating=models.CONFIRMING if pivoted else models.COMPENSATING, was=order.get("saga_status"),
                entry={"status": SUCCEEDED, "at": now, "error": "LeaseExpired",
                       "cause": ("the lease expired past the pivot: the reaper finishes the order" if pivoted
                                 else "the lease expired with the saga unfinished")},
                now=now, seen=int(entry["lease_expires_at"]), nobody="nobody"),
            ReturnValues="ALL_NEW")
        if not written.ok or not written.item:
            return None
        return written.item, self.lease_of_order(written.item)


def _compensable_values() -> dict[str, str]:
    """ExpressionAttributeValues names for `saga_status IN (...)` over COMPENSABLE: {"s0": "PENDING", ...}."""
    return {f"s{i}": status for i, status in enumerate(COMPENSABLE)}


def order_view(order: dict[str, Any]) -> dict[str, Any]:
    """The order as GET /orders/{id} shows it: the step log as a list in time order, the failure in it."""
    steps = [
        {"step": name, **{k: v for k, v in entry.items() if v not in (None, "")}}
        for name, entry in order.get("steps", {}).items()
    ]
    failure = order.get("failure")
    if failure:
        steps.append({"step": failure["step"], "status": FAILED, "at": failure["at"], "error": failure["error"]})
    steps.sort(key=lambda e: (e["at"], STEP_ORDER.index(e["step"]) if e["step"] in STEP_ORDER else 99))
    keys = ("order_id", "customer_id", "status", "saga_status", "items", "lines", "subtotal", "coupon", "discount",
            "coupon_outcome", "coupon_error", "coupon_cause", "total", "currency", "created_at", "updated_at",
            "parked_error")
    view = {k: order[k] for k in keys if k in order}
    view["payments"] = [{"method": n, "amount": amount}
                        for n, amount in enumerate(order.get("payment_amounts") or [order.get("total")], start=1)]
    view["steps"] = steps
    return view
