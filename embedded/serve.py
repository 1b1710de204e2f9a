"""``make serve``: the demo's champion, served on 127.0.0.1 with its try-it page until Ctrl-C.

Starts the embedded stack's GCS emulator on the state ``make demo`` left in
``.local/`` and runs ``privacy-pipeline serve`` against the registry in its
bucket, from the serving environment (``.venv/serving``). Prints a curl line
and the page's URL once the model is ready. ``try_it_lines`` is also what
``make demo`` prints at its end; it imports nothing of the server, so the
Airflow environment the demo runs in can call it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from embedded.stack import BUCKET, PROJECT, REPO, embedded_stack

REGISTRY_URI = f"gs://{BUCKET}/registry/"
DEFAULT_PORT = 8080
# privacy_pipeline.serving's MODEL_NAME and PAGE_PATH, which the Airflow
# environment cannot import (test_serving checks they agree).
MODEL_NAME = "privacy-intent"
PAGE_PATH = "/try"
EXAMPLE_MESSAGE = "Please delete my account and everything you store about me."


def try_it_lines(base_url: str) -> str:
    """The curl line that classifies a message and the page's URL, for people to copy."""
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [EXAMPLE_MESSAGE]}]}
    curl = (
        f"curl -s -X POST {base_url}/v2/models/{MODEL_NAME}/infer "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    )
    return f"  classify: {curl}\n  try it:   {base_url}{PAGE_PATH}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / ".local", help="where the embedded state lives")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--version", help="a registered model version (default: the champion)")
    args = parser.parse_args(argv)
    if not (args.home / "gcs").is_dir():
        print(f"No embedded state in {args.home}: run `make demo` first to train and register a champion.")
        return 1

    # The server itself: only the serving environment has kserve.
    from privacy_pipeline.serving.process import ServerNotReady, ServerProcess

    with embedded_stack(args.home) as stack:
        server = ServerProcess(
            REGISTRY_URI,
            version=args.version,
            port=args.port,
            env={"STORAGE_EMULATOR_HOST": stack.emulator_host, "GOOGLE_CLOUD_PROJECT": PROJECT},
            log_path=args.home / "serve.log",
        )
        print(f"Serving the champion of {REGISTRY_URI} (GCS emulator {stack.emulator_host}); log: {server.log_path}")
        server.start()
        try:
            server.wait_ready()
        except ServerNotReady as exc:
            print(f"The server did not start: {exc}", file=sys.stderr)
            return 1
        try:
            print(f"Ready on {server.url}. Ctrl-C stops it.\n{try_it_lines(server.url)}", flush=True)
            server.wait_exit(timeout=None)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
