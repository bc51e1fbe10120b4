"""The order service: the order item, its saga status and its step log.

Every write is conditional on the status it expects, so a retried step changes
nothing the second time and a step that arrives after compensation cannot land.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from order_saga import models
from order_saga.dynamo import from_ddb, is_condition_failure, raise_if_transient, to_ddb, values
from order_saga.errors import OrderNotActive
from order_saga.models import OrderRequest, PricedLine, SagaState

# Order statuses (what the customer sees), next to the saga status (what the saga did).
ORDER_RECEIVED = "RECEIVED"
ORDER_CONFIRMED = "CONFIRMED"
ORDER_CANCELLED = "CANCELLED"

# The states of the state machine in the order they can run: breaks ties in the step log's times.
STEP_ORDER = (
    "CreateOrder", "ReserveInventory", "AuthorizePayment", "ConfirmOrder",
    "RefundPayment", "VoidPayment", "ReleaseInventory", "CancelOrder", "ParkSaga",
)


class Orders:
    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    def get(self, order_id: str, consistent: bool = True) -> dict[str, Any] | None:
        resp = self.client.get_item(
            TableName=self.table, Key=to_ddb({"order_id": order_id}), ConsistentRead=consistent
        )
        return from_ddb(resp["Item"]) if "Item" in resp else None

    def accept(self, order_id: str, request: OrderRequest, execution_arn: str, now: int) -> bool:
        """Write the PENDING order for a new request. False when it already exists (a resubmission)."""
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
        }
        try:
            self.client.put_item(
                TableName=self.table,
                Item=to_ddb(item),
                ConditionExpression="attribute_not_exists(order_id)",
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise_if_transient(exc)
            raise
        return True

    def start(self, saga: SagaState, execution_id: str, lines: list[PricedLine], total: int, currency: str,
              now: int) -> dict[str, Any]:
        """CreateOrder: PENDING -> EXECUTING with the priced lines. A repeat returns the first pricing.

        An execution started without the API (an operator's StartExecution) finds no
        order: it is created here, EXECUTING, from the execution input.
        """
        priced = {"lines": [line.model_dump() for line in lines], "total": total, "currency": currency}
        if self.get(saga.order_id) is None:
            item = {
                "order_id": saga.order_id, "customer_id": saga.customer_id,
                "items": [line.model_dump() for line in saga.items], "status": ORDER_RECEIVED,
                "saga_status": models.EXECUTING, "execution_arn": execution_id,
                "steps": {"CreateOrder": {"status": "SUCCEEDED", "at": now}},
                "created_at": now, "updated_at": now, **priced,
            }
            try:
                self.client.put_item(TableName=self.table, Item=to_ddb(item),
                                     ConditionExpression="attribute_not_exists(order_id)")
                return item
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise_if_transient(exc)
                    raise
        return self._transition(
            saga.order_id,
            step="CreateOrder",
            expected=(models.PENDING,),
            done=(models.EXECUTING, models.COMPLETED),
            saga_status=models.EXECUTING,
            now=now,
            extra=priced,
        )

    def require_active(self, order_id: str) -> None:
        """Refuse early (before any side effect) when the order is not EXECUTING.

        The conditional writes are what guarantee it; this check only keeps a step
        from acting at all on an order that is plainly finished or unknown.
        """
        order = self.get(order_id)
        status = None if order is None else order.get("saga_status")
        if status not in (models.EXECUTING, models.COMPLETED):
            raise OrderNotActive(f"order {order_id} is {status or 'unknown'}; the saga is not executing")

    def record_step(self, order_id: str, step: str, now: int) -> None:
        """Log a forward step's success while the saga is executing. A repeat is a no-op."""
        self._transition(
            order_id,
            step=step,
            expected=(models.EXECUTING,),
            done=(models.COMPLETED,),
            saga_status=models.EXECUTING,
            now=now,
        )

    def complete(self, order_id: str, now: int) -> None:
        """ConfirmOrder's last write: EXECUTING -> COMPLETED, order CONFIRMED."""
        self._transition(
            order_id,
            step="ConfirmOrder",
            expected=(models.EXECUTING,),
            done=(models.COMPLETED,),
            saga_status=models.COMPLETED,
            now=now,
            extra={"status": ORDER_CONFIRMED},
        )

    def begin_compensation(self, order_id: str, failed_step: str, error: str, cause: str | None, now: int) -> bool:
        """Log the failed forward step and move to COMPENSATING. False when already compensating."""
        entry = {"status": "FAILED", "at": now, "error": error, "cause": (cause or "")[:1000]}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=to_ddb({"order_id": order_id}),
                UpdateExpression="SET saga_status = :new, steps.#step = :entry, updated_at = :now",
                ConditionExpression="saga_status IN (:pending, :executing, :completed)",
                ExpressionAttributeNames={"#step": failed_step},
                ExpressionAttributeValues=values(
                    new=models.COMPENSATING,
                    entry=entry,
                    now=now,
                    pending=models.PENDING,
                    executing=models.EXECUTING,
                    completed=models.COMPLETED,
                ),
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise_if_transient(exc)
            raise
        return True

    def record_compensation(self, order_id: str, step: str, now: int) -> None:
        """Log a compensation's success while COMPENSATING. A repeat is a no-op."""
        self._transition(
            order_id,
            step=step,
            expected=(models.COMPENSATING,),
            done=(models.COMPENSATED, models.FAILED),
            saga_status=models.COMPENSATING,
            now=now,
        )

    def cancel(self, order_id: str, now: int) -> None:
        """CancelOrder: COMPENSATING -> COMPENSATED, order CANCELLED. A repeat is a no-op."""
        self._transition(
            order_id,
            step="CancelOrder",
            expected=(models.COMPENSATING,),
            done=(models.COMPENSATED,),
            saga_status=models.COMPENSATED,
            now=now,
            extra={"status": ORDER_CANCELLED},
        )

    def park(self, order_id: str, error: str, now: int) -> None:
        """ParkSaga: the compensation budget is spent; FAILED until an operator redrives it."""
        self._transition(
            order_id,
            step="ParkSaga",
            expected=(models.PENDING, models.EXECUTING, models.COMPENSATING),
            done=(models.FAILED,),
            saga_status=models.FAILED,
            now=now,
            extra={"parked_error": error},
        )

    def _transition(
        self,
        order_id: str,
        *,
        step: str,
        expected: tuple[str, ...],
        done: tuple[str, ...],
        saga_status: str,
        now: int,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One conditional write: move the saga status and log the step, or find it already done.

        The step log entry is written only once per (step, status): when the
        condition fails because the step already ran, nothing is written again.
        """
        names = {"#step": step}
        vals: dict[str, Any] = {"saga_status": saga_status, "entry": {"status": "SUCCEEDED", "at": now}, "now": now}
        sets = ["saga_status = :saga_status", "steps.#step = :entry", "updated_at = :now"]
        for i, (key, value) in enumerate((extra or {}).items()):
            names[f"#x{i}"] = key
            vals[f"x{i}"] = value
            sets.append(f"#x{i} = :x{i}")
        expected_keys = []
        for i, status in enumerate(expected):
            vals[f"e{i}"] = status
            expected_keys.append(f":e{i}")
        vals["succeeded"] = "SUCCEEDED"
        condition = (
            f"saga_status IN ({', '.join(expected_keys)}) "
            "AND (attribute_not_exists(steps.#step) OR steps.#step.#st <> :succeeded)"
        )
        names["#st"] = "status"
        try:
            resp = self.client.update_item(
                TableName=self.table,
                Key=to_ddb({"order_id": order_id}),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values(**vals),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise_if_transient(exc)
                raise
            return self._check_already_done(order_id, step, expected, done)
        return from_ddb(resp["Attributes"])

    def _check_already_done(
        self, order_id: str, step: str, expected: tuple[str, ...], done: tuple[str, ...]
    ) -> dict[str, Any]:
        order = self.get(order_id)
        if order is None:
            raise OrderNotActive(f"order {order_id} does not exist")
        status = order["saga_status"]
        step_done = order.get("steps", {}).get(step, {}).get("status") == "SUCCEEDED"
        if status in done or (status in expected and step_done):
            return order  # the step already ran: a repeat changes nothing
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
