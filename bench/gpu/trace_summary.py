"""Summarizes a kernel trace written by `clip` (CLIP_KERNEL_TRACE): how many kernels NVRTC
compiled, how long each took (the gap to the next event on the same server thread, an upper
bound), and which operation shapes were autotuned. One JSON line on stdout."""
import collections
import json
import sys

rows = []
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t", 2)
    if len(parts) == 3:
        rows.append((float(parts[0]), parts[1], parts[2]))
times = [t for t, _, _ in rows]
compiles = [i for i, (_, _, m) in enumerate(rows) if m == "Compiling kernel"]
# A compilation lasts until the next event (or the last event seen when the run was cut off).
durations = [(times[i + 1] if i + 1 < len(rows) else times[-1]) - times[i] for i in compiles]
tuned = collections.Counter(m[len("Tuning "):].split("{")[0].split("(")[0].strip() for _, _, m in rows if m.startswith("Tuning "))
print(json.dumps({
    "trace": sys.argv[1],
    "compilations": len(compiles),
    "from_ptx_cache": sum(1 for _, _, m in rows if m == "Using PTX cache"),
    "first_compile_s": round(times[compiles[0]], 2) if compiles else None,
    "last_event_s": round(times[-1], 2) if times else None,
    "compile_s_total_upper_bound": round(sum(durations), 1),
    "compile_s_longest": [round(d, 2) for d in sorted(durations, reverse=True)[:8]],
    "compile_s_median": round(sorted(durations)[len(durations) // 2], 3) if durations else None,
    "autotuned_keys": dict(tuned),
}))
