"""Run one command and print its wall time and peak RSS as JSON (a fresh process per measurement)."""

import json
import resource
import subprocess
import sys
import time

started = time.perf_counter()
proc = subprocess.run(sys.argv[1:])
seconds = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": round(seconds, 3), "peak_rss_mb": round(peak_kib / 1024, 1), "rc": proc.returncode}))
