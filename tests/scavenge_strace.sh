#!/bin/sh
# Only the scavenger thread returns memory: run tests/scavhelper under strace -f and check that
# every madvise(MADV_DONTNEED|MADV_FREE) and io_uring_enter comes from the scavenger's TID, for
# both backends. Only madvise calls on the heap count (arenas start at Go's hint 0xc000000000;
# glibc's own MADV_DONTNEED of an exiting thread's stack is not ours), and MADV_HUGEPAGE at commit
# time is not a release.
command -v strace >/dev/null 2>&1 || { echo "strace missing: skipped"; exit 77; }
strace -qq -o /dev/null true 2>/dev/null || { echo "ptrace not permitted: skipped"; exit 77; }
fail=0
for uring in off on; do
	log=$(mktemp); out=$(mktemp)
	SPANALLOC_URING=$uring strace -f -qq -e trace=madvise,io_uring_enter -o "$log" ./tests/scavhelper >"$out" 2>&1
	rc=$?
	tid=$(sed -n 's/^scavenger //p' "$out")
	if [ $rc -ne 0 ] || [ -z "$tid" ] || [ "$tid" = 0 ]; then
		echo "uring=$uring: helper failed (rc $rc)"; cat "$out"; fail=1
	else
		pat='madvise\(0x[c-f][0-9a-f]{9}, .*(MADV_DONTNEED|MADV_FREE)|io_uring_enter'
		bad=$(grep -E "$pat" "$log" | grep -v "^$tid " | head -5)
		n=$(grep -cE "$pat" "$log")
		if [ -n "$bad" ] || [ "$n" -eq 0 ]; then
			echo "uring=$uring: release syscalls not from scavenger $tid ($n total):"; echo "$bad"; fail=1
		else
			echo "uring=$uring: $n release syscalls, all from scavenger TID $tid"
		fi
	fi
	rm -f "$log" "$out"
done
exit $fail
