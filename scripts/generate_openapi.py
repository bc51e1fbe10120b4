"""Write docs/openapi.json from the API function's resolver (the routes and models are the source)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

# The module reads its configuration at import, as on Lambda; no call is made to AWS here.
for name in ("ORDERS_TABLE", "INVENTORY_TABLE", "PAYMENTS_TABLE", "LEASE_SECONDS", "SAGA_DEADLINE_SECONDS",
             "RESERVATION_TTL_SECONDS", "INDEX_SHARDS", "GATEWAY_TIMEOUT_SECONDS", "PROMOTIONS_TABLE"):
    os.environ.setdefault(name, "1" if name.endswith(("SECONDS", "SHARDS")) else "unused")
os.environ.setdefault("STATE_MACHINE_ARN", "arn:aws:states:us-east-1:123456789012:stateMachine:unused")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer  # noqa: E402

from functions.orders_api.app import app  # noqa: E402

TITLE, VERSION = "Order saga API", "1.0.0"
# What the template's API enforces (its Cognito authorizer on every route): a customer's ID token.
SECURITY_SCHEMES = {"CustomerIdToken": HTTPBearer(
    bearerFormat="JWT",
    description="The signed-in customer's Cognito ID token (Authorization: Bearer <token>); the customer is its "
                "`sub`. Get one with `python -m sagalocal token` (docs/operations.md).")}


def document() -> dict:
    return json.loads(app.get_openapi_json_schema(
        title=TITLE, version=VERSION, description="Place orders through the order saga and read them.",
        security_schemes=SECURITY_SCHEMES, security=[{"CustomerIdToken": []}]))


if __name__ == "__main__":
    out = ROOT / "docs/openapi.json"
    out.write_text(json.dumps(document(), indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
