"""`sagalocal console`: the console for any stack (the embedded one, LocalStack or AWS), given its Outputs."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the console's modules are imported by the commands that serve it: the CLI's others start faster
    from sagalocal.console.server import ConsoleServer


def add_parser(sub: Any) -> None:
    console = sub.add_parser("console", help="serve the web console for a running stack (sagalocal, LocalStack, AWS)")
    console.add_argument("--endpoint", help="the AWS endpoint (default: AWS itself, with the usual credentials)")
    console.add_argument("--stack-outputs", required=True, type=Path,
                         help="JSON file of the stack's Outputs ({OutputKey: OutputValue}, or describe-stacks' JSON)")
    console.add_argument("--region", default="us-east-1")
    console.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    console.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    from sagalocal.console.data import OutputsUnreadable, Source
    from sagalocal.console.server import ConsoleServer
    from sagalocal.errors import UsageError

    try:
        source = Source.from_file(args.endpoint, args.region, args.stack_outputs)
    except OutputsUnreadable as exc:
        raise UsageError(str(exc)) from None
    server = ConsoleServer(source, args.port).start()
    print(f"Console       {server.url}   (reading {args.endpoint or 'AWS'}, region {args.region}). Ctrl-C to stop.",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def serve_for_stack(endpoint: str, region: str, outputs: dict[str, Any],
                    port: int = 0) -> tuple[ConsoleServer | None, str]:
    """The console `sagalocal up` serves, reading the stack through its AWS endpoint as any client would.

    Without its browser libraries the stack still serves; the second value says why there is no console.
    """
    from sagalocal.console.data import Source
    from sagalocal.console.server import AssetsMissing, ConsoleServer

    try:
        return ConsoleServer(Source(endpoint, region, outputs), port).start(), ""
    except AssetsMissing as exc:
        return None, str(exc)
