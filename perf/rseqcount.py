#!/usr/bin/env python3
"""rseqcount.py — instructions on malloc's and free's fast paths, counted in the built library.

callgrind cannot run the per-CPU path (under valgrind the rseq system call is ENOSYS and glibc
reports __rseq_size = 0, so spanalloc falls back to its per-thread caches), and single-stepping an
rseq critical section (gdb stepi) restarts it on every step. So the per-CPU path is counted
statically: this script disassembles `malloc` and `free` from libspanalloc.so (objdump) and walks
each fast path from the entry point, following unconditional jumps and, at each conditional
branch, the direction the fast path takes (listed below, in order), until `ret`. It counts the
instructions executed, i.e. what callgrind would report for that path (straight-line code: no
loops on these paths).

The per-thread paths are walked the same way; their sum checks the method against callgrind,
which measures exactly those paths (perf/callgrind.sh; a pair also pays the caller's call
instructions and the PLT jump, added here as 'caller').

usage: perf/rseqcount.py [path/to/libspanalloc.so]
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "lib", ".libs", "libspanalloc.so")

# Branch decisions on each fast path, in the order the branches are met: True = taken.
PATHS = {
    # malloc(n), n <= 4096, class cached: size check (ja), sign of the class byte (jns: taken to
    # the per-thread list; the per-CPU path falls through), then the pop's emptiness check (jbe
    # on the per-CPU slab, je on the thread's list)
    ("malloc", "per-CPU"): [False, False, False],
    ("malloc", "per-thread"): [False, True, False],
    # free(p) of a small object, cache not full: page number inside the flat class map (ja),
    # class byte - 1 not negative (jns: taken to the per-thread list; per-CPU bytes, and byte
    # 0, which the per-CPU push's closed header 0 sends to the slow path, fall through), then the
    # push's fullness check (jae on the slab, js on the list's room counter)
    ("free", "per-CPU"): [False, False, False],
    ("free", "per-thread"): [False, True, False],
}
# The caller's side of a pair, identical for every allocator and counted by callgrind.sh's
# subtraction too (perf/rseqbench's cg_pair_loop minus cg_pair_empty): the size moved into
# %rdi, malloc's call and PLT jump; the result moved into %rdi, free's call and PLT jump.
CALLER = {"malloc": 3, "free": 3}


def disassemble(lib, fn):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", lib], check=True,
                         capture_output=True, text=True).stdout
    insns, body = {}, False
    for line in out.splitlines():
        if re.match(r"^[0-9a-f]+ <%s>:$" % re.escape(fn), line):
            body = True
            continue
        if body:
            if not line.strip():
                break
            m = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
            if m:
                insns[int(m.group(1), 16)] = (m.group(2), m.group(3))
    return insns


def walk(insns, decisions):
    addrs = sorted(insns)
    pc, path, d = addrs[0], [], list(decisions)
    while True:
        op, args = insns[pc]
        path.append((pc, op, args))
        if op.startswith("ret"):
            return path
        target = re.match(r"^([0-9a-f]+) <", args)
        if op == "jmp" and target:
            pc = int(target.group(1), 16)
            if pc not in insns:
                raise SystemExit("fast path leaves the function at %x (%s %s)" % (pc, op, args))
            continue
        if op.startswith("j") and target:
            if not d:
                raise SystemExit("more branches than decisions at %x" % pc)
            if d.pop(0):
                pc = int(target.group(1), 16)
                continue
        pc = addrs[addrs.index(pc) + 1]


def main():
    total = {}
    for (fn, mode), decisions in PATHS.items():
        path = walk(disassemble(LIB, fn), decisions)
        total[(fn, mode)] = len(path)
        print("%s, %s path: %d instructions in the library (+%d caller)" % (fn, mode, len(path), CALLER[fn]))
        for pc, op, args in path:
            print("    %6x  %-7s %s" % (pc, op, args))
    for mode in ("per-CPU", "per-thread"):
        lib_only = total[("malloc", mode)] + total[("free", mode)]
        print("pair, %s: %d in malloc+free, %d with the caller's calls and PLT jumps" %
              (mode, lib_only, lib_only + CALLER["malloc"] + CALLER["free"]))


if __name__ == "__main__":
    main()
