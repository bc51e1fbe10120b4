"""The simulation patches every boto3 client of its process while it runs (moto's mock): stop it after each
module, so that tests sharing the process (`pytest tests` in one go) meet real clients again."""

from __future__ import annotations

import pytest

from sagalocal.sim.world import shutdown


@pytest.fixture(autouse=True, scope="module")
def _simulated_aws_stops_after_the_module():
    yield
    shutdown()
