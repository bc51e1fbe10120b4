"""Business and transient errors.

The class names are the state machine's error API: Step Functions sees the
name of the exception a handler raises as the task's error, and the ASL catches
and retries by that name. Renaming a class is a breaking change.
"""

from __future__ import annotations


class SagaError(Exception):
    """Base class of every error the saga raises on purpose."""


class BusinessError(SagaError):
    """A definite outcome: retrying cannot change it, so it is never retried."""


class TransientError(SagaError):
    """A temporary failure: the state machine retries it with backoff."""


class UnknownItem(BusinessError):
    """An order line names a sku that is not in the catalog, or the lines are priced in several currencies.

    The API answers it with 422 before any saga starts."""


class InsufficientStock(BusinessError):
    """Not enough available stock to reserve every line of the order."""


class PaymentDeclined(BusinessError):
    """The payment gateway declined the authorization."""


class OrderNotActive(BusinessError):
    """The order is no longer in a state this step may act on (e.g. already compensated)."""


class ReservationReleased(BusinessError):
    """The reservation was released (compensated) before this step ran: it must not land."""


class PaymentVoided(BusinessError):
    """The payment was voided or refunded (compensated) before this step ran: it must not land."""


class PaymentNotAuthorized(BusinessError):
    """Capture was asked for a payment that holds no authorization."""


class OrderLocked(BusinessError):
    """Another execution holds the order's lease: this execution is refused and changes nothing."""


class LeaseLost(BusinessError):
    """This execution no longer holds the order's lease (it expired, or the reaper took the order over)."""


class ReservationExpired(BusinessError):
    """The reservation outlived its expiry before ConfirmOrder could commit it."""


class CouponInvalid(BusinessError):
    """The order's coupon does not exist (any more), or does not apply to the order's currency."""


class CouponExpired(BusinessError):
    """The order's coupon is outside its validity window."""


class CouponExhausted(BusinessError):
    """The coupon reached its global number of redemptions, or the customer's own limit."""


class PaymentGatewayUnavailable(TransientError):
    """The payment gateway failed temporarily (timeout, 5xx, throttling)."""


class StoreThrottled(TransientError):
    """DynamoDB kept throttling, failing internally or losing responses past the handler's own retries."""


class StoreContention(TransientError):
    """DynamoDB kept cancelling a write for a conflicting concurrent write past the handler's own retries."""


class ConcurrentUpdate(TransientError):
    """Another writer changed the item between our read and our conditional write; try again."""


# The names the state machine treats as transient (kept in sync by a unit test).
TRANSIENT_ERROR_NAMES = ("TransientError", "PaymentGatewayUnavailable", "StoreThrottled", "StoreContention",
                         "ConcurrentUpdate")


class PublishFailed(TransientError):
    """EventBridge refused an outcome event: the stream goes on from its record, retried (docs/events.md)."""
