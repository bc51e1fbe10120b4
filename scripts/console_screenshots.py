"""Screenshots of the console for the docs (make docs), through the browser the browser tests use.

Stands up the embedded stack as the browser tests do, places their scenarios, and writes into docs/img/:
  console_executions.png             the executions list
  console_state_machine.png          the state machine's graph
  console_execution_compensated.png  a declined order's execution: what happened and its path
  console_order.png                  that order: saga status, lease, reservation, payment, step log
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.browser.harness import ROOT, browser_missing, launch, place_scenarios, start_stack, stop_stack_process

OUT = ROOT / "docs/img"
WIDTH = 1280


def main() -> int:
    missing = browser_missing()
    if missing:
        print(f"error: cannot take the console's screenshots: {missing}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="console-shots-") as workdir:
        stack = start_stack(Path(workdir))
        try:
            scenarios = place_scenarios(stack)
            declined = scenarios["declined"].order_id
            with sync_playwright() as playwright:
                browser = launch(playwright)
                page = browser.new_page(viewport={"width": WIDTH, "height": 800})
                page.set_default_timeout(20_000)

                page.goto(f"{stack.console}/executions")
                page.screenshot(path=OUT / "console_executions.png")

                page.goto(f"{stack.console}/state-machine")
                page.locator(".graph[data-drawn=true]").screenshot(path=OUT / "console_state_machine.png")

                page.goto(f"{stack.console}/executions/{declined}")
                page.locator(".graph[data-drawn=true]").wait_for()
                legend = page.locator("ul.legend").bounding_box()
                assert legend is not None
                page.screenshot(path=OUT / "console_execution_compensated.png", full_page=True,
                                clip={"x": 0, "y": 0, "width": WIDTH, "height": legend["y"] + legend["height"] + 12})

                page.goto(f"{stack.console}/orders/{declined}")
                page.screenshot(path=OUT / "console_order.png", full_page=True)
                browser.close()
        finally:
            stop_stack_process(stack.process)
    for name in ("console_executions", "console_state_machine", "console_execution_compensated", "console_order"):
        print(f"wrote docs/img/{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
