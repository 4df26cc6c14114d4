"""Run many ``sibnn-build`` command lines in one process (the mutation fuzz's worker).

``python -m tests.mutation_driver JOBS.json RESULTS.json``: for each argv in JOBS, call
``flow.build.main(argv)`` exactly as the console script does, with stderr captured and a
per-job time limit; record the exit code, the stderr text, whether an exception escaped ``main``
(a traceback) and whether it hung. Paying torch's import once lets the default run afford dozens
of mutants; the bad-input catalogue covers the fresh-process start-up.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import time
import traceback


class _Hang(BaseException):
    pass


def _alarm(_signum, _frame):
    raise _Hang()


def run_job(argv: list[str], limit_s: int) -> dict:
    from flow.build import main

    err, out = io.StringIO(), io.StringIO()
    rec = {"argv": argv, "rc": None, "stderr": "", "escaped": None, "hang": False}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rec["rc"] = main(argv)
    except _Hang:
        rec["hang"] = True
    except BaseException:  # noqa: BLE001 - what escaped main is the finding
        rec["escaped"] = traceback.format_exc()
    finally:
        signal.alarm(0)
    rec["stderr"] = err.getvalue()
    rec["seconds"] = round(time.monotonic() - t0, 2)
    return rec


def main_(jobs_path: str, results_path: str) -> int:
    jobs = json.loads(open(jobs_path).read())
    results = [run_job(j["argv"], j.get("limit_s", 300)) | {"id": j["id"]} for j in jobs]
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main_(sys.argv[1], sys.argv[2]))
