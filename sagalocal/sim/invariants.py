"""What must hold after every simulated run, whatever failed and whoever took over (docs/simulation.md).

Each check returns the violations it finds, as sentences naming the invariant, so that a counterexample reads
as what broke: no oversell; stock conserved; every order in one terminal state with exactly one outcome event
(a parked saga is redriven to its end first, and parked once per SagaParked event); a COMPLETED order stays
COMPLETED, fully captured, its stock sold; past the pivot (the stock commit, a capture) the saga only goes
forward, unless the processor itself refused a capture; nothing held once the saga ended; coupon limits; a coupon
not applied (CouponFailurePolicy=continue) holds no redemption, and its order is paid, authorized and captured at
its original amount; each customer's open-orders item holds exactly its open orders, within MaxOpenOrdersPerCustomer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sagalocal.sim.world import World

TERMINAL = ("COMPLETED", "COMPENSATED")
HELD_AT_GATEWAY = ("AUTHORIZED", "CAPTURED")


def check(world: World) -> list[str]:
    from order_saga.events import outcome
    from order_saga.orders import CUSTOMER_PREFIX, is_order
    from sagalocal.dynamodb.streams import STREAMS

    table = world.items("OrdersTable")
    orders = {o["order_id"]: o for o in table if is_order(o)}
    inventory = world.items("InventoryTable")
    payments = [p for p in world.items("PaymentsTable") if "order_id" in p]  # not the breaker's item
    promotions = world.items("PromotionsTable")
    stock = {str(i["sku"]): i for i in inventory if i["sk"] == "STOCK"}
    reservations = {str(i["order_id"]): i for i in inventory if i["sk"] == "RESERVATION"}
    redemptions = {str(i["sk"]).removeprefix("ORDER#"): i for i in promotions if str(i["sk"]).startswith("ORDER#")}
    payments_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payment in payments:
        payments_of[str(payment["order_id"])].append(payment)
    ledger = world.gateway.ledger
    violations: list[str] = []

    # Stock: never below zero, conserved, and the counters agree with the reservations.
    for sku, item in stock.items():
        available, reserved, sold = int(item["available"]), int(item["reserved"]), int(item["sold"])
        if min(available, reserved, sold) < 0:
            violations.append(f"oversell: {sku} available {available}, reserved {reserved}, sold {sold}")
        initial = world.stack.initial_stock[sku]
        if available + reserved + sold != initial:
            violations.append(f"stock not conserved: {sku} {available}+{reserved}+{sold} != {initial}")
        held = sum(line["quantity"] for r in reservations.values() if r["status"] == "RESERVED"
                   for line in r["lines"] if line["sku"] == sku)
        committed = sum(line["quantity"] for r in reservations.values() if r["status"] == "COMMITTED"
                        for line in r["lines"] if line["sku"] == sku)
        if (reserved, sold) != (held, committed):
            violations.append(f"stock counters disagree with reservations: {sku} reserved {reserved} (reservations "
                              f"hold {held}), sold {sold} (reservations committed {committed})")

    # The orders table's history: outcome events (as PublishOutcome derives them) and what each order ever was.
    events: dict[str, list[str]] = defaultdict(list)
    details: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ever: dict[str, set[str]] = defaultdict(set)
    for record in STREAMS.read("OrdersTable", 0, 10_000_000, 0):
        event = outcome(record)
        new = _read(record, "order_id", "saga_status")
        if new:
            ever[str(new["order_id"])].add(str(new.get("saga_status")))
        if event is not None:
            events[event["Detail"]["order_id"]].append(event["DetailType"])
            details[event["Detail"]["order_id"]].append(event["Detail"])
    committed_ever = set()
    for record in STREAMS.read("InventoryTable", 0, 10_000_000, 0):
        new = _read(record, "sk", "status", "order_id")
        if new.get("sk") == "RESERVATION" and new.get("status") == "COMMITTED":
            committed_ever.add(str(new["order_id"]))

    # An execution that succeeded confirmed its order (it is named after it): a saga never reports a sale it undid.
    for execution in world.executions():
        if execution["status"] == "SUCCEEDED":
            ended = (orders.get(execution["name"]) or {}).get("saga_status")
            if ended != "COMPLETED":
                violations.append(f"the execution succeeded but its order ended {ended}")

    for order_id, order in orders.items():
        status = order.get("saga_status")
        mine = payments_of[order_id]
        keys = [str(p["payment_id"]) for p in mine]
        refused = any(key in world.gateway.refused_captures for key in keys)
        if status not in TERMINAL:
            violations.append(f"not terminal: order is {status}" + (" (parked)" if status == "FAILED" else ""))
        # One outcome event for the end; SagaParked (an operational event, not an outcome) once per time it parked.
        expected = {"COMPLETED": ["OrderConfirmed"], "COMPENSATED": ["OrderCancelled"]}
        outcomes = [e for e in events[order_id] if e != "SagaParked"]
        if outcomes != expected.get(str(status), []) or ("SagaParked" in events[order_id]
                                                         and "FAILED" not in ever[order_id]):
            violations.append(f"outcome events {events[order_id]} for an order that ended {status}")
        if "COMPLETED" in ever[order_id] and status != "COMPLETED":
            violations.append(f"a COMPLETED order was undone: it is now {status} ({order.get('status')})")
        captured = [key for key in keys if key in world.captures]
        if (captured or order_id in committed_ever) and not refused and status != "COMPLETED":
            what = f"captured {', '.join(_method(k) for k in captured)}" if captured else "stock committed"
            violations.append(f"rolled back past the pivot: {what}, the processor refused nothing, and the order "
                              f"ended {status}")
        reservation = reservations.get(order_id)
        redemption = redemptions.get(order_id)
        if status == "COMPLETED":
            if (reservation or {}).get("status") != "COMMITTED":
                violations.append(f"COMPLETED but its reservation is {(reservation or {}).get('status')}")
            wrong = [f"{_method(p['payment_id'])} {p['status']}/{(ledger.get(p['payment_id']) or {}).get('state')}"
                     for p in mine if p["status"] != "CAPTURED"
                     or (ledger.get(p["payment_id"]) or {}).get("state") != "CAPTURED"]
            if wrong:
                violations.append(f"COMPLETED but not fully captured: {', '.join(wrong)}")
            taken = sum(int(ledger[k]["amount"]) for k in keys if (ledger.get(k) or {}).get("state") == "CAPTURED")
            if taken != int(order["total"]):
                violations.append(f"COMPLETED with {taken} captured of a total of {order['total']}")
            applied = order.get("coupon_outcome") != "NOT_APPLIED"
            if order.get("coupon") and (redemption or {}).get("status") != ("COMMITTED" if applied else "SKIPPED"):
                violations.append(f"COMPLETED with its coupon {'applied' if applied else 'not applied'} but its "
                                  f"redemption {(redemption or {}).get('status')}")
        else:
            held = [f"{_method(k)} {ledger[k]['state']}" for k in keys
                    if (ledger.get(k) or {}).get("state") in HELD_AT_GATEWAY]
            if held:
                violations.append(f"money held for an order that ended {status}: {', '.join(held)}")
            if reservation is not None and reservation["status"] != "RELEASED":
                violations.append(f"stock held for an order that ended {status}: reservation {reservation['status']}")
            if redemption is not None and redemption["status"] not in ("RELEASED", "SKIPPED"):
                violations.append(f"coupon held for an order that ended {status}: redemption {redemption['status']}")
            left = [f"{_method(p['payment_id'])} {p['status']}" for p in mine
                    if p["status"] in ("AUTHORIZED", "CAPTURING", "CAPTURED")]
            if left:
                violations.append(f"payment items left holding for an order that ended {status}: {', '.join(left)}")

    # The coupon's outcome and the amounts: a SKIPPED redemption exactly for an order that went on without its coupon
    # (CouponFailurePolicy=continue), which is then paid at its original amount; the payments' amounts are the
    # order's; the processor authorized each payment's amount (never the discounted one of a skipped coupon); the
    # outcome events say what the order says.
    for order_id, order in orders.items():
        redemption = redemptions.get(order_id)
        skipped = order.get("coupon_outcome") == "NOT_APPLIED"
        if skipped != ((redemption or {}).get("status") == "SKIPPED"):
            violations.append(f"coupon_outcome {order.get('coupon_outcome')} but the redemption is "
                              f"{(redemption or {}).get('status')}")
        if skipped and (int(order["total"]) != int(order["subtotal"]) or int(order["discount"]) != 0):
            violations.append(f"coupon not applied but the order's total is {order['total']} of a subtotal of "
                              f"{order['subtotal']} (discount {order['discount']})")
        if order.get("coupon") and int(order["total"]) != int(order["subtotal"]) - int(order["discount"]):
            violations.append(f"total {order['total']} != subtotal {order['subtotal']} - discount {order['discount']}")
        mine = sorted(payments_of[order_id], key=lambda p: int(p["method"]))
        if [int(p["amount"]) for p in mine] != [int(a) for a in order["payment_amounts"]] or sum(
                int(a) for a in order["payment_amounts"]) != int(order["total"]):
            violations.append(f"payments {[p['amount'] for p in mine]}, the order's amounts "
                              f"{order['payment_amounts']}, its total {order['total']}")
        for p in mine:
            entry = ledger.get(str(p["payment_id"]))
            if entry is not None and entry["state"] != "DECLINED" and int(entry["amount"]) != int(p["amount"]):
                violations.append(f"{_method(p['payment_id'])} authorized {entry['amount']}, its amount is "
                                  f"{p['amount']}")
        for detail in details[order_id]:
            if detail.get("coupon_outcome") != order.get("coupon_outcome") and detail.get("coupon"):
                violations.append(f"an outcome event says coupon_outcome {detail.get('coupon_outcome')}, the order "
                                  f"{order.get('coupon_outcome')}")

    # Coupon limits: the count is the redemptions held or committed, within both limits.
    for coupon in (p for p in promotions if p["sk"] == "COUPON"):
        code = coupon["code"]
        live = [r for r in promotions if r["pk"] == f"COUPON#{code}" and str(r["sk"]).startswith("ORDER#")
                and r["status"] in ("HELD", "COMMITTED")]
        if int(coupon["redeemed"]) != len(live) or int(coupon["redeemed"]) > int(coupon["max_redemptions"]):
            violations.append(f"coupon {code}: redeemed {coupon['redeemed']}, {len(live)} redemptions live, "
                              f"limit {coupon['max_redemptions']}")
        per_customer = Counter(str(r.get("customer")) for r in live)
        for entry in (p for p in promotions if p["pk"] == f"COUPON#{code}" and str(p["sk"]).startswith("CUSTOMER#")):
            customer = str(entry["sk"]).removeprefix("CUSTOMER#")
            used = int(entry.get("used", 0))
            if used > int(coupon["per_customer"]) or used != per_customer.get(customer, 0):
                violations.append(f"coupon {code}: customer uses {used}, {per_customer.get(customer, 0)} live, "
                                  f"per-customer limit {coupon['per_customer']}")
    # Open orders per customer: the customer's item holds exactly the ids of its orders that are not COMPLETED nor
    # COMPENSATED (unfinished or parked), never more than the cap.
    open_of: dict[str, set[str]] = defaultdict(set)
    for order_id, order in orders.items():
        if order.get("saga_status") not in TERMINAL:
            open_of[str(order["customer_id"])].add(str(order_id))
    counted = {str(item["order_id"]).removeprefix(CUSTOMER_PREFIX): set(item.get("open_orders") or ())
               for item in table if not is_order(item)}
    cap = int(world.stack.parameters["MaxOpenOrdersPerCustomer"])
    for customer in sorted(set(open_of) | set(counted)):
        held, really = counted.get(customer, set()), open_of.get(customer, set())
        if held != really:
            violations.append(f"open orders of customer {customer}: the count holds {sorted(held)}, the orders open "
                              f"are {sorted(really)}")
        if len(held) > cap:
            violations.append(f"open orders of customer {customer}: {len(held)} open, over the cap of {cap}")
    return violations


def _read(record: dict[str, Any], *names: str) -> dict[str, Any]:
    """The attributes `names` of a stream record's new image, as from_ddb gives them: from_ddb deserializes each
    attribute on its own, so only the ones read are (the whole images, each twice, were a twentieth of a case). The
    first name is a key attribute of the table, in every image: the dict is empty exactly when the record has no new
    image (a REMOVE), as from_ddb's of the whole image is."""
    from order_saga.dynamo import from_ddb

    image = record["dynamodb"].get("NewImage") or {}
    return from_ddb({name: image[name] for name in names if name in image})


def _method(payment_id: Any) -> str:
    return "card #" + str(payment_id).rpartition("#")[2]
