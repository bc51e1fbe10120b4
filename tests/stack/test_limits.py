"""Per-customer limits under load (docs/api.md, "Limits"): one client floods POST /orders while other customers
place theirs. The flooder gets 429s of both kinds (the open-orders cap, the web ACL's per-client rate), each with
Retry-After, and nothing is written for them; the others get 202 and their sagas finish. Invariants, not exact
counts: which request meets which limit depends on the machine's load.

Embedded only: it starts its own stack with low limits (MaxOpenOrdersPerCustomer=3, ApiClientRateLimit=10); a
deployed stack would need those parameters, and WAF's detection latency of some seconds (docs/api.md)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.stack.conftest import DEPLOYED, start_embedded, stop
from tests.stack.support import place, wait_all

CAP = 3
ITEM = [{"sku": "MUG-BLUE", "quantity": 1}]

pytestmark = pytest.mark.skipif(DEPLOYED, reason="starts its own embedded stack with low limits")


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    process, target = start_embedded(tmp_path_factory.mktemp("limits"),
                                     overrides=(f"MaxOpenOrdersPerCustomer={CAP}", "ApiClientRateLimit=10"))
    try:
        yield target
    finally:
        stop(process)


def raw_post(target, headers: dict[str, str]) -> tuple[int, dict, str | None]:
    body = json.dumps({"items": ITEM, "payment_token": "tok_hang"}).encode()
    request = urllib.request.Request(f"{target.api_url}/orders", data=body, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json",
                                              "Idempotency-Key": uuid.uuid4().hex, **headers})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - the stack under test
            return response.status, json.loads(response.read()), response.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), exc.headers.get("Retry-After")


def test_one_client_flooding_gets_429s_and_the_others_are_served(limited):
    flooder = limited.auth("flooder")
    with ThreadPoolExecutor(max_workers=6) as pool:
        flood = pool.submit(lambda: list(pool.map(lambda _: raw_post(limited, flooder), range(40))))
        others = [pool.submit(place, limited, ITEM, "tok_approve", None, f"quiet-{n}") for n in range(3)]
        answers = flood.result()
        served = [o.result() for o in others]
    statuses = {status for status, _, _ in answers}
    assert statuses <= {202, 429}, answers
    accepted = {body["order_id"] for status, body, _ in answers if status == 202}
    assert 1 <= len(accepted) <= CAP
    refused = [(body, after) for status, body, after in answers if status == 429]
    assert all(after is not None and int(after) >= 1 for _, after in refused), refused
    capped = [body for body, _ in refused if "open_orders" in body]
    rated = [body for body, _ in refused if "too many requests from this client" in body.get("error", "")]
    assert capped, "no 429 from the open-orders cap"
    assert rated, "no 429 from the per-client rate limit"
    assert all(body["limit"] == CAP for body in capped)
    # Nothing written for a refused request: the flooder's orders are exactly the accepted ones, all open.
    for order_id in accepted:
        assert limited.order(order_id) is not None
    customer = limited.order(next(iter(accepted)))["customer_id"]
    counted = limited.get("OrdersTableName", order_id="CUSTOMER#" + customer) or {}
    assert set(counted.get("open_orders") or ()) == accepted  # tok_hang: still open, and only those
    # The other customers were served, and their sagas finish.
    ended = wait_all(limited, [o["execution_arn"] for o in served], timeout=300)
    assert all(e["status"] == "SUCCEEDED" for e in ended.values()), ended
