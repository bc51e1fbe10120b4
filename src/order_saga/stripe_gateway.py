"""The Stripe adapter: the PaymentGateway protocol on Stripe's PaymentIntents API, with manual capture.

  authorize  POST /v1/payment_intents  amount, currency, payment_method=<the order's token>, capture_method=manual,
             confirm=true, payment_method_types[]=card, metadata[saga_payment_id]=<key>, Idempotency-Key: <key>
  capture    POST /v1/payment_intents/{id}/capture            Idempotency-Key: <key>:capture
  reverse    POST /v1/payment_intents/{id}/cancel (a hold)    Idempotency-Key: <key>:cancel
             POST /v1/refunds payment_intent={id} (a capture)  Idempotency-Key: <key>:refund
  state      GET  /v1/payment_intents/{id}?expand[]=latest_charge
  (lookup)   GET  /v1/payment_intents/search?query=metadata['saga_payment_id']:'<key>'   past the replay window

The key is the saga's payment id (`<order id>#<n>`), so one payment is one PaymentIntent, whatever retries.

Finding a payment's PaymentIntent from its key (capture, reverse, state, and so the reaper's reconciliation): the
PaymentIntent id the saga recorded (the payment's `authorization`) when there is one; otherwise (the payment is
still PENDING, or was voided while its authorization's outcome was unknown) by REPLAYING the authorization's create,
same key, same parameters, read from the payment item. Stripe answers a replay with the saved response of the first
request (the intent, or its decline), or a 409 while that request still executes: strongly consistent, where the
Search API is not (its index lags up to a minute, more during incidents), so a replay finds an intent that landed
after the client gave up the moment it landed. A replay also fences the key: if the first request never reached
Stripe, the replay is the first (it authorizes, and reverse or reconcile cancel that hold at once), and a first
request arriving later gets the replay's saved answer instead of authorizing again. The limit is Stripe's key
retention (keys may be pruned once 24 h old): a replay after that would authorize anew instead of finding the
first intent. The saga replays within minutes (the compensation right away, the reconciliation ReconcileAfterSeconds
later); past REPLAY_WINDOW_SECONDS from the payment's creation the adapter never replays (a second hold is the
risk) and searches instead (below); Stripe itself
cancels an uncaptured intent after 7 days, which releases any hold left that way (docs/deploying.md).

Past REPLAY_WINDOW_SECONDS the adapter finds the intent with the Search API instead (GET /v1/payment_intents/search,
query metadata['saga_payment_id']:'<key>': the create sets that metadata on every intent). Search is eventually
consistent (Stripe: data is searchable in under a minute, up to an hour behind during outages), so an empty result
is trusted only SEARCH_SETTLED_SECONDS (2 h) after the last request that could have created the intent: the later of
the first request (the payment's `sent_at`, the marker AuthorizePayment writes before it; payments.py) and the end of
the replay window (created_at + REPLAY_WINDOW_SECONDS), since this adapter's own replays (reverse, state) are
requests too, made up to the window's end, and one of them is the intent's creation when the first request never
reached Stripe. So "nothing found" counts from REPLAY_WINDOW_SECONDS + SEARCH_SETTLED_SECONDS (22 h) after the
payment's creation (later for a first request sent later still); sooner it is PaymentGatewayUnavailable, asked
again later (the reaper's reconciliation, or the compensation's retries; a parked saga's redrive).
A PENDING payment with no marker never reaches the adapter's reverse: nothing was sent for it, and Payments voids it
without a gateway call (payments.py).

Error mapping (the saga's typed errors, src/order_saga/errors.py):
  402 card_error                              -> PaymentDeclined (the message names the code, never the card)
  400 resource_missing on payment_method     -> PaymentDeclined (an unknown card, as the fake declines one)
  requires_action (3-D Secure)                -> the intent is canceled, PaymentDeclined: an asynchronous saga has no
                                                 customer at hand to authenticate (docs/deploying.md)
  5xx, 429, 409 (idempotency_key_in_use), a connection error or the timeout
                                              -> PaymentGatewayUnavailable: the outcome is unknown, the request may
                                                 have landed (a retry replays it; a compensation has it reconciled)
  capture of a canceled (or expired) intent   -> PaymentNotAuthorized
  400 idempotency_error (same key, other parameters)
                                              -> PaymentNotAuthorized at authorize (Stripe refused a second charge:
                                                 nothing was authorized by this request), an error elsewhere
  401, 403, any other 400                     -> GatewayMisconfigured (not retried as transient: a wrong key or an
                                                 adapter bug needs an operator)

Every operation, all its HTTP calls together, is bounded by the client's timeout (GATEWAY_TIMEOUT_SECONDS): the SDK's
own network retries are off (the state machine's Retry owns retries), and each request gets what is left of the
operation's budget, so docs/timeouts.md's arithmetic (one gateway call of at most the timeout) holds.

The `stripe` SDK is imported when the first client is built, in the first call, with the secret key read from
Secrets Manager once per sandbox: a function on the fake gateway never imports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from order_saga.dynamo import to_ddb
from order_saga.errors import PaymentDeclined, PaymentGatewayUnavailable, PaymentNotAuthorized
from order_saga.store import Store

AUTHORIZED, CAPTURED, VOIDED, REFUNDED, DECLINED = "AUTHORIZED", "CAPTURED", "VOIDED", "REFUNDED", "DECLINED"
PROCESSING = "PROCESSING"
METADATA_KEY = "saga_payment_id"
STRIPE_API = "https://api.stripe.com"
REPLAY_WINDOW_SECONDS = 20 * 3600  # Stripe keeps an idempotency key at least 24 h; 4 h to spare
SEARCH_SETTLED_SECONDS = 2 * 3600  # Search lags under a minute, up to an hour during outages: "not found" after this


def _quoted(value: str) -> str:
    """A value inside a search query's single quotes (Stripe's query language escapes a quote with a backslash)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


