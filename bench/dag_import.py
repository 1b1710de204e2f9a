"""Import one DAG file in this (fresh) interpreter and print how long it took.

    python bench/dag_import.py FILE                 # the file and everything it imports
    python bench/dag_import.py --pre-import FILE    # first its airflow.* imports, untimed

Run as a script by the Airflow venv's Python, one process per import, so
nothing is cached from an earlier parse. Without ``--pre-import`` only the
standard library is loaded before the clock starts: the DAG file's own
imports (Airflow, the providers, our plugin) are part of what is measured,
as they are for the empty DAG file they are compared against. With it, the
file's ``airflow.*`` imports are loaded first, as the dag-processor does with
``[dag_processor] parsing_pre_import_modules`` (on by default) before it
parses a file; what remains is the per-file cost in a running processor.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--pre-import", action="store_true", help="load the file's airflow.* imports untimed first")
    args = parser.parse_args()
    if args.pre_import:
        from airflow.utils.file import iter_airflow_imports

        for module in iter_airflow_imports(args.file):
            importlib.import_module(module)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("bench_dag_file", args.file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"dag_import: cannot load {args.file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    milliseconds = (time.perf_counter() - started) * 1000
    dag_ids = sorted(
        str(value.dag_id)
        for value in vars(module).values()
        if type(value).__name__ == "DAG" and hasattr(value, "dag_id")
    )
    print(json.dumps({"file": args.file, "ms": milliseconds, "dag_ids": dag_ids}))


if __name__ == "__main__":
    main()
