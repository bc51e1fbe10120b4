"""The stack tier's Target joins the Location the API returns onto the target's API URL (tests/stack/support.py):
on AWS the stage sits at the URL's root, on LocalStack and other emulators behind a path of their own, and the
embedded stack serves the API with or without the stage."""

from __future__ import annotations

import pytest

from tests.stack.support import location_url

LOCATION = "/dev/orders/ord_1"


@pytest.mark.parametrize(("api_url", "expected"), [
    # AWS: the stage is the URL's path
    ("https://abc123.execute-api.us-east-1.amazonaws.com/dev",
     "https://abc123.execute-api.us-east-1.amazonaws.com/dev/orders/ord_1"),
    ("https://abc123.execute-api.us-east-1.amazonaws.com/dev/",
     "https://abc123.execute-api.us-east-1.amazonaws.com/dev/orders/ord_1"),
    # LocalStack, as scripts/localstack_outputs.py writes it: a path before the stage and one after it
    ("http://localhost.localstack.cloud:4566/restapis/abc123/dev/_user_request_",
     "http://localhost.localstack.cloud:4566/restapis/abc123/dev/_user_request_/orders/ord_1"),
    # a path before the stage only
    ("http://127.0.0.1:4566/apis/abc123/dev", "http://127.0.0.1:4566/apis/abc123/dev/orders/ord_1"),
    # the embedded stack: the stage is not in its URL; it serves the Location's path as it is
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000/dev/orders/ord_1"),
])
def test_a_location_is_joined_after_the_api_url_s_own_path(api_url, expected):
    assert location_url(api_url, LOCATION) == expected


def test_a_location_without_the_stage_follows_the_api_url_whole():
    assert location_url("http://localhost:4566/restapis/abc123/dev/_user_request_", "/orders/ord_1") == \
        "http://localhost:4566/restapis/abc123/dev/_user_request_/orders/ord_1"


def test_a_location_that_holds_the_api_url_s_whole_path_is_joined_onto_its_host():
    api = "http://localhost:4566/restapis/abc123/dev/_user_request_"
    assert location_url(api, "/restapis/abc123/dev/_user_request_/orders/ord_1?x=1") == \
        "http://localhost:4566/restapis/abc123/dev/_user_request_/orders/ord_1?x=1"


def test_an_absolute_location_is_kept():
    assert location_url("http://localhost:4566/restapis/a/dev/_user_request_", "https://api.example/dev/o") == \
        "https://api.example/dev/o"