class GatewayMisconfigured(RuntimeError):
    """Stripe refused the request itself (the key, a permission, a parameter): retrying cannot help."""


def secret_key_from_secrets_manager(secret_id: str) -> Callable[[], str]:
    """The secret key, read from Secrets Manager when first needed (once per sandbox). The secret is the key itself,
    or a JSON object with `api_key`."""

    def read() -> str:
        import json

        import boto3
        from botocore.config import Config

        client = boto3.client("secretsmanager", config=Config(connect_timeout=2, read_timeout=2,
                                                              retries={"mode": "standard", "max_attempts": 2}))
        value = client.get_secret_value(SecretId=secret_id)["SecretString"].strip()
        return str(json.loads(value)["api_key"]) if value.startswith("{") else value

    return read


class StripeGateway:
    """PaymentGateway on Stripe's PaymentIntents (see the module docstring)."""

    def __init__(self, store: Store, payments_table: str, api_key: str | Callable[[], str],
                 base_url: str = STRIPE_API, timeout: float = 3.0,
                 replay_window_seconds: float = REPLAY_WINDOW_SECONDS) -> None:
        self.store = store
        self.table = payments_table
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.replay_window_seconds = replay_window_seconds
        self._client: Any = None
        self._deadline = threading.local()

    # ---- the client ----------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import requests
            import stripe

            logging.getLogger("stripe").setLevel(logging.WARNING)  # its INFO lines quote Stripe's messages
            deadline = self._deadline

            class BoundedSession(requests.Session):
                """Each request gets what is left of its operation's budget, never more."""

                def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                    left = getattr(deadline, "at", 0.0) - time.monotonic()
                    if left <= 0.01:
                        raise requests.Timeout("no time left in this gateway call's budget")
                    kwargs["timeout"] = left
                    return super().request(*args, **kwargs)

            key = self._api_key if isinstance(self._api_key, str) else self._api_key()
            self._client = stripe.StripeClient(
                key, base_addresses={"api": self.base_url}, max_network_retries=0,
                http_client=stripe.RequestsClient(session=BoundedSession(), timeout=self.timeout))
        return self._client

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """One operation: its budget, and Stripe's errors as the saga's (the card-specific ones by the caller)."""
        import stripe

        self._deadline.at = time.monotonic() + self.timeout
        try:
            yield
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise PaymentGatewayUnavailable(f"stripe: {what}: {type(exc).__name__} (no answer within "
                                            f"{self.timeout:g} s, or throttled); the outcome is unknown") from None
        except stripe.APIError as exc:  # 5xx, and 409 idempotency_key_in_use: the request may have landed
            code = exc.code or getattr(exc.error, "code", None) or ""
            raise PaymentGatewayUnavailable(f"stripe: {what}: HTTP {exc.http_status} {code}".rstrip()
                                            + "; the outcome is unknown") from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise GatewayMisconfigured(f"stripe: {what}: HTTP {exc.http_status}: Stripe refused the secret key "
                                       f"(check the secret StripeSecretArn names)") from None
        finally:
            self._deadline.at = 0.0

    @staticmethod
    def _declined(exc: Any) -> PaymentDeclined:
        detail = "/".join(part for part in (exc.code, getattr(exc.error, "decline_code", None)) if part)
        return PaymentDeclined(f"card declined ({detail or 'card_error'})")

    # ---- authorize ---------------------------------------------------------------------------------------
    def _create(self, key: str, token: str, amount: int, currency: str) -> tuple[Any, bool]:
        """The create-and-confirm request (the first, or its replay): (intent, replayed)."""
        intent = self.client.v1.payment_intents.create(
            params={"amount": amount, "currency": currency.lower(), "payment_method": token,
                    "payment_method_types": ["card"], "capture_method": "manual", "confirm": True,
                    "metadata": {METADATA_KEY: key}},
            options={"idempotency_key": key})
        replayed = (intent.last_response.headers.get("Idempotent-Replayed") or "").lower() == "true"
        return intent, replayed

    def authorize(self, key: str, token: str, amount: int, currency: str,
                  sending: Callable[[], None] | None = None) -> str:
        import stripe

        if sending is not None:  # behind the breaker it ran there already
            sending()
        with self._call("authorize"):
            try:
                intent, replayed = self._create(key, token, amount, currency)
            except stripe.CardError as exc:
                raise self._declined(exc) from None
            except stripe.IdempotencyError:
                raise PaymentNotAuthorized(
                    f"stripe: the idempotency key {key} was used before with other parameters (amount, currency or "
                    f"card): Stripe refused a second charge, and this request authorized nothing") from None
            except stripe.InvalidRequestError as exc:
                if exc.param == "payment_method":
                    raise PaymentDeclined(f"card declined ({exc.code}: the processor knows no such card)") from None
                raise GatewayMisconfigured(f"stripe: authorize: HTTP {exc.http_status} {exc.code}") from None
            if replayed:  # the saved response tells the status at creation: what is it now?
                intent = self._retrieve(intent.id)
            status = intent.status
            if status in ("requires_capture", "succeeded"):
                return str(intent.id)
            if status in ("requires_action", "requires_confirmation"):
                self._cancel(key, intent.id)
                raise PaymentDeclined("card declined (authentication_required: the card asks for 3-D Secure, which "
                                      "an order saga cannot ask the customer for; the intent was canceled)")
            if status == "requires_payment_method":
                code = getattr(intent.last_payment_error, "code", None) or "card_error"
                raise PaymentDeclined(f"card declined ({code})")
            if status == "processing":
                raise PaymentGatewayUnavailable("stripe: the authorization is still processing; the outcome is unknown")
            raise PaymentNotAuthorized(f"stripe: the payment's intent is {status}")

    # ---- finding a payment's intent ------------------------------------------------------------------------
    def _retrieve(self, intent_id: str) -> Any:
        return self.client.v1.payment_intents.retrieve(intent_id, params={"expand": ["latest_charge"]})

    def _intent(self, key: str) -> tuple[Any, str | None]:
        """(the key's intent, its state) — (None, None): no payment, or nothing authorized by the key; (None,
        DECLINED): declined; (None, PROCESSING): the first request still executes at Stripe."""
        import stripe

        payment = self.store.get(self.table, to_ddb({"payment_id": key}))
        if payment is None:
            return None, None
        recorded = str(payment.get("authorization") or "")
        if recorded.startswith("pi_"):
            intent = self._retrieve(recorded)
            return intent, self._state_of(intent)
        now_ms = time.time() * 1000
        created = int(payment.get("created_at", 0))
        window_ms = self.replay_window_seconds * 1000
        if now_ms - created > window_ms:
            # The last request that could have created the intent: the first send (`sent_at`), or a replay of this
            # adapter's, made only within the window: at the latest when the window closed.
            last_request = max(int(payment.get("sent_at", created)), created + window_ms)
            return self._search(key, now_ms - last_request)
        try:
            intent, _ = self._create(key, str(payment["token"]), int(payment["amount"]), str(payment["currency"]))
        except stripe.CardError:
            return None, DECLINED
        except stripe.APIError as exc:
            if exc.http_status == 409:
                return None, PROCESSING
            raise
        except stripe.IdempotencyError:
            raise GatewayMisconfigured(f"stripe: the idempotency key {key} was first used with other parameters than "
                                       f"the payment's: its intent cannot be found by a replay") from None
        except stripe.InvalidRequestError as exc:
            if exc.param == "payment_method":
                return None, DECLINED
            raise GatewayMisconfigured(f"stripe: looking up {key}: HTTP {exc.http_status} {exc.code}") from None
        intent = self._retrieve(intent.id)
        return intent, self._state_of(intent)

    def _search(self, key: str, sent_ms_ago: float) -> tuple[Any, str | None]:
        """The key's intent by Stripe's Search API (past the replay window, where a replay could authorize anew).
        Search is eventually consistent (Stripe: searchable in under a minute, up to an hour behind during
        outages), so "nothing found" is trusted only SEARCH_SETTLED_SECONDS after the last request that could have
        created the intent was sent (`sent_ms_ago`: the later of the sent marker and the end of the replay window,
        _intent); sooner it is PaymentGatewayUnavailable (asked again later). Several intents under one key (none
        should be: only a replay past Stripe's key retention makes a second, and the adapter never replays that
        late): the one that holds money, or is still processing."""
        import stripe

        try:
            found = self.client.v1.payment_intents.search(
                params={"query": f"metadata['{METADATA_KEY}']:'{_quoted(key)}'", "limit": 10,
                        "expand": ["data.latest_charge"]})
        except stripe.InvalidRequestError as exc:  # e.g. an account without Search (Stripe: not in India)
            raise GatewayMisconfigured(f"stripe: searching for {key}: HTTP {exc.http_status} {exc.code}; find its "
                                       f"intent in Stripe's dashboard by metadata {METADATA_KEY}={key}") from None
        intents = list(found.data)
        if not intents:
            if sent_ms_ago < SEARCH_SETTLED_SECONDS * 1000:
                raise PaymentGatewayUnavailable(
                    f"stripe: no intent found for {key} by search, but a request for it may have been sent "
                    f"{sent_ms_ago / 60_000:.0f} min ago, within the search index's lag "
                    f"({SEARCH_SETTLED_SECONDS / 3600:g} h): not proof that nothing landed")
            return None, None
        states = [(intent, self._state_of(intent)) for intent in intents]
        rank = {AUTHORIZED: 0, CAPTURED: 0, PROCESSING: 1, REFUNDED: 2, VOIDED: 3, DECLINED: 4}
        return min(states, key=lambda pair: rank[pair[1]])

    @staticmethod
    def _state_of(intent: Any) -> str:
        status = intent.status
        if status == "requires_capture":
            return AUTHORIZED
        if status == "succeeded":
            charge = intent.latest_charge
            return REFUNDED if charge is not None and not isinstance(charge, str) and charge.refunded else CAPTURED
        if status == "canceled":
            return VOIDED
        if status == "processing":
            return PROCESSING
        return DECLINED  # requires_payment_method, requires_action, requires_confirmation: it holds nothing

    # ---- the protocol's other calls -------------------------------------------------------------------------
    def state(self, key: str) -> str | None:
        with self._call("state"):
            return self._intent(key)[1]

    def capture(self, key: str) -> None:
        """Take the authorized money; a repeat is a no-op; anything but a hold is refused (PaymentNotAuthorized)."""
        import stripe

        with self._call("capture"):
            intent, state = self._intent(key)
            if state == CAPTURED:
                return
            if intent is None or state != AUTHORIZED:
                raise PaymentNotAuthorized(f"stripe: nothing to capture, the payment is {state}")
            try:
                self.client.v1.payment_intents.capture(intent.id, options={"idempotency_key": f"{key}:capture"})
            except stripe.InvalidRequestError as exc:
                if exc.code != "payment_intent_unexpected_state":
                    raise GatewayMisconfigured(f"stripe: capture: HTTP {exc.http_status} {exc.code}") from None
                now = self._state_of(self._retrieve(intent.id))
                if now != CAPTURED:  # canceled meanwhile: the hold expired (Stripe cancels it after 7 days)
                    raise PaymentNotAuthorized(f"stripe: nothing to capture, the payment's intent is {now}") from None

    def reverse(self, key: str) -> str | None:
        """Give back what the key holds: cancel a hold, refund a capture. Returns the state after (None: nothing was
        authorized; PROCESSING: the authorization still executes at Stripe, so it may land: reconciled later).
        Idempotent."""
        import stripe

        with self._call("reverse"):
            intent, state = self._intent(key)
            if intent is None or state in (VOIDED, REFUNDED, PROCESSING):
                return state
            try:
                if state == CAPTURED:
                    self.client.v1.refunds.create(
                        params={"payment_intent": intent.id, "reason": "requested_by_customer"},
                        options={"idempotency_key": f"{key}:refund"})
                    return REFUNDED
                self._cancel(key, intent.id)
                return VOIDED if state == AUTHORIZED else state
            except stripe.InvalidRequestError as exc:
                if exc.code not in ("payment_intent_unexpected_state", "charge_already_refunded"):
                    raise GatewayMisconfigured(f"stripe: reverse: HTTP {exc.http_status} {exc.code}") from None
                now = self._state_of(self._retrieve(intent.id))  # it changed meanwhile: where is it now?
                if now in (AUTHORIZED, CAPTURED):
                    raise PaymentGatewayUnavailable(f"stripe: the payment became {now} while being reversed") from None
                return now

    def _cancel(self, key: str, intent_id: str) -> None:
        self.client.v1.payment_intents.cancel(intent_id, params={"cancellation_reason": "abandoned"},
                                              options={"idempotency_key": f"{key}:cancel"})
