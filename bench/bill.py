"""The full bill (issue 21, point 1): what a million sagas of each path cost on AWS, component by component, from
counts measured on the embedded stack -> docs/benchmarks.md's "The full bill" section.

  python bench/bill.py [--sagas K]      (`make bench-bill`; `make bench` keeps the section it wrote)

One fresh embedded stack (bench/stacks.py's `new`: the reaper's schedule a day apart, so no sweep lands inside a
measurement). For each path (plain, coupon, two cards), one warm-up saga (its sandboxes' cold starts are not a
saga's), then K sagas one at a time; around those K, the deltas of:
  - each execution's history: the states entered and each task's retries (transitions), the tasks (Lambda requests);
  - the Lambda service's counters (/_sagalocal/lambda/stats): every function's invocations, the API's and the
    stream's PublishOutcome's too, and the milliseconds Lambda would bill (each run rounded up to 1 ms);
  - the DynamoDB process's meter (/_sagalocal/dynamodb/stats): WRU and RRU as on-demand bills them, index writes
    included;
  - the functions' log files (what CloudWatch Logs would ingest from them) and the outcome events PublishOutcome
    logged as published (EventBridge PutEvents entries).
The stream's PublishOutcome runs after the execution ends: each measurement waits until its invocations stop
changing (a deadline of 30 s). What cannot be measured here is an assumption, stated in the section.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

from common import (  # noqa: E402
    PATH_SKU,
    PRICES,
    billed_transitions,
    execution_arn,
    history,
    http,
    load,
    path_order,
    post_order,
    wait_end,
)
from report import kept_marked, md, write_marked  # noqa: E402

BEGIN = "<!-- full-bill: written by bench/bill.py; bench/run_all.py keeps it -->"
END = "<!-- /full-bill -->"
DOC = ROOT / "docs" / "benchmarks.md"

RATE = 10.0  # assumed steady sagas a second (26 million a month): X-Ray's sampling depends on it
# X-Ray's default rule: the first request each second (the reservoir), then 5% of the others.
SAMPLED = min(1.0, (1 + 0.05 * (RATE - 1)) / RATE)
COLD_SHARE = 0.01  # assumed: 1 invocation in 100 starts a new sandbox (steady traffic; AWS quotes under 1%)
PATHS = [("plain", {}, ["tok_approve"]), ("coupon", {"coupon": "FIVEOFF"}, ["tok_approve"]),
         ("two cards", {}, ["tok_approve", "tok_approve"])]
# The emulator's own logs; ApiAccess.log is the stage's access log (the template's format), which AWS ingests too.
NOT_AWS_LOGS = ("DynamoDB.log", "LambdaPreloader.log")


def template_settings() -> dict[str, Any]:
    """The functions' memory and architecture (Globals), and the targets of the outcome events' rules (each event
    a rule delivers to a queue is an SQS SendMessage)."""
    from sagalocal.template import Template

    template = Template(ROOT / "template.yaml")
    function = template.raw["Globals"]["Function"]
    queues = {name for name, r in template.raw["Resources"].items() if r["Type"] == "AWS::SQS::Queue"}
    to_queues = sum(1 for r in template.raw["Resources"].values() if r["Type"] == "AWS::Events::Rule"
                    and "EventBusName" in (r.get("Properties") or {})
                    for target in r["Properties"].get("Targets") or []
                    if isinstance(target.get("Arn"), dict)
                    and (target["Arn"].get("Fn::GetAtt") or [None])[0] in queues)
    return {"memory_gb": function["MemorySize"] / 1024, "architecture": function["Architectures"][0],
            "event_queue_targets": to_queues}


def counters(stack: Any, log_dir: Path) -> dict[str, Any]:
    lambdas = http("GET", f"{stack.endpoint}/_sagalocal/lambda/stats")[1]["functions"]
    dynamo = http("GET", f"{stack.dynamodb_endpoint}/_sagalocal/stats")[1]
    logs = {p.name: p.stat().st_size for p in log_dir.glob("*.log") if p.name not in NOT_AWS_LOGS}
    published = log_dir / "PublishOutcomeFunction.log"
    events = published.read_text(errors="replace").count('"outcome published"') if published.exists() else 0
    return {"lambdas": {name: (f["invocations"], f["billed_ms"], f["init_ms"]) for name, f in lambdas.items()},
            "wru": dynamo["total_wru"], "rru": dynamo["total_rru"], "logs": logs, "events": events}


def settled(stack: Any, log_dir: Path, events: int, deadline_s: float = 60.0) -> dict[str, Any]:
    """The counters once PublishOutcome (the stream's consumer, after the executions end) has published `events`
    outcome events in all and its invocations have stopped changing."""
    deadline = time.monotonic() + deadline_s
    last = counters(stack, log_dir)
    while time.monotonic() < deadline:
        time.sleep(1.5)  # the stream's mapping long-polls for a second
        now = counters(stack, log_dir)
        if now["events"] >= events and now["lambdas"] == last["lambdas"] and now["events"] == last["events"]:
            return now
        last = now
    raise TimeoutError(f"PublishOutcome had not settled {deadline_s:.0f} s after the sagas ended "
                       f"({last['events']} of {events} outcome events published)")


def one_saga(stack: Any, order: dict[str, Any]) -> dict[str, int]:
    status, accepted = post_order(stack, json.dumps(order).encode(), {"Idempotency-Key": uuid.uuid4().hex})
    if status != 202:
        raise RuntimeError(f"POST /orders answered {status}: {str(accepted)[:300]}")
    arn = execution_arn(stack, accepted)
    described = wait_end(stack, arn)
    if described["status"] != "SUCCEEDED":
        raise RuntimeError(f"{arn} ended {described['status']}: {described.get('error')}")
    transitions, scheduled = billed_transitions(history(stack, arn))
    return {"transitions": transitions, "tasks": scheduled}


def measure_path(stack: Any, log_dir: Path, extra: dict[str, Any], tokens: list[str], k: int) -> dict[str, Any]:
    order = path_order(PATH_SKU, extra, tokens)
    published = counters(stack, log_dir)["events"]
    one_saga(stack, order)  # warm-up: this path's sandboxes start here, not in the measurement
    before = settled(stack, log_dir, published + 1)
    runs = [one_saga(stack, order) for _ in range(k)]
    after = settled(stack, log_dir, before["events"] + k)
    per_function = {}
    for name, (n, ms, init_ms) in after["lambdas"].items():
        n0, ms0, _ = before["lambdas"].get(name, (0, 0, 0))
        if n != n0:
            per_function[name] = {"invocations": (n - n0) / k, "billed_ms": (ms - ms0) / k, "init_ms": init_ms}
    return {"k": k, "transitions": sum(r["transitions"] for r in runs) / k,
            "tasks": sum(r["tasks"] for r in runs) / k, "functions": per_function,
            "wru": (after["wru"] - before["wru"]) / k, "rru": (after["rru"] - before["rru"]) / k,
            "log_bytes": sum(after["logs"].get(n, 0) - before["logs"].get(n, 0) for n in after["logs"]) / k,
            "events": (after["events"] - before["events"]) / k}


def bill(m: dict[str, Any], settings: dict[str, Any], architecture: str) -> list[tuple[str, str, float, float]]:
    """(component, count per saga as text, count, $ per million sagas) for one path on one architecture."""
    gb, per_gb_s = settings["memory_gb"], PRICES["gb_s"][architecture]
    invocations = sum(f["invocations"] for f in m["functions"].values())
    billed_s = sum(f["billed_ms"] for f in m["functions"].values()) / 1000
    # A cold start bills its INIT at the same GB-s rate: COLD_SHARE of the invocations, each with its function's
    # measured INIT.
    init_s = sum(f["invocations"] * COLD_SHARE * f["init_ms"] / 1000 for f in m["functions"].values())
    requests = 1  # POST /orders; a client polling GET /orders/{id} adds one API (and WAF) request a poll
    traces = 2 * SAMPLED  # the request's trace (API, execution, tasks) and PublishOutcome's (a stream's batch)
    sends = m["events"] * settings["event_queue_targets"]  # EventBridge delivering each outcome event to a queue
    log_gb = m["log_bytes"] / 1e9
    rows = [
        ("Step Functions transitions", f"{m['transitions']:g}", m["transitions"], PRICES["transition"]),
        ("Lambda requests", f"{invocations:g}", invocations, PRICES["lambda_request"]),
        (f"Lambda duration ({architecture}, {gb * 1024:.0f} MB)",
         f"{billed_s * 1000:.0f} ms = {billed_s * gb:.4f} GB-s", billed_s * gb, per_gb_s),
        (f"Lambda INIT ({COLD_SHARE:.0%} of invocations cold)", f"{init_s * 1000:.1f} ms = {init_s * gb:.5f} GB-s",
         init_s * gb, per_gb_s),
        ("DynamoDB write units (indexes included)", f"{m['wru']:g} WRU", m["wru"], PRICES["wru"]),
        ("DynamoDB read units", f"{m['rru']:g} RRU", m["rru"], PRICES["rru"]),
        ("API Gateway REST requests", f"{requests}", requests, PRICES["api_request"]),
        ("AWS WAF requests inspected", f"{requests}", requests, PRICES["waf_request"]),
        ("EventBridge events (outcome)", f"{m['events']:g}", m["events"], PRICES["event"]),
        ("SQS requests (outcome events to their queue)", f"{sends:g}", sends, PRICES["sqs_request"]),
        ("CloudWatch Logs ingested", f"{log_gb * 1e9:,.0f} bytes", log_gb, PRICES["logs_gb"]),
        (f"X-Ray traces recorded ({SAMPLED:.1%} sampled)", f"{traces:.3f}", traces, PRICES["trace"]),
    ]
    return [(name, text, n, n * price * 1e6) for name, text, n, price in rows]


def per_path_table(rows: list[dict[str, Any]]) -> list[str]:
    """One saga of each kind (bench/measure.py's transitions_per_path), the failing ones too: the states it entered,
    its transitions and Lambda requests, and what those two cost."""
    if not rows:
        return []
    return ["Transitions per path: one saga of each kind, the states it entered, what Step Functions Standard bills "
            "for it (each state entered, and each task retry, is a transition; a Map's iterations count their own "
            "states), and its Lambda requests (the API's and each task's):", "",
            md(["path", "outcome", "transitions", "Lambda requests", "$ per million (transitions + Lambda)",
                "states"],
               [[p["path"], p["status"] + (f" {p['error']}" if p.get("error") else ""), p["transitions"],
                 p["lambda_requests"], f"{p['usd_per_million']:.2f}", " → ".join(p["states"])] for p in rows]), ""]


def section(results: dict[str, Any]) -> str:
    settings, paths = results["settings"], results["paths"]
    names = list(paths)
    bills = {arch: {p: bill(paths[p], settings, arch) for p in names} for arch in ("x86_64", "arm64")}
    total = {arch: {p: sum(row[3] for row in bills[arch][p]) for p in names} for arch in bills}
    chosen = bills[settings["architecture"]]
    head = ["component", *[f"{p}: per saga" for p in names], *[f"{p}: $/M" for p in names]]
    body = [[rows[0][0], *[row[1] for row in rows], *[f"{row[3]:.2f}" for row in rows]]
            for rows in zip(*(chosen[p] for p in names), strict=True)]
    body += [[f"**total, {arch}**", *["" for _ in names], *[f"**{total[arch][p]:.2f}**" for p in names]]
             for arch in bills]
    shares = {p: next(row[3] for row in chosen[p] if row[0].startswith("Step Functions"))
              / total[settings["architecture"]][p] for p in names}
    saving = {p: total["x86_64"][p] - total["arm64"][p] for p in names}
    functions = sorted({f for p in names for f in paths[p]["functions"]})
    per_function = [[f, *[(f"{paths[p]['functions'][f]['invocations']:g} x, "
                          f"{paths[p]['functions'][f]['billed_ms'] / paths[p]['functions'][f]['invocations']:.1f} ms"
                          if f in paths[p]["functions"] else "-") for p in names],
                     max(paths[p]["functions"][f]["init_ms"] for p in names if f in paths[p]["functions"])]
                    for f in functions]
    return "\n".join([
        BEGIN, "", "## The full bill (issue 21, point 1)", "",
        f"Measured {results['date']} at commit `{results['commit']}` on {results['machine']} by `make bench-bill` "
        f"(bench/bill.py): one fresh embedded stack, {results['k']} sagas of each path one at a time after a "
        f"warm-up saga; load average {results['load_start']} at the start, {results['load_end']} at the end. "
        "Counts are measured (each execution's history, the Lambda service's counters, the DynamoDB meter, the "
        "functions' log files, the outcome events published); prices are us-east-1 list prices, December 2026, "
        "per million sagas. The template's functions: "
        f"{settings['memory_gb'] * 1024:.0f} MB, {settings['architecture']}.", "",
        md(head, body), "",
        "Step Functions' share of the bill (" + settings["architecture"] + "): "
        + ", ".join(f"{p} {shares[p]:.0%}" for p in names) + ". arm64 instead of x86_64 saves "
        + ", ".join(f"{p} ${saving[p]:.2f} ({saving[p] / total['x86_64'][p]:.2%})" for p in names)
        + " per million sagas (duration and INIT, 20% less a GB-s). Transitions are the bill: one state less on a "
        "path saves $25 per million sagas, more than moving every function to arm64 would.", "",
        "Each function's invocations per saga and its billed milliseconds per invocation (each run's wall-clock "
        "time on this machine, rounded up to the millisecond, its DynamoDB and gateway calls to local processes "
        "included); INIT is the function's cold start measured here:", "",
        md(["function", *names, "INIT ms"], per_function), "",
        *per_path_table(results.get("per_path") or []),
        "Assumptions (what is not measured here):",
        "",
        "- Durations are this machine's: on AWS a DynamoDB call takes a few milliseconds of network each way, "
        "and a Lambda's CPU share follows its memory. Read the duration line as an order of magnitude.",
        f"- INIT: {COLD_SHARE:.0%} of invocations start a sandbox (steady traffic), each billed its function's "
        "INIT as measured here (billed since August 2025).",
        "- API Gateway and WAF: one request per saga (the POST). A client that polls GET /orders/{id} adds "
        f"${(PRICES['api_request'] + PRICES['waf_request']) * 1e6:.2f} per million polls. WAF's $5 a month for the "
        "web ACL and $1 a month a rule, the reaper's schedule (a Reaper invocation a minute and its queries, about "
        "43,200 a month) and the CloudWatch dashboards and alarms are fixed monthly costs, not per saga.",
        "- Logs: the functions' log lines and the stage's access log as written here (JSON, the template's "
        "formats); Lambda's platform lines are off (SystemLogLevel WARN); Step Functions logs errors only (a "
        "happy saga writes none).",
        f"- X-Ray: two traces per saga (the request's, through the execution and its tasks; the stream's "
        f"PublishOutcome), at a steady {RATE:g} sagas a second: the default rule records the first each second "
        f"and 5% of the rest, {SAMPLED:.1%} (at 1 saga a second or less, all of them: ${2 * 5:.2f} per million). "
        "Traces retrieved or scanned are not counted.",
        "- SQS: each outcome event's delivery to the queue its rule targets (the template's rules); the reaper's "
        "queue carries abandoned sagas only, and the queue's consumer, if any, is not this stack.",
        "- PublishOutcome: one invocation per saga, as the sagas ran one at a time; at volume one batch of the "
        "stream (BatchSize 10) carries several, so fewer requests.", "",
        END, ""])


def write_section(text: str, path: Path = DOC) -> None:
    write_marked(path, BEGIN, END, text)


def kept_section(path: Path = DOC) -> str:
    """The section as the file has it, for `make bench` to write back after its own."""
    return kept_marked(path, BEGIN, END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, default=5, help="sagas measured per path (default 5)")
    parser.add_argument("--out", type=Path, default=DOC, help="the Markdown file to write the section into")
    args = parser.parse_args(argv)
    if args.sagas < 1:
        parser.error("--sagas must be at least 1")
    from stacks import start_new

    results: dict[str, Any] = {"k": args.sagas, "load_start": load(), "settings": template_settings(),
                               "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                        capture_output=True, text=True).stdout.strip() or "?",
                               "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
                                          f"Python {platform.python_version()}"}
    stack = start_new()
    try:
        log_dir = Path(http("GET", f"{stack.endpoint}/_sagalocal/metrics")[1]["log_dir"])
        results["paths"] = {name: measure_path(stack, log_dir, extra, tokens, args.sagas)
                            for name, extra, tokens in PATHS}
        from measure import transitions_per_path

        results["per_path"] = transitions_per_path(stack)
    finally:
        stack.stop()
    results["load_end"] = load()
    text = section(results)
    write_section(text, args.out)
    print(text)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
