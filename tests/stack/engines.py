"""The engines the stack tier runs on, and each one's known gaps: the tests it is expected to fail, and why.

A deployed target names its engine with SAGA_ENGINE (scripts/ministack.py sets `ministack`). Its gaps below become
strict expected failures (tests/stack/conftest.py): a gap that closes fails the run (XPASS strict) until it is
taken off the list, and a test not on the list fails as usual. A gap is named by a test's node id, by a node id
ending in `[` for every parameter of a test, or by a file's path and `::` for all of its tests. docs/engines.md
(scripts/engines_doc.py) lists them with the runs.
"""

from __future__ import annotations

ENGINES = {
    "embedded": "the embedded local stack (sagalocal, on moto)",
    "ministack": "ministack 1.5.33 (PyPI), deployed with samlocal (scripts/ministack.py)",
    "localstack": "LocalStack community 4.14.0, no auth token (.github/workflows/localstack.yml)",
    "localstack-pro": "LocalStack 2026.09.0 with an auth token (.github/workflows/localstack.yml)",
    "aws": "AWS",
}

# How many of a test's independent sagas an engine runs at once (tests/stack/conftest.py side_by_side: the matrix's
# rows, every_path's orders), where the engine needs fewer than the default (every one at once on the embedded stack,
# at most 4 on another deployed engine). ministack: two. It starts a Lambda worker for each invocation that finds
# every worker of its function busy (and again after a handler raised: it ends that worker), unpacking the function's
# code and its layer inside its own process, so on 2 cores several sagas at once start workers faster than they get
# through them: the tasks hit their TimeoutSeconds (8 s), each retry starts one more worker, and the sagas time out
# (4 at once did, with the full layer unpacked on disk: scripts/ministack.py now deploys a smaller one and unpacks it
# in memory). Measured on 2026-12-08, every_path's orders took 137 s one at a time and 68 s two at a time (the hung
# payment's minute of retries beside the others), all passing.
SAGAS_AT_ONCE: dict[str, int] = {"ministack": 2}

MAP_HISTORY = ("ministack's execution history records no state of a Map's iterations (no AuthorizeMethod between "
               "AuthorizePayments and ConfirmOrder), where AWS records each iteration's; the cards were captured")

GAPS: dict[str, dict[str, str]] = {
    "ministack": {
        "tests/stack/test_auth.py::test_a_request_without_a_valid_id_token_is_401_and_writes_nothing[access token]":
            "ministack's Cognito authorizer accepts an access token; API Gateway's accepts only an ID token (no "
            "scopes configured)",
        "tests/stack/test_scenarios.py::test_a_step_s_error_reaches_the_state_machine_by_its_name":
            "ministack's Step Functions reports a step's exception under a generic handler-error name, not by its "
            "errorType as AWS does: the saga's Retry and Catch by error name cannot match there, so the scenarios "
            "and the matrix's rows whose outcome rests on an error's name are skipped on it: "
            "tests/stack/support.py Target.typed_errors",
        "tests/stack/test_scenarios.py::test_a_split_payment_captures_each_card_for_its_own_amount": MAP_HISTORY,
        "tests/stack/test_matrix.py::test_matrix_row[AuthorizePayments-approved-2-methods]": MAP_HISTORY,
        "tests/stack/test_matrix.py::test_matrix_row[AuthorizePayments-approved-3-methods-coupon]": MAP_HISTORY,
        # (ministack's name for every one is Runtime.HandlerError; docs/engines.md, whose names tests/unit/test_docs.py
        # holds to the ones the ASL handles, says "one generic errorType", as the gap above does)
        **{f"tests/stack/test_events.py::test_event_gives_its_documented_result[steps/{step}.json]":
            f"ministack's Lambda Invoke answers every exception of a Python handler with one generic errorType, "
            f"where Lambda answers with the exception's class name ({error}, as documented in events/manifest.json)"
           for step, error in (("reserve_inventory", "OrderNotActive"), ("apply_coupon", "OrderNotActive"),
                               ("authorize_payment", "PaymentNotAuthorized"), ("confirm_order", "OrderNotActive"))},
        "tests/stack/test_fuzz.py::test_hostile_request_is_refused_quickly_and_writes_nothing[over-the-10mb-api-limit]":
            "ministack's API Gateway does not enforce API Gateway's 10 MB payload limit: a body of 10 MB and a byte "
            "reached the function, which answered 400 (not valid JSON), where API Gateway answers 413 before any "
            "function runs",
        "tests/stack/test_fuzz.py::test_hostile_request_is_refused_quickly_and_writes_nothing[post-to-encoded-slash-path]":
            "ministack's API Gateway routes POST /orders%2F to the function as POST /orders (which answered 422 for "
            "the body's unknown sku), where API Gateway matches no resource of the API for it and answers 403 "
            "(Missing Authentication Token) or 404",
    },
}


