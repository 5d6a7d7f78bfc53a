#!/bin/sh
# tests/huge.sh — run tests/check_huge with the hugetlb pool under control.
#
# As root, the suite may change /proc/sys/vm/nr_hugepages (SA_HUGE_POOL=1). Two runs never
# overlap (flock on a lock file), and the value found at start is written back on every way out
# (normal exit, failure, signal); the script fails if it is not back. Not root: the pool tests
# print why they are skipped and the rest of the suite runs.
pool=/proc/sys/vm/nr_hugepages
suite=./tests/check_huge
if [ "$(id -u)" = 0 ] && [ -w "$pool" ] && command -v flock >/dev/null 2>&1; then
	exec 9>"${TMPDIR:-/tmp}/spanalloc-nr_hugepages.lock"
	flock 9
	old=$(cat "$pool")
	trap 'echo "$old" > "$pool"' EXIT
	trap 'exit 1' INT TERM HUP
	SA_HUGE_POOL=1 "$suite"
	rc=$?
	echo "$old" > "$pool"
	now=$(cat "$pool")
	if [ "$now" != "$old" ]; then
		echo "vm.nr_hugepages is $now, not restored to $old"
		rc=1
	else
		echo "vm.nr_hugepages restored to $old"
	fi
	exit $rc
fi
echo "not root (or $pool not writable, or no flock): the hugetlb pool tests are skipped"
exec "$suite"
