"""A local HTTP fake of the parts of Stripe's API the Stripe adapter calls (src/order_saga/stripe_gateway.py).

It follows Stripe's documented requests, responses and errors for exactly these endpoints, no more:

  POST /v1/payment_intents                 create (and, with confirm=true, confirm) a PaymentIntent
  GET  /v1/payment_intents/{id}            retrieve one (expand[]=latest_charge expands its charge)
  GET  /v1/payment_intents/search          search by metadata (query=metadata['k']:'v' [AND ...], limit, page)
  POST /v1/payment_intents/{id}/capture    capture a requires_capture intent (-> succeeded)
  POST /v1/payment_intents/{id}/cancel     cancel an uncaptured intent (-> canceled)
  POST /v1/refunds                         refund a succeeded intent's charge (payment_intent=...)

What it follows, from Stripe's documentation:

- Requests are form-encoded (`metadata[k]=v`, lists as `expand[]=x` or `expand[0]=x`), authenticated with the
  secret key as a Bearer token; a missing or wrong key is a 401 (https://docs.stripe.com/api/authentication).
- Errors are `{"error": {"type", "code", "decline_code", "message", "param", "payment_intent"}}`: 400 invalid
  request, 401 no valid key, 402 the request failed (card_error), 404 no such object, 409 a conflicting request
  (another in-flight request with the same idempotency key: `idempotency_key_in_use`), 429 too many requests, 5xx
  Stripe's own (https://docs.stripe.com/api/errors, https://docs.stripe.com/error-codes).
- Idempotency (https://docs.stripe.com/api/idempotent_requests, https://docs.stripe.com/idempotency): a POST with an
  `Idempotency-Key` saves the status and body of the first request once its endpoint began executing, whether it
  succeeded or failed; a repeat with the same key gets that saved response, with the header `Idempotent-Replayed:
  true`; a repeat with other parameters (or another endpoint) is refused with a 400 `idempotency_error`; a repeat
  while the first is still executing is a 409. Keys may be pruned once at least 24 h old (`forget_keys` does it).
- PaymentIntents with `capture_method=manual` (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method,
  https://docs.stripe.com/api/payment_intents): a confirmed card authorization leaves the intent `requires_capture`;
  capture moves it to `succeeded`; cancel to `canceled` (allowed from requires_payment_method, requires_capture,
  requires_confirmation, requires_action); capture of anything but requires_capture, or cancel of a succeeded or
  canceled intent, is a 400 `payment_intent_unexpected_state`. An uncaptured intent is canceled by Stripe after 7
  days (`expire` does it now). A declined confirmation is a 402 card_error whose `payment_intent` is left
  `requires_payment_method`; a card that needs 3-D Secure leaves it `requires_action`.
- Search (https://docs.stripe.com/api/payment_intents/search, https://docs.stripe.com/search): `query` in Stripe's
  search query language, of which the fake knows the clauses `metadata['key']:'value'` (exact match; a quote or
  backslash inside escaped with a backslash) joined by AND, anything else a 400 on param `query`; `limit` 1 to 100
  (10 by default); `page` the cursor a previous result's `next_page` gave; `expand[]=data.latest_charge`. The answer
  is `{"object": "search_result", "url": "/v1/payment_intents/search", "has_more", "data", "next_page"}`, newest
  first. Search is eventually consistent ("data is searchable in less than a minute ... up to an hour behind during
  outages"): an intent is found only `search_lag` seconds after its creation (0 by default; a fake-only control).
- Refunds (https://docs.stripe.com/api/refunds/create): of a succeeded intent's charge; a second full refund is a
  400 `charge_already_refunded`.
- The test PaymentMethods (https://docs.stripe.com/testing): pm_card_visa, pm_card_mastercard, pm_card_amex approve;
  pm_card_chargeDeclined (card_declined / generic_decline), pm_card_chargeDeclinedInsufficientFunds
  (insufficient_funds), pm_card_chargeDeclinedExpiredCard (expired_card), pm_card_chargeDeclinedProcessingError
  (processing_error) decline with a 402; pm_card_authenticationRequired needs 3-D Secure (requires_action). Any other
  is a 400 resource_missing, as an unknown PaymentMethod id.

Fake-only controls (none of them is Stripe's):
- `pm_card_fakeSlow_<S>`: approves, but the confirmation takes S seconds, whatever the client does: a client that
  gives up sooner leaves the request executing, and the authorization lands S s after the request (a repeat
  meanwhile gets the 409). The unknown outcome of a timed-out call, on demand.
- `fail_next(status, count)`: the next `count` requests fail with that status (429 rate_limit, 500 api_error, ...)
  before their endpoint executes, so, as at Stripe for a request refused before it ran, no idempotent result is saved.
- `expire(intent_id)`: the 7-day automatic cancellation of an uncaptured intent, now.
- `forget_keys()`: the idempotency keys pruned (as Stripe may after 24 h).
- `search_lag`: seconds after its creation before an intent is found by search (Stripe's index lag).
- `requests`: every request received (method, path, idempotency key), to check what a client sent.

It binds to 127.0.0.1 on an ephemeral port; `python -m sagalocal.stripe_fake` serves it until stopped.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_sagalocal_fake"  # the fake's secret key (no real key: the fake never sees one)
APPROVES = ("pm_card_visa", "pm_card_mastercard", "pm_card_amex", "pm_card_visa_debit")
DECLINES = {  # test PaymentMethod -> (code, decline_code)
    "pm_card_chargeDeclined": ("card_declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds"),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card"),
    "pm_card_chargeDeclinedProcessingError": ("processing_error", None),
}
NEEDS_AUTHENTICATION = "pm_card_authenticationRequired"
SLOW = re.compile(r"pm_card_fakeSlow_(\d+(?:\.\d+)?)")
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action")


def listed(params: list[tuple[str, str]], name: str) -> list[str]:
    """A list parameter, form-encoded as `name[]=a&name[]=b` or, as Stripe's SDKs send it, `name[0]=a&name[1]=b`."""
    return [v for k, v in params if re.fullmatch(rf"{name}\[\d*\]", k)]


