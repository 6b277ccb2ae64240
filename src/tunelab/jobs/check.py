"""`python -m tunelab.jobs.check CONFIG`: what a job's training would check before it starts (model, data,
probe files), in a process of its own; prints one JSON line: {"ok": true, "report": ...} or {"ok": false,
"kind": ..., "message": ...}. The worker runs it while a job is validating_files. A job that checks out is
also estimated (plan/estimate.py: a few real steps on this machine) unless TUNELAB_JOB_ESTIMATE=0; an estimate
that fails is said, and does not fail the job (training makes it fit, or says why it can't)."""

from __future__ import annotations

import json
import os
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
        cfg = load_config(config_path)
        report = check(cfg, Console(stderr=True, quiet=True))
        result = {"ok": True, "report": report}
    except DataError as exc:
        result = {"ok": False, "kind": "data", "message": str(exc),
                  "problems": [p.to_dict() for p in exc.problems[:200]]}
    except ConfigError as exc:
        result = {"ok": False, "kind": "config", "message": str(exc)}
    except (TunelabError, FileNotFoundError) as exc:
        result = {"ok": False, "kind": "model", "message": str(exc)}
    if result["ok"] and os.environ.get("TUNELAB_JOB_ESTIMATE", "1") != "0":
        from ..plan.estimate import describe, estimate

        try:
            est = estimate(cfg)
            result["estimate"] = {k: v for k, v in est.to_dict().items() if k != "ladder"} | {"lines": describe(est)}
        except TunelabError as exc:
            result["estimate_error"] = str(exc)
    print(json.dumps(result, default=str), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
