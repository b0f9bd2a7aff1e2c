"""Profile the threads-mode saga at full speed (every thread, CPU time) with yappi; benchmark-only.

pip install -e '.[bench]'; python benchmarks/profile_saga.py --orders 1000 --top 30
python benchmarks/profile_saga.py --layout split    # a SQLite file per service (see saga.py's layouts)
python benchmarks/profile_saga.py --rate 100        # paced: where the time goes between orders
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yappi
from saga import LAYOUTS, broker_env, layout_settings, write_catalogue

from eventlab import Shop
from eventlab.demo import run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tsub", help="yappi sort key: tsub (own time) or ttot (with callees)")
    parser.add_argument("--rate", type=float, help="orders/s (default: as fast as it goes)")
    parser.add_argument("--layout", choices=LAYOUTS, default="shared", help="store layout (default shared)")
    parser.add_argument("--postgres", default=os.environ.get("EVENTLAB_TEST_POSTGRES_URL", ""), help="for pg layouts")
    parser.add_argument("--save", type=Path, help="also save the profile here (pstats format, for callers)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="eventlab-profile-") as tmp:
        catalogue = write_catalogue(Path(tmp))
        tag = f"eventlab_profile_{os.getpid()}"  # pg layouts: fresh schemas (left on the server)
        with (
            broker_env(args.layout, Path(tmp) / "kafka") as broker,
            Shop(
                layout_settings(args.layout, Path(tmp) / "data", args.postgres, tag, broker), payment_failure_rate=0.0
            ) as shop,
        ):
            run_demo(shop, 100, catalogue=catalogue, timeout=600)  # warm up: catalogue, consumer groups
            yappi.set_clock_type("cpu")
            yappi.start(builtins=True)
            cpu = time.process_time()
            report = run_demo(shop, args.orders, rate=args.rate, catalogue=catalogue, timeout=600)
            spent = time.process_time() - cpu
            yappi.stop()
    print(f"{report.orders_per_s} orders/s, {spent * 1000 / args.orders:.2f} CPU ms/order (profiled)")
    stats = yappi.get_func_stats()
    if args.save:
        stats.save(str(args.save), type="pstat")
    stats.sort(args.sort)
    total = sum(stat.tsub for stat in stats)
    print(f"{'own %':>6} {'cum %':>6} {'calls':>9}  function")
    for stat in list(stats)[: args.top]:
        where = f"{Path(stat.module).name}:{stat.lineno} {stat.name}"
        print(f"{100 * stat.tsub / total:6.1f} {100 * stat.ttot / total:6.1f} {stat.ncall:9d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
