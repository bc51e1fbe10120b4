"""ApplyCoupon: hold one redemption of the order's coupon, within its global and per-customer limits (only for an
order with a coupon: the state machine's RouteOrder Choice). A coupon refused for a business reason fails the step
under the `fail` policy (CouponFailurePolicy); under `continue` the order goes on at its original amount, and
records why."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.promotions import Promotions, coupon_policy_from_env
from order_saga.step import dynamodb_store, saga_step

TIMING = Timing.from_env()
COUPON_FAILURE_POLICY = coupon_policy_from_env()
store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], TIMING)
promotions = Promotions(store, os.environ["PROMOTIONS_TABLE"], TIMING)
# Only under `continue` does this function write the payments' amounts (and only then does its role allow it).
payments = Payments(store, os.environ["PAYMENTS_TABLE"], timing=TIMING)


@saga_step("ApplyCoupon", store)
def lambda_handler(saga: SagaState, execution_id: str) -> SagaState:
    return steps.apply_coupon(store, orders, promotions, saga, execution_id, now_ms(), COUPON_FAILURE_POLICY,
                              payments)
