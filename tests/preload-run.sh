#!/bin/sh
# preload-run.sh — the spanalloc-run command: usage, arguments passed intact, exit status
# passed through, LD_PRELOAD kept, the build tree's library when run uninstalled, the
# installed libdir's when installed (simulated by generating a copy with another libdir).
set -u
lib=lib/.libs/libspanalloc.so.0
run=./spanalloc-run
srcdir=${srcdir:-.}
status=0
ok() { echo "PASS: preload-run: $*"; }
bad() { echo "FAIL: preload-run: $*"; status=1; }
[ -x "$run" ] && [ -f "$lib" ] || { echo "SKIP: preload-run: run make first"; exit 77; }
if ldd "$lib" 2>/dev/null | grep -q libasan; then echo "SKIP: preload-run: sanitizer build"; exit 77; fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/preload-run.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

$run >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q '^usage: spanalloc-run PROGRAM' "$tmp/err" && ok "no program: usage, status 2" || bad "no program"
$run --help 2>/dev/null && ok "--help: status 0" || bad "--help"

out=$($run tests/override_probe)
[ "$out" = "spanalloc malloc_usable_size(malloc(20))=32" ] && ok "probe under spanalloc-run: $out" || bad "probe: $out"

out=$($run sh -c 'printf "[%s]" "$@"' argv0 "a b" "" 'c$d')
[ "$out" = '[a b][][c$d]' ] && ok "arguments passed intact" || bad "arguments: $out"

$run sh -c 'exit 7'
[ $? -eq 7 ] && ok "exit status passed through" || bad "exit status"

$run /nonexistent/program 2>/dev/null
[ $? -eq 127 ] && ok "missing program: status 127" || bad "missing program"

out=$(LD_PRELOAD=libm.so.6 $run sh -c 'echo "$LD_PRELOAD"')
case "$out" in
*/libspanalloc.so.0\ libm.so.6) ok "LD_PRELOAD kept after spanalloc: $out" ;;
*) bad "LD_PRELOAD: $out" ;;
esac

abs=$(cd lib/.libs && pwd -P)/libspanalloc.so.0
$run sh -c 'cat /proc/$$/maps' | grep -q "$abs" && ok "uninstalled: the build tree's $abs" || bad "uninstalled library"

# installed: a copy generated with libdir=$tmp/lib finds the library there
mkdir -p "$tmp/lib" "$tmp/bin"
cp "$lib" "$tmp/lib/libspanalloc.so.0"
sed -e "s|@libdir@|$tmp/lib|g" -e "s|@abs_top_builddir@|$(pwd)|g" "$srcdir/lib/spanalloc-run.in" >"$tmp/bin/spanalloc-run"
chmod +x "$tmp/bin/spanalloc-run"
"$tmp/bin/spanalloc-run" sh -c 'cat /proc/$$/maps' | grep -q "$tmp/lib/libspanalloc.so.0" &&
	ok "installed: the libdir's library" || bad "installed copy did not use $tmp/lib"
# installed but the libdir lost its library: falls back to the build tree
rm "$tmp/lib/libspanalloc.so.0"
"$tmp/bin/spanalloc-run" tests/override_probe | grep -q '^spanalloc' && ok "installed, library missing: build tree fallback" ||
	bad "fallback"
SPANALLOC_LIB=/nonexistent.so "$tmp/bin/spanalloc-run" true 2>"$tmp/err"
[ $? -eq 127 ] && grep -q 'cannot find' "$tmp/err" && ok "SPANALLOC_LIB pointing nowhere: clear error, 127" || bad "SPANALLOC_LIB"
exit $status
