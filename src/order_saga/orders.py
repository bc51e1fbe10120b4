"""The order service: the order item, its saga status, its step log, and its lease.

Every write is conditional on the status it expects, so a retried step changes
nothing the second time and a step that arrives after compensation cannot land.

The lease: an execution owns its order (lease_owner) until lease_expires_at, under
a fencing token (fence) that only ever increases. Every step renews the lease and
writes only while it holds it; every side effect in another table is written in a
transaction with `guard(lease)`, a ConditionCheck on the order's owner and fence.
When the lease expires with the saga unfinished, the reaper takes the order over
(a new fence), so a late write of the old execution cannot land.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from order_saga import models
from order_saga.config import Timing
from order_saga.dynamo import from_ddb, is_condition_failure, raise_if_transient, to_ddb, values
from order_saga.errors import LeaseLost, OrderLocked, OrderNotActive
from order_saga.models import OrderRequest, PricedLine, SagaState

# Order statuses (what the customer sees), next to the saga status (what the saga did).
ORDER_RECEIVED = "RECEIVED"
ORDER_CONFIRMED = "CONFIRMED"
ORDER_CANCELLED = "CANCELLED"
ACTIVE = "ACTIVE"  # the sparse `active` attribute: present while the saga is unfinished (reaper's index)

# The states of the state machine in the order they can run: breaks ties in the step log's times.
STEP_ORDER = (
    "CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder", "Reaper",
    "RefundPayment", "VoidPayment", "ReleaseInventory", "CancelOrder", "ParkSaga",
)


@dataclass(frozen=True)
class Lease:
    order_id: str
    owner: str  # the execution id, or "reaper:<request id>"
    fence: int
    deadline_at: int


class Orders:
    def __init__(self, client: Any, table: str, timing: Timing) -> None:
        self.client = client
        self.table = table
        self.timing = timing

    def get(self, order_id: str, consistent: bool = True) -> dict[str, Any] | None:
        resp = self.client.get_item(
            TableName=self.table, Key=to_ddb({"order_id": order_id}), ConsistentRead=consistent
        )
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def accept(self, order_id: str, request: OrderRequest, execution_arn: str, now: int) -> bool:
        """Write the PENDING order for a new request. False when it already exists (a resubmission).

        The order is unowned, with a lease that runs out: if its execution never starts,
        the reaper cancels it.
        """
        item = {
            "order_id": order_id,
            "customer_id": request.customer_id,
            "items": [line.model_dump() for line in request.items],
            "status": ORDER_RECEIVED,
            "saga_status": models.PENDING,
            "execution_arn": execution_arn,
            "steps": {},
            "created_at": now,
            "updated_at": now,
            "active": ACTIVE,
            "fence": 0,
            "lease_expires_at": now + self.timing.lease_ms,
            "deadline_at": now + self.timing.deadline_ms,
        }
        try:
            self.client.put_item(TableName=self.table, Item=to_ddb(item),
                                 ConditionExpression="attribute_not_exists(order_id)")
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise_if_transient(exc)
            raise
        return True

    # ---- the lease -----------------------------------------------------------
    def _expiry(self, now: int, deadline_at: int) -> int:
        return min(now + self.timing.lease_ms, deadline_at)

    def start(self, saga: SagaState, owner: str, lines: list[PricedLine], total: int, currency: str,
              now: int) -> tuple[dict[str, Any], Lease]:
        """CreateOrder: acquire the lease and move PENDING -> EXECUTING with the priced lines.

        A repeat by the same execution returns the first pricing and the same lease.
        Another execution, while the lease is held, is refused with OrderLocked. An
        execution started without the API (an operator's StartExecution) finds no
        order: it is created here, EXECUTING, from the execution input.
        """
        priced = {"lines": [line.model_dump() for line in lines], "total": total, "currency": currency}
        order = self.get(saga.order_id)
        if order is None:
            deadline_at = now + self.timing.deadline_ms
            item = {
                "order_id": saga.order_id, "customer_id": saga.customer_id,
                "items": [line.model_dump() for line in saga.items], "status": ORDER_RECEIVED,
                "saga_status": models.EXECUTING, "execution_arn": owner,
                "steps": {"CreateOrder": {"status": "SUCCEEDED", "at": now}},
                "created_at": now, "updated_at": now, "active": ACTIVE, "lease_owner": owner, "fence": 1,
                "lease_expires_at": self._expiry(now, deadline_at), "deadline_at": deadline_at, **priced,
            }
            try:
                self.client.put_item(TableName=self.table, Item=to_ddb(item),
                                     ConditionExpression="attribute_not_exists(order_id)")
                return item, Lease(saga.order_id, owner, 1, deadline_at)
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise_if_transient(exc)
                    raise
            order = self.get(saga.order_id) or {}
        deadline_at = int(order.get("deadline_at", now + self.timing.deadline_ms))
        try:
            resp = self.client.update_item(
                TableName=self.table, Key=to_ddb({"order_id": saga.order_id}),
                UpdateExpression=("SET saga_status = :executing, lease_owner = :owner, fence = fence + :one, "
                                  "lease_expires_at = :expires, steps.#step = :entry, updated_at = :now, "
                                  "#lines = :lines, #total = :total, #currency = :currency"),
                ConditionExpression=("saga_status = :pending AND (attribute_not_exists(lease_owner) "
                                     "OR lease_expires_at < :now)"),
                ExpressionAttributeNames={"#step": "CreateOrder", "#lines": "lines", "#total": "total",
                                          "#currency": "currency"},
                ExpressionAttributeValues=values(
                    executing=models.EXECUTING, owner=owner, one=1, expires=self._expiry(now, deadline_at),
                    entry={"status": "SUCCEEDED", "at": now}, now=now, pending=models.PENDING, **priced),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
            order = self.get(saga.order_id) or {}
            if order.get("lease_owner") == owner and order.get("saga_status") in (models.EXECUTING, models.COMPLETED):
                return order, Lease(saga.order_id, owner, int(order["fence"]), deadline_at)
            if order.get("lease_owner") not in (None, owner) or order.get("saga_status") == models.PENDING:
                raise OrderLocked(f"order {saga.order_id} is owned by {order.get('lease_owner')} until "
                                  f"{order.get('lease_expires_at')}") from exc
            raise OrderNotActive(f"order {saga.order_id} is {order.get('saga_status')}") from exc
        order = from_ddb(resp["Attributes"])
        return order, Lease(saga.order_id, owner, int(order["fence"]), deadline_at)

    def lease_of(self, saga: SagaState, owner: str) -> Lease:
        """The lease a forward step runs under (CreateOrder put its fence in the saga state)."""
        if saga.fence is None or saga.deadline_at is None:
            raise LeaseLost(f"the saga state of order {saga.order_id} carries no lease: CreateOrder has not run")
        return Lease(saga.order_id, owner, saga.fence, saga.deadline_at)

    def renew(self, lease: Lease, now: int) -> None:
        """A forward step's heartbeat: extend the lease, only while this execution holds it, unexpired."""
        try:
            self.client.update_item(
                TableName=self.table, Key=to_ddb({"order_id": lease.order_id}),
                UpdateExpression="SET lease_expires_at = :expires",
                # COMPLETED too: a repeated ConfirmOrder (its response was lost) must find its work done.
                ConditionExpression=("lease_owner = :owner AND fence = :fence AND lease_expires_at >= :now "
                                     "AND saga_status IN (:executing, :completed)"),
                ExpressionAttributeValues=values(expires=self._expiry(now, lease.deadline_at), owner=lease.owner,
                                                 fence=lease.fence, now=now, executing=models.EXECUTING,
                                                 completed=models.COMPLETED),
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
            raise self._lost(lease, now) from exc

    def _lost(self, lease: Lease, now: int) -> Exception:
        order = self.get(lease.order_id)
        if order is None:
            return OrderNotActive(f"order {lease.order_id} does not exist")
        running = order.get("saga_status") in (models.EXECUTING, models.COMPLETED)
        if not running and order.get("lease_owner") == lease.owner:
            return OrderNotActive(f"order {lease.order_id} is {order.get('saga_status')}")
        if order.get("lease_owner") != lease.owner or order.get("fence") != lease.fence:
            return LeaseLost(f"order {lease.order_id} was taken over by {order.get('lease_owner')} "
                             f"(fence {order.get('fence')} > {lease.fence})")
        return LeaseLost(f"the lease on order {lease.order_id} expired at {order.get('lease_expires_at')} "
                         f"(now {now}; saga deadline {order.get('deadline_at')})")

    def guard(self, lease: Lease, now: int) -> dict[str, Any]:
        """A TransactWriteItems ConditionCheck: the write lands only while `lease` holds the order, unexpired."""
        return {"ConditionCheck": {
            "TableName": self.table, "Key": to_ddb({"order_id": lease.order_id}),
            "ConditionExpression": "lease_owner = :owner AND fence = :fence AND lease_expires_at >= :now",
            "ExpressionAttributeValues": values(owner=lease.owner, fence=lease.fence, now=now),
        }}

    def compensation_lease(self, order_id: str, owner: str, now: int) -> Lease | None:
        """The lease a compensation runs under, renewed; None when another owner (the reaper) compensates.

        A compensation may run after the lease expired (a slow rollback): it keeps the
        order as long as nobody took it over. An order no execution ever owned (its
        CreateOrder failed before acquiring) is acquired here. A parked (FAILED) saga is
        redriven this way: an operator invokes the compensations with the parked state.
        """
        order = self.get(order_id)
        if order is None or order.get("saga_status") == models.COMPENSATED:
            return None  # nothing to compensate, or already done: a no-op
        current = order.get("lease_owner")
        if current not in (None, owner):
            return None
        deadline_at = int(order.get("deadline_at", now + self.timing.deadline_ms))
        fence = int(order.get("fence", 0)) + (1 if current is None else 0)
        condition = ("attribute_not_exists(lease_owner)" if current is None
                     else "lease_owner = :owner AND fence = :fence")
        try:
            self.client.update_item(
                TableName=self.table, Key=to_ddb({"order_id": order_id}),
                UpdateExpression="SET lease_owner = :owner, fence = :fence, lease_expires_at = :expires",
                ConditionExpression=condition,
                ExpressionAttributeValues=values(owner=owner, fence=fence, expires=now + self.timing.lease_ms),
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
            return None
        return Lease(order_id, owner, fence, deadline_at)

    def abandoned(self, now: int, limit: int = 100) -> list[dict[str, Any]]:
        """Unfinished orders whose lease has expired (index ActiveByLeaseExpiry), oldest first."""
        resp = self.client.query(
            TableName=self.table, IndexName="ActiveByLeaseExpiry", Limit=limit,
            KeyConditionExpression="active = :active AND lease_expires_at < :now",
            ExpressionAttributeValues=values(active=ACTIVE, now=now),
        )
        return [from_ddb(item) for item in resp.get("Items", [])]

    def take_over(self, order: dict[str, Any], owner: str, now: int) -> Lease | None:
        """The reaper's takeover of an abandoned order: a new owner and fence, the saga COMPENSATING.

        Conditional on the lease still being expired at the fence the reaper saw, so it
        never races a live execution, nor a second reaper: exactly one takeover wins.
        """
        fence = int(order.get("fence", 0)) + 1
        deadline_at = int(order.get("deadline_at", now))
        try:
            self.client.update_item(
                TableName=self.table, Key=to_ddb({"order_id": order["order_id"]}),
                UpdateExpression=("SET lease_owner = :owner, fence = :fence, lease_expires_at = :expires, "
                                  "saga_status = :compensating, steps.#step = :entry, updated_at = :now"),
                ConditionExpression="active = :active AND lease_expires_at < :now AND fence = :seen",
                ExpressionAttributeNames={"#step": "Reaper"},
                ExpressionAttributeValues=values(
                    owner=owner, fence=fence, expires=now + self.timing.lease_ms, compensating=models.COMPENSATING,
                    entry={"status": "SUCCEEDED", "at": now, "error": "LeaseExpired",
                           "cause": f"lease of {order.get('lease_owner') or 'no execution'} expired; "
                                    f"saga was {order.get('saga_status')}"},
                    now=now, active=ACTIVE, seen=int(order.get("fence", 0))),
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
            return None
        return Lease(order["order_id"], owner, fence, deadline_at)

    # ---- saga transitions ------------------------------------------------------
    def record_step(self, lease: Lease, step: str, now: int) -> None:
        """Log a forward step's success while the saga is executing under `lease`. A repeat is a no-op."""
        self._transition(lease, step=step, expected=(models.EXECUTING,), done=(models.COMPLETED,),
                         saga_status=models.EXECUTING, now=now)

    def complete(self, lease: Lease, now: int) -> None:
        """ConfirmOrder's last write: EXECUTING -> COMPLETED, order CONFIRMED."""
        self._transition(lease, step="ConfirmOrder", expected=(models.EXECUTING,), done=(models.COMPLETED,),
                         saga_status=models.COMPLETED, now=now, extra={"status": ORDER_CONFIRMED}, finish=True)

    def begin_compensation(self, lease: Lease, failed_step: str, error: str, cause: str | None, now: int) -> bool:
        """Log the failed forward step and move to COMPENSATING. False when already compensating."""
        entry = {"status": "FAILED", "at": now, "error": error, "cause": (cause or "")[:1000]}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=to_ddb({"order_id": lease.order_id}),
                UpdateExpression="SET saga_status = :new, steps.#step = :entry, updated_at = :now, active = :active",
                # FAILED too: a parked saga's compensations, redriven by an operator, start over.
                ConditionExpression=("saga_status IN (:pending, :executing, :completed, :failed) "
                                     "AND lease_owner = :owner AND fence = :fence"),
                ExpressionAttributeNames={"#step": failed_step},
                ExpressionAttributeValues=values(
                    new=models.COMPENSATING, entry=entry, now=now, active=ACTIVE, pending=models.PENDING,
                    executing=models.EXECUTING, completed=models.COMPLETED, failed=models.FAILED,
                    owner=lease.owner, fence=lease.fence),
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise_if_transient(exc)
            raise
        return True

    def record_compensation(self, lease: Lease, step: str, now: int) -> None:
        """Log a compensation's success while COMPENSATING. A repeat is a no-op."""
        self._transition(lease, step=step, expected=(models.COMPENSATING,),
                         done=(models.COMPENSATED,), saga_status=models.COMPENSATING, now=now)

    def cancel(self, lease: Lease, now: int) -> None:
        """CancelOrder: COMPENSATING -> COMPENSATED, order CANCELLED. A repeat is a no-op."""
        self._transition(lease, step="CancelOrder", expected=(models.COMPENSATING,), done=(models.COMPENSATED,),
                         saga_status=models.COMPENSATED, now=now, extra={"status": ORDER_CANCELLED}, finish=True)

    def park(self, order_id: str, error: str, now: int) -> None:
        """ParkSaga: the compensation budget is spent; FAILED until an operator redrives it.

        Unfenced on purpose: whoever parks, the order must leave the reaper's index.
        """
        self._transition(None, step="ParkSaga", expected=(models.PENDING, models.EXECUTING, models.COMPENSATING),
                         done=(models.FAILED,), saga_status=models.FAILED, now=now,
                         extra={"parked_error": error}, finish=True, order_id=order_id)

    def _transition(
        self,
        lease: Lease | None,
        *,
        step: str,
        expected: tuple[str, ...],
        done: tuple[str, ...],
        saga_status: str,
        now: int,
        extra: dict[str, Any] | None = None,
        finish: bool = False,
        order_id: str | None = None,
    ) -> dict[str, Any]:
        """One conditional write: move the saga status and log the step, or find it already done.

        The step log entry is written only once per (step, status): when the
        condition fails because the step already ran, nothing is written again.
        With a lease, the write lands only while the lease's owner and fence hold.
        A finishing transition removes the order from the reaper's index.
        """
        order_id = lease.order_id if lease else order_id
        assert order_id is not None
        names = {"#step": step, "#st": "status"}
        vals: dict[str, Any] = {"saga_status": saga_status, "entry": {"status": "SUCCEEDED", "at": now},
                                "now": now, "succeeded": "SUCCEEDED"}
        sets = ["saga_status = :saga_status", "steps.#step = :entry", "updated_at = :now"]
        for i, (key, value) in enumerate((extra or {}).items()):
            names[f"#x{i}"] = key
            vals[f"x{i}"] = value
            sets.append(f"#x{i} = :x{i}")
        expected_keys = []
        for i, status in enumerate(expected):
            vals[f"e{i}"] = status
            expected_keys.append(f":e{i}")
        condition = (f"saga_status IN ({', '.join(expected_keys)}) "
                     "AND (attribute_not_exists(steps.#step) OR steps.#step.#st <> :succeeded)")
        if lease is not None:
            condition += " AND lease_owner = :owner AND fence = :fence"
            vals.update(owner=lease.owner, fence=lease.fence)
        update = "SET " + ", ".join(sets) + (" REMOVE active" if finish else "")
        try:
            resp = self.client.update_item(
                TableName=self.table, Key=to_ddb({"order_id": order_id}), UpdateExpression=update,
                ConditionExpression=condition, ExpressionAttributeNames=names,
                ExpressionAttributeValues=values(**vals), ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
            return self._check_already_done(order_id, lease, step, expected, done, now)
        return from_ddb(resp["Attributes"])

    def _check_already_done(self, order_id: str, lease: Lease | None, step: str, expected: tuple[str, ...],
                            done: tuple[str, ...], now: int) -> dict[str, Any]:
        order = self.get(order_id)
        if order is None:
            raise OrderNotActive(f"order {order_id} does not exist")
        status = order["saga_status"]
        step_done = order.get("steps", {}).get(step, {}).get("status") == "SUCCEEDED"
        if status in done or (status in expected and step_done):
            return order  # the step already ran: a repeat changes nothing
        if lease is not None and (order.get("lease_owner") != lease.owner or order.get("fence") != lease.fence):
            raise self._lost(lease, now)
        raise OrderNotActive(f"order {order_id} is {status}; {step} expects {' or '.join(expected)}")


def order_view(order: dict[str, Any]) -> dict[str, Any]:
    """The order as GET /orders/{id} shows it: the step log as a list in time order."""
    steps = [
        {"step": name, **{k: v for k, v in entry.items() if v not in (None, "")}}
        for name, entry in order.get("steps", {}).items()
    ]
    steps.sort(key=lambda e: (e["at"], STEP_ORDER.index(e["step"]) if e["step"] in STEP_ORDER else 99))
    keys = ("order_id", "customer_id", "status", "saga_status", "items", "lines", "total", "currency",
            "execution_arn", "created_at", "updated_at", "parked_error")
    view = {k: order[k] for k in keys if k in order}
    view["steps"] = steps
    return view
