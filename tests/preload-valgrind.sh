#!/bin/sh
# preload-valgrind.sh — memcheck on a program running on spanalloc reports the program's own
# leak and error, nothing from spanalloc: --soname-synonyms=somalloc=libspanalloc.so* makes
# valgrind replace libspanalloc's malloc family with its own (the documented way to run a
# spanalloc program under valgrind). Checked preloaded (spanalloc-run) and linked.
set -u
lib=lib/.libs/libspanalloc.so.0
run=./spanalloc-run
status=0
command -v valgrind >/dev/null || { echo "SKIP: preload-valgrind: valgrind not installed"; exit 77; }
[ -x "$run" ] && [ -f "$lib" ] || { echo "SKIP: preload-valgrind: run make first"; exit 77; }
if ldd "$lib" 2>/dev/null | grep -q libasan; then echo "SKIP: preload-valgrind: sanitizer build"; exit 77; fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/preload-valgrind.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

vg() {
	valgrind -v --tool=memcheck --leak-check=full --soname-synonyms='somalloc=libspanalloc.so*' \
		--log-file="$tmp/vg.log" "$@" >"$tmp/out" 2>&1
}

for how in preload linked; do
	if [ $how = preload ]; then
		$run valgrind -v --tool=memcheck --leak-check=full --soname-synonyms='somalloc=libspanalloc.so*' \
			--log-file="$tmp/vg.log" tests/override_vg >"$tmp/out" 2>&1
	else
		# the libtool wrapper script would be valgrinded instead: run the real binary
		LD_LIBRARY_PATH=lib/.libs vg tests/.libs/override_vg_linked 2>/dev/null ||
			LD_LIBRARY_PATH=lib/.libs vg tests/override_vg_linked
	fi
	errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$tmp/vg.log" | head -n 1)
	if ! grep -q 'override_vg done' "$tmp/out"; then
		echo "FAIL: preload-valgrind: $how: the program did not run: $(head -c 300 "$tmp/out")"
		status=1
	elif ! grep -q 'REDIR: .*(libspanalloc.so.0:malloc) redirected' "$tmp/vg.log"; then
		echo "FAIL: preload-valgrind: $how: valgrind did not replace libspanalloc's malloc"
		status=1
	elif ! grep -q 'definitely lost: 1,234 bytes in 1 blocks' "$tmp/vg.log"; then
		echo "FAIL: preload-valgrind: $how: the 1234-byte leak was not reported"
		status=1
	elif ! grep -q 'Invalid read of size 1' "$tmp/vg.log"; then
		echo "FAIL: preload-valgrind: $how: the invalid read was not reported"
		status=1
	elif [ "$errs" != 2 ] || grep '^==' "$tmp/vg.log" | grep -q 'spanalloc\|sa_\(malloc\|free\)'; then
		echo "FAIL: preload-valgrind: $how: $errs errors (want 2) or spanalloc frames in the report:"
		grep -E '==[0-9]+== +(at|by) ' "$tmp/vg.log" | head -20
		status=1
	else
		echo "PASS: preload-valgrind: $how: malloc replaced in libspanalloc.so.0; exactly the program's leak (1,234 bytes) and invalid read, ERROR SUMMARY: 2"
	fi
done
exit $status
