"""The model server: the champion behind KServe's Open Inference Protocol, with a micro-batcher and a try-it page.

``model`` (the ``kserve.Model`` subclass: load, predict), ``batcher`` (the
asyncio micro-batcher), ``metrics`` (Prometheus metrics, request log),
``page`` (the try-it page), ``server`` (``privacy-pipeline serve``) and
``process`` (a server in a child process, for tests, benchmarks and
``make serve``), ``contract`` (the model name and request body, for callers).
The server needs the serving environment (``requirements-serving.txt``).
"""

import sys

# kserve parses sys.argv with its own flags when first imported, and argparse
# takes abbreviations: our `--config FILE` would be read as its
# `--configure_logging FILE` and end the process. It sees no arguments here.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve  # noqa: F401
except ModuleNotFoundError:
    # The stage environment: `contract` and `process` (a server in a child process) still work there.
    pass
finally:
    sys.argv = _argv
