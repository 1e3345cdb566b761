"""Entry point of one measurement's child process: `python -m bench.child NAME JSON_KWARGS OUT_FILE`.

Runs `bench.measures.<NAME>(**kwargs)` and writes its result as JSON to OUT_FILE; the parent reads the child's
peak memory and CPU time from `os.wait4`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import measures, scale_io, shards

MEASURES: dict[str, Callable[..., dict[str, Any]]] = {
    "nightly": measures.nightly,
    "incremental": measures.incremental,
    "signals_read": measures.signals_read,
    "floor": measures.floor,
    "orm": measures.orm,
    "lookup": measures.lookup,
    "outbox_delivery": measures.outbox_delivery,
    "model": measures.model,
    "ingest": measures.ingest,
    "import_prepare": scale_io.import_prepare,
    "import_usage": scale_io.import_usage,
    "ingest_clients": scale_io.ingest_clients,
    "shards_generate": shards.generate,
    "shards_run": shards.sharded_run,
}


def main(argv: list[str]) -> int:
    name, kwargs, out = argv[0], json.loads(argv[1]), Path(argv[2])
    result = MEASURES[name](**kwargs)
    out.write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
