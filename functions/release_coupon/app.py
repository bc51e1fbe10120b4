"""ReleaseCoupon: compensates ApplyCoupon. Gives the order's redemption back (both counts down), or leaves a
tombstone so a late ApplyCoupon cannot hold one."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.promotions import Promotions
from order_saga.step import count, dynamodb_store, saga_step

TIMING = Timing.from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
promotions = Promotions(store, os.environ["PROMOTIONS_TABLE"], TIMING)


@saga_step("ReleaseCoupon", store)
def lambda_handler(saga: SagaState, execution_id: str, redrive_count: int = 0) -> SagaState:
    now = now_ms()
    if not saga.coupon:  # the CouponHeld Choice routes here only with a coupon
        return saga
    saga, acted = steps.compensate(store, orders, saga, execution_id, "ReleaseCoupon", now,
                                   steps.undo_coupon(promotions, saga.coupon, saga.order_id, now),
                                   redrive_count=redrive_count)
    if acted:
        count("CompensationRun", "ReleaseCoupon")
    return saga
