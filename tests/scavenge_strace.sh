#!/bin/sh
# Only the scavenger thread returns memory: run tests/scavhelper under strace -f and check that
# every madvise(MADV_DONTNEED|MADV_FREE) and io_uring_enter comes from the scavenger's TID, for
# both backends. Only madvise calls on the heap count (the helper prints the arenas' address
# range; glibc's own MADV_DONTNEED of an exiting thread's stack is not ours), and MADV_HUGEPAGE at
# commit time is not a release.
command -v strace >/dev/null 2>&1 || { echo "strace missing: skipped"; exit 77; }
strace -qq -o /dev/null true 2>/dev/null || { echo "ptrace not permitted: skipped"; exit 77; }
fail=0
for uring in off on; do
	log=$(mktemp); out=$(mktemp)
	# LeakSanitizer cannot run under ptrace (sanitizer builds): leak checking off for this run
	ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" SPANALLOC_URING=$uring strace -f -qq -e trace=madvise,io_uring_enter -o "$log" ./tests/scavhelper >"$out" 2>&1
	rc=$?
	tid=$(sed -n 's/^scavenger //p' "$out")
	if [ $rc -ne 0 ] || [ -z "$tid" ] || [ "$tid" = 0 ]; then
		echo "uring=$uring: helper failed (rc $rc)"; cat "$out"; fail=1
	else
		lo=$(sed -n 's/^heap \([0-9]*\) [0-9]*$/\1/p' "$out")
		hi=$(sed -n 's/^heap [0-9]* \([0-9]*\)$/\1/p' "$out")
		# keep io_uring_enter, and madvise releases whose address lies in the heap
		rel=$(mktemp)
		grep -E 'madvise\(0x[0-9a-f]+, .*(MADV_DONTNEED|MADV_FREE)|io_uring_enter' "$log" |
		while IFS= read -r line; do
			addr=$(printf '%s\n' "$line" | sed -n 's/.*madvise(\(0x[0-9a-f]*\),.*/\1/p')
			if [ -z "$addr" ] || { [ $((addr)) -ge "$lo" ] && [ $((addr)) -lt "$hi" ]; }; then
				printf '%s\n' "$line"
			fi
		done >"$rel"
		bad=$(grep -v "^$tid " "$rel" | head -5)
		n=$(wc -l <"$rel")
		rm -f "$rel"
		if [ -n "$bad" ] || [ "$n" -eq 0 ]; then
			echo "uring=$uring: release syscalls not from scavenger $tid ($n total):"; echo "$bad"; fail=1
		else
			echo "uring=$uring: $n release syscalls, all from scavenger TID $tid"
		fi
	fi
	rm -f "$log" "$out"
done
exit $fail