# Tests an engine cannot get through at all (they hang until their deadline, and slow every test after them): not run
# there, each with its reason (pytest's xfail with run=False, so they are listed, never counted as passing).
UNRUNNABLE: dict[str, dict[str, str]] = {
    "ministack": {
        "tests/stack/test_concurrency.py::": "concurrent sagas (40 at once): ministack starts a Lambda worker for "
            "each invocation that finds its function's workers busy, unpacking the function's code and layer inside "
            "its own process (the full 54 MB layer: 1.0 CPU-s to extract; 0.26 without the Stripe packages, as "
            "deployed now), so the cold starts of 4 sagas at once outlasted the tasks' TimeoutSeconds (8 s), and each "
            "States.Timeout retry started one more worker: 21 of CreateOrder (then the first step) and 21 of "
            "CancelOrder were starting at once, and the sagas ran out of retries",
        "tests/stack/test_invariants.py::": "concurrent sagas, as test_concurrency.py",
    },
}

# What an engine was seen to do otherwise than AWS where no test that runs there reaches it: the tests whose outcome
# would show it are skipped there for another gap (docs/engines.md lists these with the gaps).
BEHIND_SKIPS: dict[str, list[str]] = {
    "ministack": [
        "its Step Functions context object has no Execution.RedriveCount (`$$.Execution.RedriveCount` is null, where "
        "AWS gives an execution never redriven 0). Every compensation step passes it to its function (redrive_count), "
        "which refuses null: there each compensation fails on every attempt and the execution fails (a declined "
        "card: VoidPayment failed 4 times, the execution FAILED after 22 s). The scenarios and matrix rows that "
        "compensate are skipped there already: their Catch matches an error by its name.",
    ],
}

# Engines whose run of the tier cannot finish on this project's machines yet, and why (docs/engines.md says so).
# ministack's was (its sagas timed out several at once) until it ran them one at a time (SAGAS_AT_ONCE).
BLOCKED: dict[str, str] = {}


def names(name: str, nodeid: str) -> bool:
    return nodeid == name or (name.endswith(("[", "::")) and nodeid.startswith(name))


def gap(engine: str, nodeid: str) -> str | None:
    """Why `nodeid` is expected to fail on `engine`, or None."""
    return next((reason for name, reason in GAPS.get(engine, {}).items() if names(name, nodeid)), None)


def unrunnable(engine: str, nodeid: str) -> str | None:
    """Why `nodeid` is not run on `engine`, or None."""
    return next((reason for name, reason in UNRUNNABLE.get(engine, {}).items() if names(name, nodeid)), None)


def stale(engine: str, nodeids: list[str]) -> list[str]:
    """The engine's gaps that name none of these tests (a test renamed or removed: the list must follow)."""
    listed = {**GAPS.get(engine, {}), **UNRUNNABLE.get(engine, {})}
    return sorted(name for name in listed if not any(names(name, nodeid) for nodeid in nodeids))
