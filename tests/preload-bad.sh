#!/bin/sh
# preload-bad.sh — bad frees under spanalloc, preloaded (spanalloc-run) and linked: each must
# print spanalloc's one line naming the address and die of SIGABRT, without touching the block.
# Cases: double free of a large and of a small object (the small one is caught when the
# thread cache is flushed, here by malloc_trim, or on the spot under SPANALLOC_DEBUG=1), a
# pointer inside an object, a stack and a static address, realloc of a stack address, and a
# block from glibc's own malloc (reached through dlvsym): the foreign pointer policy.
set -u
lib=lib/.libs/libspanalloc.so.0
run=./spanalloc-run
status=0
[ -x "$run" ] && [ -f "$lib" ] || { echo "SKIP: preload-bad: run make first"; exit 77; }
if ldd "$lib" 2>/dev/null | grep -q libasan; then echo "SKIP: preload-bad: sanitizer build"; exit 77; fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/preload-bad.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
ulimit -c 0

# check HOW MODE PATTERN [ENV...]: PATTERN is the message after the address
check() {
	how=$1 mode=$2 pattern=$3
	shift 3
	if [ "$how" = preload ]; then
		env "$@" $run tests/override_bad "$mode" >"$tmp/out" 2>"$tmp/err"
	else
		env "$@" tests/override_bad_linked "$mode" >"$tmp/out" 2>"$tmp/err"
	fi
	rc=$?
	addr=$(sed -n 's/^addr=//p' "$tmp/out")
	line=$(grep '^spanalloc: fatal: ' "$tmp/err")
	name="$how $mode${1:+ ($*)}"
	if [ $rc -ne 134 ]; then
		echo "FAIL: preload-bad: $name: exit status $rc, want 134 (SIGABRT); stderr: $(head -c 300 "$tmp/err")"
		status=1
	elif [ -z "$addr" ] || ! printf "%s\n" "$line" | grep -q "$addr" || ! printf "%s\n" "$line" | grep -q "$pattern"; then
		echo "FAIL: preload-bad: $name: message '$line' does not name $addr with '$pattern'"
		status=1
	elif grep -q survived "$tmp/out"; then
		echo "FAIL: preload-bad: $name: the program went on"
		status=1
	else
		echo "PASS: preload-bad: $name: SIGABRT, \"$line\""
	fi
}

for how in preload linked; do
	check $how double-large "double free"
	check $how double-small "double free"
	check $how double-small-now "double free" SPANALLOC_DEBUG=1
	check $how interior "not the start of an object"
	check $how interior-large "not the start of an object"
	check $how stack "not allocated by spanalloc"
	check $how static "not allocated by spanalloc"
	check $how realloc-stack "not allocated by spanalloc"
	check $how glibc "not allocated by spanalloc"
done
exit $status
