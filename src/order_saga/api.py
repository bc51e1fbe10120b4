"""The HTTP API's bodies (OrdersApi): the order request, the answers and the order view. Kept apart from
models.py, which every function imports: building these models is cold start that the saga's steps never use."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from order_saga.models import MAX_LINES, MAX_METHODS, OrderLine, PricedLine

CouponCode = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Z0-9][A-Z0-9-]*$")]
CardToken = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class PaymentMethod(BaseModel):
    """One method of a split payment: a card token and the amount (minor units) it pays."""

    model_config = ConfigDict(extra="forbid")

    token: CardToken
    amount: Annotated[int, Field(ge=1, le=100_000_000, strict=True)]


class OrderRequest(BaseModel):
    """Body of POST /orders. There is no price: prices come from the catalog, and the coupon's discount is priced
    by the server. No customer: the customer is the signed-in user (the token's `sub`), so a body naming one is
    refused as an unknown field. One payment method (`payment_token`, which pays the total) or a split
    (`payment`: 1 to 3 methods whose amounts sum exactly to the total after discount), never both. One order per
    request: the body is this one JSON object, each key once (an array of orders is refused)."""

    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[OrderLine], Field(min_length=1, max_length=MAX_LINES)]
    payment_token: CardToken | None = None
    payment: Annotated[list[PaymentMethod], Field(min_length=1, max_length=MAX_METHODS)] | None = None
    coupon: CouponCode | None = None

    @model_validator(mode="after")
    def _one_way_to_pay(self) -> OrderRequest:
        if (self.payment_token is None) == (self.payment is None):
            raise ValueError("pay with `payment_token` (one card) or `payment` (1 to 3 methods), exactly one of them")
        return self

    def methods(self, total: int) -> list[PaymentMethod]:
        """The payment methods; a single `payment_token` pays the whole total."""
        if self.payment is not None:
            return self.payment
        # Not validated: the whole total, whatever the catalog's prices make it (the client chose no amount).
        return [PaymentMethod.model_construct(token=str(self.payment_token), amount=total)]

    @field_validator("items")
    @classmethod
    def _one_line_per_sku(cls, items: list[OrderLine]) -> list[OrderLine]:
        seen: set[str] = set()
        for line in items:
            if line.sku in seen:
                raise ValueError(f"sku {line.sku!r} appears more than once; send one line per sku")
            seen.add(line.sku)
        return items


# ---- Responses (documented in the OpenAPI document) ----
class OrderLinks(BaseModel):
    order: str


class OrderAccepted(BaseModel):
    order_id: str
    status: str
    links: OrderLinks


class StepLogEntry(BaseModel):
    step: str
    status: str
    at: int  # epoch milliseconds
    error: str | None = None
    cause: str | None = None


class OrderDocument(BaseModel):
    order_id: str
    customer_id: str
    status: str
    saga_status: str
    items: list[OrderLine]
    lines: list[PricedLine] | None = None
    subtotal: int | None = None
    coupon: str | None = None
    discount: int | None = None
    coupon_outcome: str | None = None  # APPLIED, or NOT_APPLIED (the `continue` policy), once ApplyCoupon decided
    coupon_error: str | None = None  # NOT_APPLIED: why (CouponInvalid, CouponExpired, CouponExhausted)
    coupon_cause: str | None = None
    total: int | None = None
    currency: str | None = None
    payments: list[dict[str, str | int]] | None = None
    created_at: int
    updated_at: int
    parked_error: str | None = None
    steps: list[StepLogEntry]


class ProblemBody(BaseModel):
    error: str
    details: list[dict[str, str]] | None = None
    unknown_skus: list[str] | None = None
    coupon: str | None = None
    open_orders: int | None = None  # 429: the customer's open orders
    limit: int | None = None  # 429: the most a customer may have open (MaxOpenOrdersPerCustomer)
