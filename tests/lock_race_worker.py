"""Lock race for tests/test_faults.py: `python lock_race_worker.py WORKDIR CONTENDERS ROUNDS` forks CONTENDERS
processes ROUNDS times onto a run directory whose lock file names a process that is gone (a kill -9), releases them
at once through a pipe, and prints a JSON list: how many of them held the lock together in each round."""

import json
import os
import platform
import subprocess
import sys

from jaxformer import run as run_lib


def one_round(workdir: str, contenders: int, dead_pid: int) -> int:
    with open(os.path.join(workdir, run_lib.LOCK), "w") as f:  # what a writer killed with -9 leaves
        json.dump({"pid": dead_pid, "host": platform.node(), "started": "earlier"}, f)
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    done_r, done_w = os.pipe()
    pids = []
    for _ in range(contenders):
        pid = os.fork()
        if pid == 0:  # a contender: wait for the start, try, report, hold until every contender has tried
            os.read(go_r, 1)
            try:
                run_lib.acquire(workdir)
                held = b"1"
            except run_lib.RunDirError:
                held = b"0"
            os.write(result_w, held)
            os.read(done_r, 1)
            run_lib.release(workdir)
            os._exit(0)
        pids.append(pid)
    os.write(go_w, b"x" * contenders)
    results = b""
    while len(results) < contenders:
        results += os.read(result_r, contenders)
    os.write(done_w, b"x" * contenders)
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (go_r, go_w, result_r, result_w, done_r, done_w):
        os.close(fd)
    return results.count(b"1")


def main() -> None:
    workdir, contenders, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(workdir, exist_ok=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    print(json.dumps([one_round(workdir, contenders, gone.pid) for _ in range(rounds)]))


if __name__ == "__main__":
    main()
