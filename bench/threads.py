"""How many intra-op threads fashionlab picks here, and from what (hardware.thread_count).

    .venv/bin/python bench/threads.py              # as the machine is now
    .venv/bin/python bench/threads.py --busy 2     # with 2 spinning processes beside it

Prints the 1-minute load average (which lags by about a minute), the kernel's count of other
runnable threads now, and the thread count each rule gives: the load-average rule used
before 2026-11-30 (one thread when the load average >= the cores, else one per core) and
fashionlab's (one per core that no other process is using).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

from fashionlab import hardware


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=0, help="start N spinning processes first")
    args = p.parse_args(argv)
    workers = [multiprocessing.Process(target=spin, args=(30.0,)) for _ in range(args.busy)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0 if workers else 0.0)
        cores = hardware.usable_cores()
        print(f"CPU: {hardware.cpu_name()}, {cores} usable cores; {args.busy} spinning "
              f"processes started; load average {os.getloadavg()[0]:.2f}; other runnable "
              f"threads now: {hardware.others_running()}; load-average rule: "
              f"{hardware.threads_by_load_average(cores)} thread(s); "
              f"fashionlab: {hardware.thread_count()} thread(s)")
    finally:
        for w in workers:
            w.terminate()
            w.join()


if __name__ == "__main__":
    main()
