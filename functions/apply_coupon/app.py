"""ApplyCoupon: hold one redemption of the order's coupon, within its global and per-customer limits (only for an
order with a coupon: the state machine's RouteOrder Choice)."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.promotions import Promotions
from order_saga.step import dynamodb_store, saga_step

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())
promotions = Promotions(store, os.environ["PROMOTIONS_TABLE"])


@saga_step("ApplyCoupon", store)
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    return steps.apply_coupon(store, orders, promotions, saga, execution_id, now_ms())
