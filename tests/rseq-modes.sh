#!/bin/sh
# Run the per-CPU cache suite in every mode of issue 4, and the API and stress suites in the two
# modes the default `make check` run (per-CPU caches on glibc's registration, the default) does
# not cover: spanalloc's own registration and the per-thread fallback.
#   glibc   SPANALLOC_RSEQ=on: glibc's rseq registration (__rseq_size > 0)
#   own     SPANALLOC_RSEQ=on GLIBC_TUNABLES=glibc.pthread.rseq=0: spanalloc registers its own
#   thread  SPANALLOC_RSEQ=off: the per-thread caches (the default is on)
#   small   SPANALLOC_RSEQ=on SPANALLOC_CPU_CACHE_BYTES=8k: capacity moves between classes
# A mode that this kernel cannot run (no rseq) is reported and skipped by the suite's mode test.
# The caches are under test, not the arena backing: keep off the shared hugetlb pool, which
# tests/huge.sh resizes and measures while make check runs suites in parallel.
SPANALLOC_HUGEPAGES=thp
export SPANALLOC_HUGEPAGES
fail=0
run() { # NAME ENV... -- PROGRAM
	name=$1; shift
	out=$(env "$@" 2>&1)
	rc=$?
	last=$(printf '%s\n' "$out" | tail -1)
	printf '%-8s %-40s %s\n' "$name" "$(echo "$@" | sed 's/SA_EXPECT_MODE=[a-z]* //')" "$last"
	if [ $rc -ne 0 ]; then
		printf '%s\n' "$out" | tail -20
		fail=1
	fi
}
if [ -r /proc/self/status ] && ! grep -q . /sys/devices/system/cpu/possible 2>/dev/null; then
	echo "no /sys/devices/system/cpu/possible: per-CPU modes cannot be expected"
	exit 77
fi
run glibc  SA_EXPECT_MODE=glibc SPANALLOC_RSEQ=on ./tests/check_rseq
run own    SA_EXPECT_MODE=own SPANALLOC_RSEQ=on GLIBC_TUNABLES=glibc.pthread.rseq=0 ./tests/check_rseq
run thread SA_EXPECT_MODE=thread SPANALLOC_RSEQ=off ./tests/check_rseq
run small  SA_EXPECT_MODE=small SPANALLOC_RSEQ=on SPANALLOC_CPU_CACHE_BYTES=8k ./tests/check_rseq
run thread SPANALLOC_RSEQ=off ./tests/check_api
run own    SPANALLOC_RSEQ=on GLIBC_TUNABLES=glibc.pthread.rseq=0 ./tests/check_api
run thread SPANALLOC_RSEQ=off ./tests/check_stress
run own    SPANALLOC_RSEQ=on GLIBC_TUNABLES=glibc.pthread.rseq=0 ./tests/check_stress
exit $fail
