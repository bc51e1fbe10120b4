"""Pydantic models: the saga state carried by the state machine, the reaper's work, the events ParkSaga reads.
The HTTP API's bodies are in api.py."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
MAX_METHODS = 3
Quantity = Annotated[int, Field(ge=1, le=1000, strict=True)]
MAX_LINES = 50

# Saga statuses (the order item's `saga_status`).
PENDING = "PENDING"
EXECUTING = "EXECUTING"
CONFIRMING = "CONFIRMING"  # past the pivot: ConfirmOrder committed the stock; from here the saga only goes forward
COMPLETED = "COMPLETED"
COMPENSATING = "COMPENSATING"
COMPENSATED = "COMPENSATED"
FAILED = "FAILED"


def order_id_for(customer_id: str, idempotency_key: str) -> str:
    """The order id, and so the execution name, that a customer's Idempotency-Key stands for. Keys are scoped
    per customer: two customers choosing the same key place two orders."""
    scoped = json.dumps([customer_id, idempotency_key], separators=(",", ":"))
    return "ord_" + hashlib.sha256(scoped.encode()).hexdigest()[:32]


def request_hash(body: dict) -> str:
    """What a resubmission must match to replay the first answer: the request body, canonically."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    quantity: Quantity


class PricedLine(OrderLine):
    unit_price: int  # minor units (cents), from the catalog


class StepFailure(BaseModel):
    """What a Catch puts under `$.failures.<State>`: the error name and cause."""

    model_config = ConfigDict(populate_by_name=True)

    error: str = Field(alias="Error")
    cause: str | None = Field(default=None, alias="Cause")


class Outcome(BaseModel):
    error: str
    cause: str


class SagaState(BaseModel):
    """The state machine's data: the execution input (from the API) plus what each step adds.

    It never carries the card token: the token stays in the payments table.
    """

    order_id: str
    customer_id: str
    lease_expires_at: int | None = None  # the lease's expiry as last written (the API, then the steps)
    deadline_at: int | None = None  # the saga's deadline (epoch ms); no lease is renewed past it
    lines: list[PricedLine] | None = None  # added by ReserveInventory (its lease), from the order the API priced
    total: int | None = None  # added by ReserveInventory (its lease), minor units
    currency: str | None = None
    # From the API: the order's coupon code, present only when there is one; ApplyCoupon drops it when the order goes
    # on without it (the `continue` coupon policy): from then on the saga holds no redemption.
    coupon: str | None = None
    methods: list[int] | None = None  # from the API: the payment methods' numbers, when more than one
    fence: int | None = None  # added by ReserveInventory (its lease): the lease's fencing token
    authorization: str | None = None  # added by AuthorizePayment (gateway reference)
    failures: dict[str, StepFailure] = Field(default_factory=dict)  # added by Catch
    outcome: Outcome | None = None  # added by CancelOrder: the error the execution ends with
    confirmed: bool | None = None  # added by RefundPayment when it found the order past the pivot and finished it

    def require_priced(self) -> tuple[list[PricedLine], int]:
        if self.lines is None or self.total is None:
            raise ValueError("the saga state has no priced lines: ReserveInventory has not taken the lease")
        return self.lines, self.total

    def dump(self) -> dict:
        data = self.model_dump(mode="json", exclude_none=True, by_alias=True)
        if not self.failures:
            data.pop("failures", None)
        return data


class StepEvent(BaseModel):
    """The payload every saga task receives: the saga state and the execution that runs it (and, inside the
    AuthorizePayments Map, the payment method of the iteration)."""

    saga: SagaState
    execution_id: str
    method: int | None = None
    redrive_count: int = 0  # $$.Execution.RedriveCount, given to the compensations: a redrive claims a parked order


class ReaperWork(BaseModel):
    """One item of the reaper's work: what its sweep sends to ReaperQueue, one message each, and ReaperWorker does.

    `order`: an abandoned order, with the lease expiry the sweep saw (the takeover is conditional on it, so a
    duplicate message, or one for an order renewed meanwhile, does nothing); `reservation`: an expired reservation,
    by its order id; `payment`: a payment whose reconciliation is due, by its payment id."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["order", "reservation", "payment"]
    id: Annotated[str, Field(min_length=1, max_length=200)]
    lease_expires_at: int | None = None

    @model_validator(mode="after")
    def _an_order_names_its_lease(self) -> ReaperWork:
        if (self.kind == "order") != (self.lease_expires_at is not None):
            raise ValueError("lease_expires_at is given for an order, and only for an order")
        return self


class ExecutionStatusChange(BaseModel):
    """The detail of Step Functions' "Step Functions Execution Status Change" event on EventBridge (the fields
    ParkSaga reads; `startDate` in epoch milliseconds, `input` the execution's input as text)."""

    model_config = ConfigDict(populate_by_name=True)

    execution_arn: str = Field(alias="executionArn")
    state_machine_arn: str = Field(alias="stateMachineArn")
    status: str
    start_date: int = Field(alias="startDate")
    input: str | None = None

    def order_id(self) -> str | None:
        try:
            data = json.loads(self.input or "{}")
        except ValueError:
            return None
        order_id = data.get("order_id") if isinstance(data, dict) else None
        return order_id if isinstance(order_id, str) else None