class Failure(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.status, self.error = status, error


def error(status: int, kind: str, message: str, code: str | None = None, **more: Any) -> Failure:
    return Failure(status, {"type": kind, "message": message, **({"code": code} if code else {}), **more})


@dataclass
class Saved:
    """An idempotency key's first request and, once it ran, its response."""

    method: str
    path: str
    params: list[tuple[str, str]]
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    body: bytes = b""


class StripeFake:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, Saved] = {}
        self.failures: list[int] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.search_lag = 0.0
        self.indexed_at: dict[str, float] = {}  # intent id -> when search finds it (time.time())
        self.server: ThreadingHTTPServer | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> StripeFake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake.handle(self)

            def do_POST(self) -> None:  # noqa: N802
                fake.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="stripe-fake", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None, "the fake is not started"
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> StripeFake:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- fake-only controls ------------------------------------------------------------------------------
    def fail_next(self, status: int, count: int = 1) -> None:
        with self.lock:
            self.failures += [status] * count

    def expire(self, intent_id: str) -> None:
        with self.lock:
            intent = self.intents[intent_id]
            if intent["status"] in CANCELABLE:
                intent.update(status="canceled", cancellation_reason="automatic", canceled_at=int(time.time()),
                              amount_capturable=0)

    def forget_keys(self) -> None:
        with self.lock:
            self.keys = {k: v for k, v in self.keys.items() if not v.done.is_set()}

    def intents_with(self, key: str, value: str) -> list[dict[str, Any]]:
        """Every intent whose metadata has key=value (what a test reads; Stripe's dashboard shows as much)."""
        with self.lock:
            return [json.loads(json.dumps(i)) for i in self.intents.values() if i["metadata"].get(key) == value]

    # ---- HTTP --------------------------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length).decode() if length else ""
        params = parse_qsl(body if request.command == "POST" else url.query, keep_blank_values=True)
        key = request.headers.get("Idempotency-Key") if request.command == "POST" else None
        with self.lock:
            self.requests.append((request.command, url.path, key))
        headers: dict[str, str] = {}
        try:
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                raise error(401, "invalid_request_error", "Invalid API Key provided.")
            with self.lock:
                failure = self.failures.pop(0) if self.failures else None
            if failure is not None:
                raise error(failure, "api_error" if failure >= 500 else "invalid_request_error",
                            f"(fake) injected failure {failure}", "rate_limit" if failure == 429 else None)
            if key is None:
                status, payload = self.route(request.command, url.path, params)
                data = json.dumps(payload).encode()
            else:
                status, data, replayed = self.idempotent(key, request.command, url.path, params)
                if replayed:
                    headers["Idempotent-Replayed"] = "true"
        except Failure as failed:
            status, data = failed.status, json.dumps({"error": failed.error}).encode()
        self.respond(request, status, data, headers)

    @staticmethod
    def respond(request: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str]) -> None:
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            request.send_header("Request-Id", "req_" + secrets.token_hex(7))
            for name, value in headers.items():
                request.send_header(name, value)
            request.end_headers()
            request.wfile.write(data)
        except OSError:
            pass  # the client gave up (its timeout): the request ran all the same

    def idempotent(self, key: str, method: str, path: str, params: list[tuple[str, str]]) -> tuple[int, bytes, bool]:
        with self.lock:
            saved = self.keys.get(key)
            if saved is None:
                saved = self.keys[key] = Saved(method, path, sorted(params))
                first = True
            else:
                first = False
        if not first:
            if (saved.method, saved.path, saved.params) != (method, path, sorted(params)):
                raise error(400, "idempotency_error",
                            f"Keys for idempotent requests can only be used with the same parameters they were first "
                            f"used with. Try using a key other than '{key}' if you meant to execute a different "
                            f"request.")
            if not saved.done.is_set():
                raise error(409, "invalid_request_error",
                            "There is currently another in-progress request using this Stripe-Idempotency-Key. "
                            "Please try again later.", "idempotency_key_in_use")
            return saved.status, saved.body, True
        try:
            status, payload = self.route(method, path, params)
            data = json.dumps(payload).encode()
        except Failure as failed:
            status, data = failed.status, json.dumps({"error": failed.error}).encode()
        saved.status, saved.body = status, data
        saved.done.set()
        return status, data, False

    def route(self, method: str, path: str, params: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        form = dict(params)
        if method == "POST" and path == "/v1/payment_intents":
            return 200, self.create(params, form)
        if method == "POST" and path == "/v1/refunds":
            return 200, self.refund(form)
        if method == "GET" and path == "/v1/payment_intents/search":
            return 200, self.search(params, form)
        found = re.fullmatch(r"/v1/payment_intents/([A-Za-z0-9_]+)(?:/(capture|cancel))?", path)
        if found is None:
            raise error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")
        intent_id, action = found.groups()
        if method == "GET" and action is None:
            with self.lock:
                return 200, self.view(self.intent(intent_id), expand=listed(params, "expand"))
        if method == "POST" and action == "capture":
            return 200, self.capture(intent_id)
        if method == "POST" and action == "cancel":
            return 200, self.cancel(intent_id, form.get("cancellation_reason"))
        raise error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    # ---- the endpoints -----------------------------------------------------------------------------------
    def intent(self, intent_id: str) -> dict[str, Any]:
        if intent_id not in self.intents:
            raise error(404, "invalid_request_error", f"No such payment_intent: '{intent_id}'", "resource_missing",
                        param="intent")
        return self.intents[intent_id]

    def view(self, intent: dict[str, Any], expand: list[str] = ()) -> dict[str, Any]:
        shown = json.loads(json.dumps(intent))
        if "latest_charge" in expand and intent.get("latest_charge"):
            shown["latest_charge"] = json.loads(json.dumps(self.charges[intent["latest_charge"]]))
        return shown

    def search(self, params: list[tuple[str, str]], form: dict[str, str]) -> dict[str, Any]:
        query = form.get("query")
        if not query:
            raise error(400, "invalid_request_error", "Missing required param: query.", "parameter_missing",
                        param="query")
        wanted: dict[str, str] = {}
        for clause in re.split(r"\s+AND\s+", query.strip()):
            clause_found = re.fullmatch(r"metadata\[(['\"])(.+?)\1\]:(['\"])((?:\\.|(?!\3).)*)\3", clause)
            if clause_found is None:
                raise error(400, "invalid_request_error", f"(fake) unsupported search query clause: {clause!r}; the "
                            f"fake knows metadata['key']:'value' joined by AND", "parameter_invalid_string",
                            param="query")
            wanted[clause_found.group(2)] = re.sub(r"\\(.)", r"\1", clause_found.group(4))
        try:
            limit = int(form.get("limit", "10"))
            start = int(form.get("page") or "0")
        except ValueError:
            raise error(400, "invalid_request_error", "Invalid integer or page cursor.", "parameter_invalid_integer",
                        param="limit") from None
        if not 1 <= limit <= 100:
            raise error(400, "invalid_request_error", "Limit can range between 1 and 100.",
                        "parameter_invalid_integer", param="limit")
        expand = [e.removeprefix("data.") for e in listed(params, "expand") if e.startswith("data.")]
        with self.lock:
            now = time.time()
            matching = [i for i in self.intents.values() if self.indexed_at.get(i["id"], 0.0) <= now
                        and all(i["metadata"].get(k) == v for k, v in wanted.items())]
            matching.sort(key=lambda i: i["created"], reverse=True)
            page = matching[start:start + limit]
            more = start + limit < len(matching)
            return {"object": "search_result", "url": "/v1/payment_intents/search", "has_more": more,
                    "data": [self.view(i, expand=expand) for i in page],
                    "next_page": str(start + limit) if more else None}

    def create(self, params: list[tuple[str, str]], form: dict[str, str]) -> dict[str, Any]:
        try:
            amount = int(form.get("amount", ""))
        except ValueError:
            raise error(400, "invalid_request_error", "Missing required param: amount.", "parameter_missing",
                        param="amount") from None
        if amount < 1:
            raise error(400, "invalid_request_error", "This value must be greater than or equal to 1.",
                        "parameter_invalid_integer", param="amount")
        if not re.fullmatch(r"[a-z]{3}", form.get("currency", "")):
            raise error(400, "invalid_request_error", "Invalid currency.", "parameter_invalid_empty",
                        param="currency")
        pm = form.get("payment_method")
        if pm is not None and pm not in APPROVES and pm not in DECLINES and pm != NEEDS_AUTHENTICATION \
                and not SLOW.fullmatch(pm):
            raise error(400, "invalid_request_error", f"No such PaymentMethod: '{pm}'", "resource_missing",
                        param="payment_method")
        slow = SLOW.fullmatch(pm or "")
        if slow:
            time.sleep(float(slow.group(1)))  # the processor takes its time, whether the client waits or not
        intent = {
            "id": "pi_" + secrets.token_hex(12), "object": "payment_intent", "amount": amount,
            "amount_capturable": 0, "amount_received": 0, "currency": form["currency"],
            "capture_method": form.get("capture_method", "automatic"), "created": int(time.time()),
            "metadata": {m.group(1): v for k, v in params if (m := re.fullmatch(r"metadata\[(.+)\]", k))},
            "payment_method": pm, "payment_method_types": listed(params, "payment_method_types") or ["card"],
            "status": "requires_payment_method" if pm is None else "requires_confirmation",
            "latest_charge": None, "last_payment_error": None, "next_action": None, "cancellation_reason": None,
            "canceled_at": None, "client_secret": None, "livemode": False,
        }
        intent["client_secret"] = f"{intent['id']}_secret_{secrets.token_hex(8)}"
        with self.lock:
            self.intents[intent["id"]] = intent
            self.indexed_at[intent["id"]] = time.time() + self.search_lag
            if form.get("confirm") == "true" and pm is not None:
                self.confirm(intent, pm)
            return self.view(intent)

    def confirm(self, intent: dict[str, Any], pm: str) -> None:
        if pm in DECLINES:
            code, decline = DECLINES[pm]
            failure = {"type": "card_error", "code": code, "message": "Your card was declined.",
                       **({"decline_code": decline} if decline else {})}
            intent.update(status="requires_payment_method", last_payment_error=failure, payment_method=None)
            raise Failure(402, {**failure, "payment_intent": self.view(intent)})
        if pm == NEEDS_AUTHENTICATION:
            intent.update(status="requires_action", next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}})
            return
        charge = {"id": "ch_" + secrets.token_hex(12), "object": "charge", "amount": intent["amount"],
                  "amount_captured": 0, "amount_refunded": 0, "captured": False, "refunded": False,
                  "payment_intent": intent["id"], "status": "succeeded", "currency": intent["currency"]}
        self.charges[charge["id"]] = charge
        manual = intent["capture_method"] == "manual"
        intent.update(latest_charge=charge["id"], status="requires_capture" if manual else "succeeded",
                      amount_capturable=intent["amount"] if manual else 0)
        if not manual:
            self._captured(intent)

    def _captured(self, intent: dict[str, Any]) -> None:
        charge = self.charges[intent["latest_charge"]]
        charge.update(captured=True, amount_captured=intent["amount"])
        intent.update(status="succeeded", amount_received=intent["amount"], amount_capturable=0)

    def capture(self, intent_id: str) -> dict[str, Any]:
        with self.lock:
            intent = self.intent(intent_id)
            if intent["status"] != "requires_capture":
                raise error(400, "invalid_request_error",
                            f"This PaymentIntent could not be captured because it has a status of {intent['status']}."
                            f" Only a PaymentIntent with one of the following statuses may be captured: "
                            f"requires_capture.", "payment_intent_unexpected_state", payment_intent=self.view(intent))
            self._captured(intent)
            return self.view(intent)

    def cancel(self, intent_id: str, reason: str | None) -> dict[str, Any]:
        with self.lock:
            intent = self.intent(intent_id)
            if intent["status"] not in CANCELABLE:
                raise error(400, "invalid_request_error",
                            f"You cannot cancel this PaymentIntent because it has a status of {intent['status']}. "
                            f"Only a PaymentIntent with one of the following statuses may be canceled: "
                            f"{', '.join(CANCELABLE)}.", "payment_intent_unexpected_state",
                            payment_intent=self.view(intent))
            intent.update(status="canceled", cancellation_reason=reason, canceled_at=int(time.time()),
                          amount_capturable=0, next_action=None)
            return self.view(intent)

    def refund(self, form: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            intent = self.intent(form.get("payment_intent", ""))
            if intent["status"] != "succeeded":
                raise error(400, "invalid_request_error",
                            f"This PaymentIntent ({intent['id']}) does not have a successful charge to refund.",
                            "charge_not_refundable" if intent["status"] != "requires_capture" else
                            "payment_intent_unexpected_state")
            charge = self.charges[intent["latest_charge"]]
            if charge["refunded"]:
                raise error(400, "invalid_request_error", f"Charge {charge['id']} has already been refunded.",
                            "charge_already_refunded")
            charge.update(refunded=True, amount_refunded=charge["amount_captured"])
            return {"id": "re_" + secrets.token_hex(12), "object": "refund", "amount": charge["amount_captured"],
                    "charge": charge["id"], "payment_intent": intent["id"], "currency": charge["currency"],
                    "status": "succeeded", "reason": form.get("reason")}


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the local Stripe fake on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=API_KEY)
    args = parser.parse_args()
    fake = StripeFake(args.api_key).start(args.port)
    print(f"Stripe fake on {fake.url} (secret key {args.api_key})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
