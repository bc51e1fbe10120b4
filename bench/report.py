"""Render the benchmarks' JSON results into docs/benchmarks.md and the plots in docs/img/ (matplotlib, Agg).

Usage: python bench/report.py [RESULTS_DIR]   (default .local/bench/results, as bench/run_all.py writes it)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "--:", "c": ":-:"}
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def failed(result: dict[str, Any] | None) -> str | None:
    if result is None:
        return "not run"
    if "crashed" in result:
        return result["crashed"]
    return None


# ---- plots -------------------------------------------------------------------------------------------
def plot_engine(engine: dict[str, Any], peer: dict[str, Any] | None) -> str | None:
    main = engine.get("main") or {}
    if "local_ms" not in main:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = ["floor: handlers\ncalled directly", "local stack:\nexecution", "local stack:\nPOST -> SUCCEEDED"]
    values = [main["floor_ms"], main["execution_ms"], main["local_ms"]]
    colors = ["#7f7f7f", "#1f77b4", "#1f77b4"]
    bars = left.bar(labels, values, color=colors)
    left.axhline(main["floor_ms"] * 3, color="#d62728", linestyle="--", linewidth=1)
    left.text(-0.4, main["floor_ms"] * 3, " 3x floor (target)", color="#d62728", va="bottom", fontsize=9)
    for bar, value in zip(bars, values, strict=True):
        left.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.0f}", ha="center", va="bottom", fontsize=9)
    left.set_ylabel("median ms per happy-path saga")
    left.set_title(f"Engine overhead ({main.get('n')} sagas each, interleaved)")
    left.set_ylim(0, max(values + [main["floor_ms"] * 3]) * 1.15)
    variants = [(name, v) for name, v in (engine.get("variants") or {}).items() if "overhead_ms" in v]
    if variants:
        names = [name.replace("without ", "without\n") for name, _ in variants]
        overhead = [v["overhead_ms"] for _, v in variants]
        bars = right.bar(names, overhead, color=["#2ca02c"] + ["#ff7f0e"] * (len(variants) - 2) + ["#d62728"])
        for bar, value, (_, v) in zip(bars, overhead, variants, strict=True):
            label = f"{value:.0f} ms\n{v['ratio_local_floor']:.2f}x"
            right.text(bar.get_x() + bar.get_width() / 2, max(value, 0), label, ha="center", va="bottom", fontsize=8)
        right.set_ylabel("engine overhead per saga, ms (median of\nexecution - floor, paired)")
        right.set_title(f"moto patches left out ({variants[0][1]['n']} sagas each; label: local/floor)")
        right.set_ylim(min(0, min(overhead) * 1.2), max(overhead) * 1.35)
    fig.tight_layout()
    path = IMG / "bench_engine.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_profile(engine: dict[str, Any]) -> str | None:
    profile = engine.get("profile") or {}
    if "roles" not in profile:
        return None
    plt = _plt()
    per_saga = 1000 / profile["rate"] / max(1, profile["sagas"])
    rows = [(r["what"], r["samples"] * per_saga) for r in profile["roles"]]
    workers = next((p for p in profile["processes"] if p["what"].startswith("handler")), None)
    if workers:
        rows.append(("handler workers (separate processes)", workers["samples"] * per_saga))
    rows.sort(key=lambda r: r[1])
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.2))
    colors = ["#7f7f7f" if "handler" in name or "bench" in name else "#1f77b4" for name, _ in rows]
    bars = ax.barh([name for name, _ in rows], [ms for _, ms in rows], color=colors)
    for bar, (_, ms) in zip(bars, rows, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {ms:.1f}", va="center", fontsize=9)
    ax.set_xlabel("CPU ms per saga (py-spy --gil samples)")
    ax.set_title(f"Where the time goes: {profile['seconds']:.0f} s of back-to-back happy-path sagas")
    fig.tight_layout()
    path = IMG / "bench_profile.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_throughput(result: dict[str, Any]) -> str | None:
    levels = [r for r in result.get("levels", []) if r.get("p50_ms") is not None]
    if not levels:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    clients = [r["clients"] for r in levels]
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        left.plot(clients, [r[key] for r in levels], style, label=key.split("_")[0])
    left.set_xscale("log", base=2)
    left.set_xticks(clients, [str(c) for c in clients])
    left.set_xlabel("concurrent clients")
    left.set_ylabel("ms, POST -> execution stopDate")
    left.set_title("Latency percentiles")
    left.legend()
    right.plot(clients, [r["sagas_per_s"] for r in levels], "o-", color="#2ca02c")
    for c, r in zip(clients, levels, strict=True):
        right.annotate(f"{r['sagas_per_s']:.1f}", (c, r["sagas_per_s"]), textcoords="offset points", xytext=(0, 6),
                       ha="center", fontsize=9)
    right.set_xscale("log", base=2)
    right.set_xticks(clients, [str(c) for c in clients])
    right.set_xlabel("concurrent clients")
    right.set_ylabel("sagas per second")
    right.set_ylim(0, max(r["sagas_per_s"] for r in levels) * 1.3)
    right.set_title(f"Throughput ({result['per_level']} sagas per level)")
    fig.tight_layout()
    path = IMG / "bench_throughput.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_cost(result: dict[str, Any]) -> str | None:
    rows = result.get("scenarios") or []
    if not rows:
        return None
    plt = _plt()
    import numpy as np

    fig, ax = plt.subplots(figsize=(11, 4.8))
    x = np.arange(len(rows))
    width = 0.38
    for offset, workflow, color in ((-width / 2, "standard", "#1f77b4"), (width / 2, "express", "#9467bd")):
        sfn = [r["dollars_per_million"][workflow] for r in rows]
        lam = [r["dollars_per_million"]["lambda"] for r in rows]
        ddb = [r["dollars_per_million"]["dynamodb"] for r in rows]
        ax.bar(x + offset, sfn, width, color=color, label=f"Step Functions {workflow.upper()}")
        ax.bar(x + offset, lam, width, bottom=sfn, color="#ff7f0e", label="Lambda" if workflow == "standard" else None)
        ax.bar(x + offset, ddb, width, bottom=[a + b for a, b in zip(sfn, lam, strict=True)], color="#2ca02c",
               label="DynamoDB on-demand" if workflow == "standard" else None)
        for xi, total in zip(x, [a + b + c for a, b, c in zip(sfn, lam, ddb, strict=True)], strict=True):
            ax.text(xi + offset, total, f"{total:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["name"].replace("compensation: ", "compensation:\n").replace(" (", "\n(") for r in rows],
                  fontsize=8)
    ax.set_ylabel("$ per million sagas")
    ax.set_title("Cost per million sagas: left bar STANDARD, right bar EXPRESS (+ Lambda + DynamoDB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = IMG / "bench_cost.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_coldstart(result: dict[str, Any]) -> str | None:
    rows = result.get("rows") or []
    if not rows:
        return None
    plt = _plt()
    rows = list(reversed(rows))
    fig, ax = plt.subplots(figsize=(10, 0.33 * len(rows) + 1.4))
    colors = ["#7f7f7f" if not r["handler"] else ("#2ca02c" if r["ratio"] <= result["target"] else "#d62728")
              for r in rows]
    bars = ax.barh([r["module"] for r in rows], [r["ratio"] for r in rows], color=colors)
    for bar, r in zip(bars, rows, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r['ratio']:.2f}x ({r['median_ms']:.0f} ms)",
                va="center", fontsize=8)
    ax.axvline(result["target"], color="#d62728", linestyle="--", linewidth=1)
    ax.text(result["target"], len(rows) - 0.4, f" target {result['target']}x", color="#d62728", fontsize=9)
    ax.set_xlabel("module init / `import boto3` in the same interpreter (median)")
    ax.set_title("Cold start: handler module initialization")
    ax.set_xlim(0, max(r["ratio"] for r in rows) * 1.3)
    fig.tight_layout()
    path = IMG / "bench_coldstart.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


# ---- sections --------------------------------------------------------------------------------------
def section_engine(engine: dict[str, Any] | None, images: dict[str, str | None]) -> str:
    out = ["## 1. Engine overhead", ""]
    problem = failed(engine)
    if problem:
        return "\n".join(out + [f"Not measured: {problem}", ""])
    main = engine.get("main") or {}
    if "error" in main:
        out.append(f"Not measured: {main['error']}")
    else:
        verdict = "meets" if main["ratio_local_floor"] <= 3 else "misses"
        out += [
            "`bench/local_vs_direct.py` (its `measure()`): happy-path sagas placed over HTTP on the embedded stack "
            "(POST /orders -> SUCCEEDED, DescribeExecution polled every 5 ms), interleaved with the floor: the same "
            "four handlers called directly, in sequence, in the same process, against the same moto DynamoDB "
            "endpoint.", "",
            table(["median ms per saga", "value"], [
                ["local stack, POST -> SUCCEEDED", fmt(main["local_ms"])],
                ["local stack, execution (startDate -> stopDate)", fmt(main["execution_ms"])],
                ["floor: handlers called directly", fmt(main["floor_ms"])],
                ["**ratio local / floor** (target <= 3)", f"**{main['ratio_local_floor']:.2f}**"],
                ["ratio execution / floor", f"{main['ratio_execution_floor']:.2f}"],
                ["engine overhead: median of (execution - floor), paired", fmt(main.get("overhead_ms"))],
            ]), "",
            f"The local stack {verdict} the 3x target ({main.get('n')} sagas of each kind).", "",
        ]
    if images.get("engine"):
        out += [f"![engine overhead](img/{images['engine']})", ""]
    variants = engine.get("variants") or {}
    if variants:
        out += ["### The moto patches, with and without", "",
                "`sagalocal/moto_patches.py` removes three costs from moto. Each variant below runs the same "
                "measurement in its own process with some of them not installed (the DynamoDB lock, a correctness "
                f"patch, is always installed); variants alternate over {engine.get('rounds', 1)} rounds and their "
                "samples are pooled. *Engine overhead* is the median of each saga's execution time minus the floor "
                "run right after it: paired, so that the machine's drift cancels out.", ""]
        for key, what in (engine.get("patches") or {}).items():
            out.append(f"- `{key}`: {what}")
        out.append("")
        rows = []
        base = variants.get("all patches", {})
        for name, v in variants.items():
            if "error" in v:
                rows.append([name, ", ".join(v.get("installed", [])) or "none", "-", "-", "-", "-", "-", "-",
                             v["error"]])
                continue
            delta = v["overhead_ms"] - base["overhead_ms"] if "overhead_ms" in base else None
            rows.append([name, ", ".join(v.get("installed", [])) or "none", v["n"], fmt(v["local_ms"]),
                         fmt(v["execution_ms"]), fmt(v["floor_ms"]), f"**{v['overhead_ms']:.1f}**",
                         "" if delta is None or name == "all patches" else f"{delta:+.1f}",
                         f"{v['ratio_local_floor']:.2f}"])
        out += [table(["variant", "perf patches installed", "n", "local ms", "execution ms", "floor ms",
                       "engine overhead ms", "vs all patches", "local / floor"], rows, "llrrrrrrr"), ""]
        if images.get("patches"):
            out += [f"![moto patches](img/{images['patches']})", ""]
        out += ["On this shared machine a difference of about 10-20 ms per saga is within run-to-run noise; the "
                "transaction patch's saving grows with the tables (moto deep-copied every table in a transaction), "
                "so it shows little here, where the tables hold a few dozen items.", ""]
    profile = engine.get("profile") or {}
    out += ["### Where the time goes", ""]
    if "error" in profile or not profile:
        out += [f"Not measured: {profile.get('error', 'no profile')}", ""]
        return "\n".join(out)
    per_saga = 1000 / profile["rate"] / max(1, profile["sagas"])
    out += [f"py-spy {profile.get('pyspy', '')} sampled the stack's process and its handler workers "
            f"(`--subprocesses --gil`, {profile['rate']} Hz, {profile['seconds']:.0f} s) while happy-path sagas ran "
            f"back to back (~{profile['sagas']:.0f} sagas, median {profile['saga_ms_median']:.0f} ms each). "
            "With `--gil` a sample is taken only from the thread holding the GIL, so samples are CPU spent in "
            "Python; waiting (on sockets, pipes, the workers) is not counted.", "",
            table(["process", "CPU ms per saga", "share"],
                  [[p["what"], fmt(p["samples"] * per_saga), f"{p['share']:.0%}"] for p in profile["processes"]]), "",
            "The stack's process by role (each sample is assigned by the frames on its stack):", "",
            table(["role", "CPU ms per saga", "share of the stack process"],
                  [[r["what"], fmt(r["samples"] * per_saga), f"{r['share']:.0%}"] for r in profile["roles"]]), ""]
    if images.get("profile"):
        out += [f"![where the time goes](img/{images['profile']})", ""]
    out += ["Top functions of the stack's process, inclusive (generic thread/server frames left out):", "",
            table(["function", "share"], [[f"`{r['what']}`", f"{r['share']:.0%}"] for r in profile["inclusive"][:15]],
                  "lr"), "",
            "Top functions by self time:", "",
            table(["function", "share"], [[f"`{r['what']}`", f"{r['share']:.0%}"] for r in profile["self"][:10]],
                  "lr"), ""]
    out += engine_notes(profile)
    return "\n".join(out)


def engine_notes(profile: dict[str, Any]) -> list[str]:
    per_saga = 1000 / profile["rate"] / max(1, profile["sagas"])
    roles = {r["what"]: r for r in profile["roles"]}
    stack_ms = sum(r["samples"] for name, r in roles.items() if not name.startswith("bench driver")) * per_saga
    dispatch = next((r for name, r in roles.items() if name.startswith("moto server: HTTP")), None)
    dynamo = next((r for name, r in roles.items() if name.startswith("moto server: DynamoDB")), None)
    interp = sum(r["samples"] for name, r in roles.items() if name.startswith("interpreter"))
    out = ["Hot spots in the stack's process (inclusive; a sample counts once per line):", "",
           table(["hot spot", "CPU ms per saga", "share"],
                 [[h["what"], fmt(h["samples"] * per_saga), f"{h['share']:.0%}"] for h in profile.get("hotspots", [])]),
           "", "Reading it:", "",
           f"- The stack's process spends about {stack_ms:.0f} ms of CPU per saga (the bench driver left out), "
           "under one GIL: that caps "
           f"throughput at about {1000 / max(1, stack_ms):.1f} sagas/s however many clients there are; the "
           "throughput benchmark flattens below that, since the handler workers and the clients share the same "
           "2 cores."]
    if dynamo and dispatch:
        out.append(f"- moto's DynamoDB ({dynamo['samples'] * per_saga:.0f} ms per saga) and moto's generic request "
                   f"handling ({dispatch['samples'] * per_saga:.0f} ms: Werkzeug, Flask, moto's dispatch, request "
                   "parsing and response serialization) are most of it: every AWS call a handler or the "
                   "interpreter makes pays the generic part once, on a new connection and a new thread.")
    out.append(f"- The Step Functions interpreter itself (ASL evaluation plus its boto3 Lambda client) is "
               f"{interp * per_saga:.0f} ms per saga, now that the definition is parsed once and the clients are "
               "cached.")
    out.append("- Candidates for the next sagalocal/moto_patches.py entry, by the hot spots above: a cache of parsed "
               "DynamoDB expressions keyed by their text (as the ASL cache); moto's response serialization is the "
               "other large item. Keep-alive connections to moto's server would save less (the thread per "
               "connection is a small share).")
    out.append("")
    return out


def section_throughput(result: dict[str, Any] | None, images: dict[str, str | None]) -> str:
    out = ["## 2. Throughput", ""]
    problem = failed(result)
    if problem:
        return "\n".join(out + [f"Not measured: {problem}", ""])
    out += [f"`bench/throughput.py`: {result['per_level']} happy-path sagas per level; each client places sagas "
            "back to back. Latency is POST sent -> the execution's stopDate. One poller thread reads "
            f"ListExecutions(statusFilter=RUNNING) every {result['poll_interval_s'] * 1000:.0f} ms for all clients and "
            "one DescribeExecution per finished saga. Every pool of the happy path is warmed to its "
            f"{result['max_workers_per_function']} worker processes first, so no level pays a cold start.", "",
            table(["clients", "sagas", "sagas/s", "p50 ms", "p95 ms", "p99 ms", "failed", "sagas that retried a step"],
                  [[r["clients"], r["sagas"], fmt(r["sagas_per_s"], 2), fmt(r["p50_ms"], 0), fmt(r["p95_ms"], 0),
                    fmt(r["p99_ms"], 0), r["failures"], r["sagas_with_retries"]] for r in result["levels"]]), ""]
    retried = [(r["clients"], r["retry_errors"]) for r in result["levels"] if r["retry_errors"]]
    for clients, errors in retried:
        out.append(f"- retries at {clients} clients: " + ", ".join(f"{k} x{v}" for k, v in errors.items()))
    if retried:
        out.append("")
    if images.get("throughput"):
        out += [f"![throughput](img/{images['throughput']})", ""]
    levels = result["levels"]
    if levels:
        best = max(levels, key=lambda r: r["sagas_per_s"])
        first = levels[0]
        out += [f"Throughput flattens at about {best['sagas_per_s']:.1f} sagas/s ({best['clients']} clients) from "
                f"{first['sagas_per_s']:.1f} with one client, and latency grows with the queue: the stack's process "
                "is CPU-bound on one GIL (see *where the time goes*) on a 2-core machine that also runs the handler "
                "workers. Each function has at most "
                f"{result['max_workers_per_function']} workers, so at 8 and 16 clients invocations also wait for a "
                "free worker.", ""]
    return "\n".join(out)


def section_peer(result: dict[str, Any] | None, images: dict[str, str | None]) -> str:
    out = ["## 3. Against a peer: ministack", ""]
    problem = failed(result)
    if problem:
        return "\n".join(out + [f"peer: not measured: {problem}", ""])
    if "not_measured" in result:
        return "\n".join(out + [f"peer: not measured: {result['not_measured']}", ""])
    out += [f"`bench/peer.py`: the same template, built by `sam build`, deployed with `samlocal deploy` "
            f"(aws-sam-cli-local) to ministack {result['ministack_version']} bound to 127.0.0.1 "
            f"(deploy took {result['deploy_s']:.1f} s; ministack's first saga, with every function's cold start, "
            f"{result['peer_first_saga_ms']:.0f} ms). Happy-path sagas alternate between the two stacks, "
            "DescribeExecution polled every 20 ms on both.", "",
            table(["median ms per saga", "POST -> SUCCEEDED", "execution"], [
                ["embedded stack (sagalocal)", fmt(result["local_ms"]), fmt(result["local_execution_ms"])],
                ["ministack", fmt(result["peer_ms"]), fmt(result["peer_execution_ms"])],
                ["**ratio ministack / embedded**", f"**{result['ratio_peer_local']:.2f}**", ""],
            ]), "",
            "Only the happy path is comparable: ministack reports a Python handler's exception as "
            "`Runtime.HandlerError` instead of the exception's class name, so no `Catch` on a business error "
            "(PaymentDeclined, InsufficientStock, ...) matches there. ministack runs the handlers from the `sam "
            "build` output with Python 3.13 (its own venv, .local/bench/ministack-venv) and X-Ray tracing as the "
            "template sets it; the embedded stack runs them from the source tree with tracing disabled.", ""]
    return "\n".join(out)


def section_cost(result: dict[str, Any] | None, images: dict[str, str | None]) -> str:
    out = ["## 4. Cost per saga", ""]
    problem = failed(result)
    if problem:
        return "\n".join(out + [f"Not measured: {problem}", ""])
    prices = result["prices"]
    memory = result.get("memory_mb", {})
    happy = result["happy_path"]
    out += ["`bench/cost.py` runs every scenario of events/scenarios.json on the embedded stack, plus two "
            "compensations made with fault injection (POST /_sagalocal/faults), one saga at a time, and counts "
            "from the real execution history and from every DynamoDB request the saga made (recorded by wrapping "
            "moto's `DynamoHandler.call_action` in the benchmark's process, where the stack's server runs).", "",
            "Rules:", "",
            "- **State transitions** (STANDARD bills them): one per `*StateEntered` event, Succeed and Fail states "
            "included, plus one per retry: each `TaskScheduled` beyond the first within a state visit.",
            "- **Lambda invocations**: the saga's `TaskScheduled` events plus one OrdersApi invocation per POST. "
            f"Duration: each invocation's measured handler time on this machine, rounded up to 1 ms, at "
            f"{prices['lambda_memory_mb']} MB (the template's MemorySize"
            + (f"; the functions here: {', '.join(str(m) for m in sorted(set(memory.values())))} MB" if memory else "")
            + "). An invocation "
            "refused by fault injection never ran a handler and adds no duration.",
            "- **EXPRESS**: one request per saga + the execution's duration (startDate -> stopDate, as measured "
            f"locally) rounded up to {prices['express_increment_ms']} ms, at {prices['express_memory_mb']} MB "
            "(assumed: "
            "the saga's state is a few KB, so the smallest 64 MB memory unit).",
            *[f"- **DynamoDB**: {rule}" for rule in result["rules"]],
            "- **Prices** (us-east-1, on demand, no free tier): STANDARD "
            f"${prices['standard_per_transition'] * 1e6:.2f} "
            f"per million transitions; EXPRESS ${prices['express_per_request'] * 1e6:.2f} per million requests + "
            f"${prices['express_per_gb_s']} per GB-second; Lambda ${prices['lambda_per_request'] * 1e6:.2f} "
            "per million "
            f"requests + ${prices['lambda_per_gb_s']} per GB-second; DynamoDB ${prices['ddb_per_wru'] * 1e6:.3f} per "
            f"million WRU, ${prices['ddb_per_rru'] * 1e6:.3f} per million RRU. API Gateway, CloudWatch Logs "
            "(the state machine logs ALL with execution data), X-Ray and SQS are left out.",
            "- Durations are local (handlers talk to moto, not DynamoDB): read the Lambda-duration and EXPRESS "
            "figures as orders of magnitude; transitions, invocations and capacity units are exact for this code.",
            ""]
    rows = []
    for r in result["scenarios"]:
        d = r["dollars_per_million"]
        outcome = r["status"] + (f" ({r['error']})" if r["error"] else "")
        rows.append([r["name"], outcome, r["transitions"], r["retries"], r["lambda_invocations"],
                     r["lambda_billed_ms"], fmt(r["execution_ms"], 0), r["ddb_requests"], fmt(r["ddb_wru"], 0),
                     fmt(r["ddb_gsi_wru"], 0), fmt(r["ddb_rru"], 1)])
    out += [table(["scenario", "outcome", "transitions", "of which retries", "Lambda invocations", "Lambda ms billed",
                   "execution ms", "DynamoDB requests", "WRU", "of which GSI", "RRU"], rows, "llrrrrrrrrr"), ""]
    rows = []
    for r in result["scenarios"]:
        d = r["dollars_per_million"]
        rows.append([r["name"], fmt(d["standard"], 2), fmt(d["express"], 2), fmt(d["lambda_requests"], 2),
                     fmt(d["lambda_duration"], 2), fmt(d["dynamodb"], 2), f"**{d['total_standard']:.2f}**",
                     f"**{d['total_express']:.2f}**"])
    out += ["Dollars per million sagas:", "",
            table(["scenario", "Step Functions STANDARD", "Step Functions EXPRESS", "Lambda requests",
                   "Lambda duration", "DynamoDB", "total with STANDARD", "total with EXPRESS"], rows), ""]
    if images.get("cost"):
        out += [f"![cost per million sagas](img/{images['cost']})", ""]
    verdict = "meets" if happy["transitions"] <= happy["target"] else "misses"
    out += [f"### The happy path: {happy['transitions']} state transitions (target <= {happy['target']}: {verdict} it)",
            ""]
    for n, state in enumerate(happy["states"], 1):
        out.append(f"{n}. `{state['state']}`: {state['why']}")
    out += ["", "No Pass, Choice or Wait state sits between the tasks, the Succeed state is the only extra one, "
            "and the happy path never retries, so a successful saga is billed exactly these transitions.", ""]
    success = result["scenarios"][0]
    ops = sorted(success["ddb_by_operation"].items(), key=lambda kv: -kv[1])
    out += [f"DynamoDB requests of the `{success['name']}` saga ({success['ddb_requests']} requests, "
            f"{success['ddb_wru']:.0f} WRU of which {success['ddb_gsi_wru']:.0f} for the sparse GSIs, "
            f"{success['ddb_rru']:.1f} RRU):", "",
            table(["operation and table", "requests"], [[k, v] for k, v in ops]), ""]
    return "\n".join(out)


def section_coldstart(result: dict[str, Any] | None, images: dict[str, str | None]) -> str:
    out = ["## 5. Cold start", ""]
    problem = failed(result)
    if problem:
        return "\n".join(out + [f"Not measured: {problem}", ""])
    out += [f"`bench/coldstart.py`: each handler module imported in a fresh interpreter, timed inside it "
            "(imports and module-scope setup: boto3 clients, Powertools Logger/Tracer/Metrics, pydantic models), "
            f"against `import boto3` alone in the same interpreter; median of {result['runs']} interleaved runs. "
            f"Unless a row says otherwise: {result['primary_setup']}. That is what Lambda runs: the layer from "
            "`sam build` has no `.pyc` files and /opt is read-only, so every cold start compiles the layer's "
            "modules; boto3 and botocore come compiled with the runtime. The handlers read their table names, "
            "ARNs, `PAYMENT_GATEWAY=fake`, lease and deadline settings from the environment (set as the template "
            "sets them); `LAMBDA_TASK_ROOT` and `AWS_LAMBDA_FUNCTION_NAME` are set and "
            "`POWERTOOLS_TRACE_DISABLED` is left unset, so Powertools' Tracer is on (imports aws-xray-sdk and "
            "patches botocore), as on Lambda with `Tracing: Active`.", ""]
    for note in result.get("notes", []):
        out += [f"Note: {note}", ""]
    rows = [[r["module"], fmt(r["median_ms"], 0), fmt(r["min_ms"], 0), fmt(r["max_ms"], 0),
             f"**{r['ratio']:.2f}**" if r["handler"] else f"{r['ratio']:.2f}"] for r in result["rows"]]
    out += [table(["module", "median ms", "min ms", "max ms", "x import boto3"], rows), "",
            f"Target: <= {result['target']}x."]
    handlers = [r for r in result["rows"] if r["handler"] and "," not in r["module"] and "(" not in r["module"]]
    if handlers:
        worst = max(handlers, key=lambda r: r["ratio"])
        best = min(handlers, key=lambda r: r["ratio"])
        verdict = "All handlers meet it." if worst["ratio"] <= result["target"] else \
            f"No handler meets it as shipped: from {best['ratio']:.2f}x ({best['module']}) to {worst['ratio']:.2f}x " \
            f"({worst['module']})."
        out.append(verdict)
    out.append("")
    if images.get("coldstart"):
        out += [f"![cold start](img/{images['coldstart']})", ""]
    for times in result.get("importtime", []):
        out += [f"`python -X importtime` of **{times.get('handler', '?')}**, {times['setup']}: "
                f"{times['total_ms']:.0f} ms of imports.", "",
                table(["top-level package (self time)", "ms", "share"],
                      [[r["package"], fmt(r["ms"], 0), f"{r['share']:.0%}"] for r in times["by_package"][:8]]), "",
                table(["imported by app.py itself (cumulative)", "ms"],
                      [[f"`{r['module']}`", fmt(r["ms"], 0)] for r in times["direct"][:8]], "lr"), ""]
    packages = result.get("packages") or {}
    if "error" in packages:
        out += [f"Package sizes: not measured: {packages['error']}", ""]
    elif packages:
        rows = [[a["name"], size(a["unzipped"]), size(a["zipped"]), a["files"]] for a in packages["artifacts"]]
        out += [f"Package sizes after `sam build --build-dir {packages['build_dir']}` (zipped: deflate, as "
                "uploaded); the functions carry only their app.py, the layer SagaLayer carries the dependencies:", "",
                table(["artifact", "unzipped", "zipped", "files"], rows), "",
                "The layer's largest packages (unzipped): "
                + ", ".join(f"{r['package']} {r['bytes'] / 1e6:.1f} MB" for r in packages["layer_contents"]) + ".",
                ""]
        versions = packages.get("layer_versions") or {}
        if "botocore" in versions:
            out += [f"The layer ships botocore {versions['botocore']} (pulled in by aws-xray-sdk, through "
                    "`aws-lambda-powertools[tracer]`): on Lambda it shadows the runtime's own botocore, so the "
                    "runtime's boto3 runs on a botocore it was not released with, and it is imported uncompiled.", ""]
    return "\n".join(out)


def recommendations(results: dict[str, Any]) -> str:
    cold = results.get("coldstart") or {}
    rows = {r["module"]: r for r in cold.get("rows", [])}
    lines = ["## What the application could change", "",
             "The benchmarks change no application code; these are the changes their figures point to.", ""]
    items = []
    shipped, pre = rows.get("create_order"), rows.get("create_order, layer precompiled")
    slim, traced_off = rows.get("create_order, layer without botocore"), rows.get("create_order, tracing disabled")
    if shipped and pre:
        items.append(f"**Ship the layer compiled.** create_order initializes in {shipped['median_ms']:.0f} ms "
                     f"({shipped['ratio']:.2f}x `import boto3`) as `sam build` makes the layer, in "
                     f"{pre['median_ms']:.0f} ms ({pre['ratio']:.2f}x) with it precompiled: run `python -m compileall "
                     "--invalidation-mode unchecked-hash` over the layer's build output (SagaLayer with `BuildMethod: "
                     "makefile`, or a step after `sam build`). unchecked-hash, because the zip does not keep the "
                     "source mtimes that timestamp-checked .pyc files are validated against.")
    packages = cold.get("packages") or {}
    layer = next((a for a in packages.get("artifacts", []) if a["name"] == "SagaLayer"), None)
    botocore = next((c for c in packages.get("layer_contents", []) if c["package"] == "botocore"), None)
    if shipped and slim and layer and botocore:
        items.append(f"**Drop botocore from the layer.** aws-xray-sdk (via `aws-lambda-powertools[tracer]`) depends "
                     f"on botocore, so `sam build` packs {size(botocore['bytes'])} of it, "
                     f"{botocore['bytes'] / layer['unzipped']:.0%} of the layer's {size(layer['unzipped'])}; on "
                     "Lambda it shadows the runtime's botocore (each boto3 release pins a botocore range; the "
                     "layer's need not be in the runtime boto3's) and is imported uncompiled. Without it "
                     f"create_order takes {slim['median_ms']:.0f} ms "
                     f"({slim['ratio']:.2f}x) instead of {shipped['median_ms']:.0f}. Install aws-xray-sdk without its "
                     "dependencies in the layer (a makefile build, or a requirements file that leaves botocore out) "
                     "and use the runtime's boto3 and botocore.")
    if traced_off and shipped:
        items.append(f"**The tracer costs its import whether or not tracing is on**: with "
                     f"`POWERTOOLS_TRACE_DISABLED=true` create_order takes {traced_off['median_ms']:.0f} ms against "
                     f"{shipped['median_ms']:.0f} ms: importing Powertools' `Tracer` imports aws-xray-sdk and wrapt "
                     "either way. Step Functions and API Gateway already trace the workflow; dropping `Tracer` from "
                     "the step functions (keeping it in the API if wanted) takes aws-xray-sdk and wrapt off their "
                     "cold start, and with them the layer's reason to carry botocore.")
    items.append("**Build pydantic models lazily**: `order_saga.models` defines every model in one module and "
                 "pydantic builds each validator at import, the API's response models (OrderAccepted, "
                 "OrderDocument, ProblemBody) included, in every step function. `ConfigDict(defer_build=True)`, or "
                 "the API's models in a module of their own, takes that off the step functions' cold start.")
    times = next((t for t in cold.get("importtime", []) if "precompiled" in t.get("setup", "")), None)
    body = next((d for d in (times or {}).get("direct", []) if d["module"].startswith("app (")), None)
    if pre and body and cold.get("baseline_ms"):
        items.append(f"**1.3x is not reachable for these handlers as designed.** Even precompiled, the module body "
                     f"alone (creating the boto3 client, which loads the service model, and the Powertools "
                     f"objects) costs {body['ms']:.0f} ms, {body['ms'] / cold['baseline_ms']:.0%} of `import boto3`, "
                     "on top of importing Powertools and pydantic. With the items above, the realistic figure is "
                     f"below the precompiled layer's {pre['ratio']:.2f}x; reaching 1.3x would mean creating the client "
                     "on first use (which moves, not removes, the cost) and no Powertools/pydantic at import.")
    cost = results.get("cost") or {}
    if cost.get("scenarios"):
        s = cost["scenarios"][0]
        d = s["dollars_per_million"]
        biggest = "the largest per-saga cost after Step Functions STANDARD" if d["dynamodb"] > d["lambda"] else \
            "a large per-saga cost"
        items.append(f"**DynamoDB is {biggest}** (${d['dynamodb']:.2f} per million happy-path sagas against "
                     f"${d['lambda']:.2f} for Lambda): the happy path makes {s['ddb_requests']} requests for "
                     f"{s['ddb_wru']:.0f} WRU, {s['ddb_gsi_wru']:.0f} of them in the sparse GSIs. Each forward step "
                     "writes the order three times: `Orders.renew` (an UpdateItem of `lease_expires_at`, which "
                     "moves the order in ActiveByLeaseExpiry: a change of an index key is a delete and a put "
                     "there), the `guard` ConditionCheck in its transaction (2 WRU, as a transactional write), and "
                     "`record_step` (another UpdateItem, another index write). Renewing only when less than half "
                     "of the lease is left (steps take milliseconds, the lease 20 s), and recording the step in "
                     "the transaction as an Update of the order in place of the ConditionCheck, would cut the "
                     "order's writes per step from three to one or two.")
        if d["standard"] > 0:
            items.append(f"**EXPRESS would cost the state machine ${d['express']:.2f} instead of ${d['standard']:.2f} "
                         f"per million happy-path sagas** ({d['standard'] / max(d['express'], 1e-9):.0f}x less; "
                         f"${d['total_express']:.0f} against ${d['total_standard']:.0f} all included). STANDARD "
                         "keeps exactly-once executions and the 90-day history that duplicate submissions rely "
                         "on (execution name = order id), so the switch is a design decision, not a tuning knob.")
    lines += [f"{n}. {item}" for n, item in enumerate(items, 1)]
    lines.append("")
    return "\n".join(lines)


def render(results: dict[str, Any], meta: dict[str, Any]) -> Path:
    IMG.mkdir(parents=True, exist_ok=True)
    images: dict[str, str | None] = {}
    engine = results.get("engine")
    if engine and not failed(engine):
        images["engine"] = plot_engine(engine, results.get("peer"))
        images["profile"] = plot_profile(engine)
    if results.get("throughput") and not failed(results["throughput"]):
        images["throughput"] = plot_throughput(results["throughput"])
    if results.get("cost") and not failed(results["cost"]):
        images["cost"] = plot_cost(results["cost"])
    if results.get("coldstart") and not failed(results["coldstart"]):
        images["coldstart"] = plot_coldstart(results["coldstart"])
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/run_all.py -> bench/report.py). Do not edit by hand. -->",
        "",
        f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}; `make bench` took "
        f"{meta.get('total_s', 0) / 60:.1f} min. This machine is shared and noisy: every ratio below compares "
        "figures measured in the same run (and, where it says so, the same process), which is what to read; "
        "absolute milliseconds move from run to run. Benchmarks print figures and never fail the build for being "
        "slow.",
        "",
        summary(results),
        section_engine(engine, images),
        section_throughput(results.get("throughput"), images),
        section_peer(results.get("peer"), images),
        section_cost(results.get("cost"), images),
        section_coldstart(results.get("coldstart"), images),
        recommendations(results),
        "## Running them", "",
        "`make bench` installs requirements-bench.txt into .venv and runs `bench/run_all.py`, which runs each "
        "benchmark in its own process, prints its figures and writes this page. Each benchmark also runs alone "
        "(`.venv/bin/python bench/<name>.py --help`): engine.py, throughput.py, peer.py, cost.py, coldstart.py, "
        "and local_vs_direct.py (the engine figures alone). Results: .local/bench/results/*.json (and "
        "pyspy-raw.txt, the profile in py-spy's raw format). "
        "`bench/run_all.py --quick` runs smaller samples.", "",
        table(["benchmark", "seconds"], [[k, fmt(v, 0)] for k, v in meta.get("durations", {}).items()]), "",
    ]
    DOC.write_text("\n".join(parts))
    return DOC


def summary(results: dict[str, Any]) -> str:
    rows = []
    engine = (results.get("engine") or {}).get("main") or {}
    if "ratio_local_floor" in engine:
        rows.append(["1. Engine overhead", f"local / floor = **{engine['ratio_local_floor']:.2f}x** "
                     f"({engine['local_ms']:.0f} vs {engine['floor_ms']:.0f} ms per saga)", "<= 3x",
                     "met" if engine["ratio_local_floor"] <= 3 else "missed"])
    tp = results.get("throughput") or {}
    if tp.get("levels"):
        best = max(tp["levels"], key=lambda r: r["sagas_per_s"])
        one = tp["levels"][0]
        rows.append(["2. Throughput", f"**{best['sagas_per_s']:.1f} sagas/s** at {best['clients']} clients "
                     f"(p50 {best['p50_ms']:.0f} ms, p99 {best['p99_ms']:.0f} ms); {one['sagas_per_s']:.1f}/s and p50 "
                     f"{one['p50_ms']:.0f} ms with {one['clients']} client", "-", "-"])
    peer = results.get("peer") or {}
    if "ratio_peer_local" in peer:
        rows.append(["3. Peer (ministack)", f"ministack / embedded = **{peer['ratio_peer_local']:.2f}x** "
                     f"({peer['peer_ms']:.0f} vs {peer['local_ms']:.0f} ms per saga)", "-", "-"])
    elif peer:
        reason = peer.get("not_measured") or peer.get("crashed")
        rows.append(["3. Peer (ministack)", f"not measured: {reason}", "-", "-"])
    cost = results.get("cost") or {}
    if cost.get("scenarios"):
        s = cost["scenarios"][0]
        d = s["dollars_per_million"]
        rows.append(["4. Cost, happy path", f"**{s['transitions']} transitions**; ${d['total_standard']:.0f} per "
                     f"million sagas with STANDARD, ${d['total_express']:.0f} with EXPRESS (Lambda and DynamoDB "
                     "included)", "<= 6 transitions", "met" if s["transitions"] <= 6 else "missed"])
    cold = results.get("coldstart") or {}
    handlers = [r for r in cold.get("rows", []) if r["handler"] and "," not in r["module"] and "(" not in r["module"]]
    if handlers:
        worst = max(handlers, key=lambda r: r["ratio"])
        best = min(handlers, key=lambda r: r["ratio"])
        pre = next((r for r in cold["rows"] if r["module"] == "create_order, layer precompiled"), None)
        extra = f"; {pre['ratio']:.2f}x for create_order with the layer precompiled" if pre else ""
        rows.append(["5. Cold start", f"handler init / import boto3 = **{best['ratio']:.2f}x to {worst['ratio']:.2f}x**"
                     f" as shipped{extra}", "<= 1.3x", "met" if worst["ratio"] <= 1.3 else "missed"])
    return "\n".join(["## Summary", "", table(["benchmark", "figure (this run)", "target", ""], rows, "llll"), ""])


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR / "results"
    results = {}
    for name in ("engine", "throughput", "peer", "cost", "coldstart"):
        path = folder / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    print(f"wrote {render(results, meta)}")


if __name__ == "__main__":
    main()
