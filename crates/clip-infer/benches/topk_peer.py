"""NumPy peer of benches/topk.rs: brute-force top-k on the same 1M x 256 float32 rows.

    python3 crates/clip-infer/benches/topk_peer.py [DIR]     (after the Rust bench wrote DIR/*.npy)
"""
import json, os, sys, time
import numpy as np

d = sys.argv[1] if len(sys.argv) > 1 else "/tmp/clip-topk"
rows = np.load(os.path.join(d, "rows.npy"))
queries = np.load(os.path.join(d, "queries.npy"))
k = 10

def top(scores):
    idx = np.argpartition(-scores, k)[:k]
    return idx[np.argsort(-scores[idx], kind="stable")]

top(rows @ queries[0])
lat = []
for q in queries[:20]:
    t = time.perf_counter(); r = top(rows @ q); lat.append(time.perf_counter() - t)
single = float(np.median(lat))
runs = []
for _ in range(5):
    t = time.perf_counter()
    s = rows @ queries.T
    res = [top(s[:, j]) for j in range(s.shape[1])]
    runs.append(time.perf_counter() - t)
batched = float(np.median(runs))
print(json.dumps({"what": "topk", "stack": f"numpy {np.__version__} brute force", "rows": rows.shape[0], "dim": rows.shape[1],
                  "k": k, "single_query_ms": round(single * 1e3, 2), "single_queries_per_s": round(1 / single, 1),
                  "batch": len(queries), "batched_queries_per_s": round(len(queries) / batched, 1),
                  "first_query_top": top(rows @ queries[0]).tolist()}))
