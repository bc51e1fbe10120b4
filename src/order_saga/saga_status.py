"""The saga statuses (the order item's `saga_status`): plain strings, importable without pydantic (a handler's
cold init imports the models only when a request needs them)."""

# Saga statuses (the order item's `saga_status`).
PENDING = "PENDING"
EXECUTING = "EXECUTING"
CONFIRMING = "CONFIRMING"  # past the pivot: ConfirmOrder committed the stock; from here the saga only goes forward
COMPLETED = "COMPLETED"
COMPENSATING = "COMPENSATING"
COMPENSATED = "COMPENSATED"
FAILED = "FAILED"
