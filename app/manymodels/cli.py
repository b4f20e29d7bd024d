"""``python -m manymodels serve --config FILE``: run a Serve config on this machine until stopped.

The container image's standalone entrypoint and ``make demo`` both end up here; on Kubernetes,
KubeRay submits the same config to the cluster instead. ``serve`` and ``demo`` run under
``manymodels.supervisor``, so any stop signal ends them in one orderly step; ``publish``, ``alias``
(``manymodels.cli_publish``) and ``sync`` (``manymodels.cli_sync``) are short commands that run
directly, without Ray, and so does ``forward`` (``manymodels.azureml.forward``, no Ray either).
``serve`` takes the catalog Azure ML mounted (``AZUREML_MODEL_DIR``) when ``MM_MODEL_ROOT`` is unset.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from manymodels import cli_publish, cli_sync
from manymodels.azureml import model_dir
from manymodels.config import load_serve_config
from manymodels.errors import ConfigurationError
from manymodels.supervisor import orphaned, run_supervised, supervisor_pid


def say(message: str) -> None:
    print(f"[manymodels] {message}", flush=True)


def serve_forever(config: dict[str, Any], on_ready: Callable[[str], None] | None = None) -> int:
    """Start local Ray, deploy ``config``, wait for readiness, block until SIGINT/SIGTERM."""
    from manymodels.serve import local

    started = time.monotonic()
    say("starting Ray (local, no dashboard)")
    local.start_ray()
    # After ray.init, which installs a SIGTERM handler of its own that aborts the process.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = supervisor_pid()
    try:
        say("deploying the Serve application")
        local.deploy(config)
        url = local.wait_ready(config, progress=lambda s: say(f"application status: {s}"), stop=stop)
        say(f"ready in {time.monotonic() - started:.1f}s on {url}")
        if on_ready:
            on_ready(url)
        say("Ctrl-C (or SIGTERM) stops the server")
        while not stop.wait(1.0):
            if supervisor is not None and orphaned(supervisor):
                say("the supervising process is gone")
                break
    except InterruptedError:
        pass  # stopped before it was ready
    finally:
        say("stopping")
        stopping = time.monotonic()
        local.shutdown()
    say(f"stopped in {time.monotonic() - stopping:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manymodels")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a Serve config (the chart's serveConfigV2 format)")
    serve.add_argument("--config", required=True, help="Serve config YAML (${VAR:-default} expanded)")
    sub.add_parser("demo", help="build the demo catalog and serve it (make demo)")
    sub.add_parser("forward", help="Azure ML routes forwarding to a serve Service ($MM_FORWARD_URL)")
    cli_publish.add_commands(sub)
    cli_sync.add_commands(sub)
    args, rest = parser.parse_known_args(argv)
    for short in (cli_publish, cli_sync):
        if args.command in short.COMMANDS:
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            return short.run(args)
    if args.command == "forward":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from manymodels.azureml import forward

        try:
            return forward.run(os.environ)
        except ConfigurationError as exc:
            say(f"error: {exc}")
            return 2
    if supervisor_pid() is None:
        return run_supervised("manymodels", sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from manymodels.demo.__main__ import main as demo_main

        return demo_main(rest)
    try:
        root = model_dir.apply(os.environ)
    except ConfigurationError as exc:
        say(f"error: {exc}")
        return 2
    if root is not None:
        say(f"serving the catalog Azure ML mounted at {root} ({model_dir.AZUREML_MODEL_DIR})")
    return serve_forever(load_serve_config(args.config))


if __name__ == "__main__":
    sys.exit(main())
