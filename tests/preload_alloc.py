# preload_alloc.py — an allocation-heavy Python workload for tests/preload-programs.sh, run with
# PYTHONMALLOC=malloc so every object goes through malloc. Output is deterministic.
import hashlib

h = hashlib.sha256()
for phase in range(4):
    d = {}
    for i in range(60000):
        d["k%d_%d" % (phase, i)] = [i, str(i) * (i % 7 + 1), (i, phase)]
    lst = [s for s in ("x" * (i % 300) for i in range(40000))]
    objs = [{"a": i, "b": [i] * (i % 11), "c": "y" * (i % 50)} for i in range(30000)]
    # free two thirds across phases, keep the rest alive into the next phase
    for k in list(d)[::3]:
        del d[k]
    del lst[::2]
    survivors = objs[::3]
    del objs
    s = sum(len(v[1]) for v in d.values()) + sum(len(x) for x in lst) + sum(len(o["b"]) for o in survivors)
    big = bytearray(5_000_000 + phase)
    big[::4096] = b"z" * len(big[::4096])
    h.update(("%d:%d:%d:%d;" % (phase, len(d), s, big.count(b"z"))).encode())
    text = " ".join(sorted(d)[:20000])
    h.update(text.encode())
print(h.hexdigest())
