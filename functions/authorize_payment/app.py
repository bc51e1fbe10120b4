"""AuthorizePayment: hold a payment method's amount on its card (nothing is captured yet); once per method in
the AuthorizePayments Map of a split payment."""

from __future__ import annotations

import os

from order_saga import saga as steps
from order_saga.config import Timing
from order_saga.dynamo import now_ms
from order_saga.gateway import gateway_from_env
from order_saga.models import SagaState
from order_saga.orders import Orders
from order_saga.payments import Payments
from order_saga.step import dynamodb_store, saga_step

store = dynamodb_store()
orders = Orders(store, os.environ["ORDERS_TABLE"], Timing.from_env())
payments = Payments(store, os.environ["PAYMENTS_TABLE"], gateway_from_env(store), Timing.from_env())


@saga_step("AuthorizePayment", store)
def lambda_handler(saga: SagaState, execution_id: str, method: int = 1) -> SagaState:
    return steps.authorize_payment(store, orders, payments, saga, execution_id, now_ms(), method)
