"""`python -m tunelab.jobs.check CONFIG`: what a job's training would check before it starts (model, data,
probe files), in a process of its own; prints one JSON line: {"ok": true, "report": ...} or {"ok": false,
"kind": ..., "message": ...}. The worker runs it while a job is validating_files."""

from __future__ import annotations

import json
import sys
from typing import Any


def main(config_path: str) -> int:
    from rich.console import Console

    from ..config import ConfigError, load_config
    from ..data.records import DataError
    from ..errors import TunelabError
    from ..recipes.dispatch import check

    result: dict[str, Any]
    try:
        report = check(load_config(config_path), Console(stderr=True, quiet=True))
        result = {"ok": True, "report": report}
    except DataError as exc:
        result = {"ok": False, "kind": "data", "message": str(exc),
                  "problems": [p.to_dict() for p in exc.problems[:200]]}
    except ConfigError as exc:
        result = {"ok": False, "kind": "config", "message": str(exc)}
    except (TunelabError, FileNotFoundError) as exc:
        result = {"ok": False, "kind": "model", "message": str(exc)}
    print(json.dumps(result, default=str), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
