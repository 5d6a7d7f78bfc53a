#!/bin/sh
# preload-programs.sh — real programs run without and with spanalloc (through ./spanalloc-run),
# their outputs compared byte for byte, with proof spanalloc was in use: SPANALLOC_STATS=1
# makes every spanalloc process print its heap report on stderr at exit, and a probe prints
# malloc_usable_size(malloc(20)): 32 under spanalloc (its size class), 24 under glibc.
# sort closes stderr before exit, so the report cannot show there: the dynamic loader's binding
# log (LD_DEBUG=bindings into a file) proves malloc was bound to libspanalloc in every run.
# Programs: python3 (PYTHONMALLOC=malloc), sort on a generated 26 MB file (that size keeps the
# test well under 30 s on 2 cores), gcc -O1 on a generated 1,000-function C file (about 4 s
# of CPU), a tar+gzip
# round trip, and a C++ program (std::map, std::string, threads) built with g++.
set -u
srcdir=${srcdir:-.}
lib=lib/.libs/libspanalloc.so.0
run=./spanalloc-run
status=0
pass() { echo "PASS: preload-programs: $*"; }
fail() { echo "FAIL: preload-programs: $*"; status=1; }
skip() { echo "SKIP: preload-programs: $*"; exit 77; }

[ -x "$run" ] && [ -f "$lib" ] || skip "no $run or $lib (run make first)"
if ldd "$lib" 2>/dev/null | grep -q libasan; then skip "sanitizer build: ASan cannot be preloaded"; fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/preload-programs.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
export LC_ALL=C

probe_plain=$(tests/override_probe)
probe_sa=$($run tests/override_probe)
if [ "$probe_plain" = "glibc malloc_usable_size(malloc(20))=24" ] &&
	[ "$probe_sa" = "spanalloc malloc_usable_size(malloc(20))=32" ]; then
	pass "probe: without: $probe_plain; with: $probe_sa"
else
	fail "probe: without: '$probe_plain', with: '$probe_sa'"
fi

# compare NAME CMD...: run CMD plainly and under spanalloc (SPANALLOC_STATS=1), compare
# stdout and exit status, and require spanalloc's report on the preloaded run's stderr.
compare() {
	name=$1
	shift
	t0=$(date +%s.%N)
	"$@" >"$tmp/$name.plain" 2>"$tmp/$name.plain.err"
	rc0=$?
	t1=$(date +%s.%N)
	SPANALLOC_STATS=1 LD_DEBUG=bindings LD_DEBUG_OUTPUT="$tmp/$name.ld" $run "$@" >"$tmp/$name.sa" 2>"$tmp/$name.sa.err"
	rc1=$?
	t2=$(date +%s.%N)
	reports=$(grep -c '^spanalloc heap report$' "$tmp/$name.sa.err")
	bound=$(cat "$tmp/$name.ld".* 2>/dev/null | grep -c "libspanalloc.so.0 \[0\]: normal symbol .malloc'")
	times=$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "%.1fs plain, %.1fs spanalloc", b - a, c - b }')
	if [ $rc0 -ne 0 ]; then
		fail "$name: the plain run failed ($rc0): $(head -c 300 "$tmp/$name.plain.err")"
	elif [ $rc1 -ne 0 ]; then
		fail "$name: exit $rc1 under spanalloc: $(head -c 300 "$tmp/$name.sa.err")"
	elif ! cmp -s "$tmp/$name.plain" "$tmp/$name.sa"; then
		fail "$name: output differs ($(wc -c <"$tmp/$name.plain") vs $(wc -c <"$tmp/$name.sa") bytes)"
	elif [ "$bound" -lt 1 ]; then
		fail "$name: malloc was not bound to libspanalloc: spanalloc was not in use"
	elif [ "$reports" -lt 1 ] && [ "$name" != sort ]; then
		fail "$name: no spanalloc heap report on stderr: spanalloc was not in use"
	else
		pass "$name: $(wc -c <"$tmp/$name.sa") identical bytes; malloc bound to spanalloc $bound times, $reports heap report(s); $times"
	fi
}

# python3 (the real binary, not a pyenv shim script)
py=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null)
if [ -n "$py" ] && [ -x "$py" ]; then
	PYTHONMALLOC=malloc PYTHONHASHSEED=0 compare python "$py" "$srcdir/tests/preload_alloc.py"
else
	echo "SKIP: preload-programs: python: no python3"
fi

# sort: a 26 MB generated file (400,000 lines)
awk 'BEGIN { x = 12345; for (i = 0; i < 400000; i++) { x = (x * 1103515245 + 12345) % 2147483648;
	printf "%d %s-%x line %d of the generated input\n", x % 100000, substr("abcdefghijklmnop", x % 16 + 1), x, i } }' \
	>"$tmp/sort.in"
compare sort sort -k2,2 -k1,1n --parallel=2 -S 64M "$tmp/sort.in"

# gcc: a large generated C file, compiled to assembly on stdout
awk 'BEGIN { for (i = 0; i < 1000; i++) {
	printf "struct s%d { int a[%d]; const char *n; };\n", i, i % 13 + 1
	printf "static const char *name%d = \"function number %d\";\n", i, i
	printf "int f%d(int x, struct s%d *p) { if (x < 0) return %d; switch (x %% 5) { case 0: return x * %d + p->a[0];", i, i, i, i
	printf " case 1: return (int)__builtin_strlen(name%d) + %d; case 2: return (int)__builtin_strlen(p->n) ^ %d;", i, i, i
	printf " default: { int t = 0; for (int k = 0; k < x; k++) t += k * %d; return t; } } }\n", i % 17 } }' \
	>"$tmp/big.c"
if command -v gcc >/dev/null; then
	compare gcc gcc -O1 -w -S -o - "$tmp/big.c"
else
	echo "SKIP: preload-programs: gcc: not installed"
fi

# tar + gzip round trip: the archive bytes must match, and extraction under spanalloc must
# give back the same tree
mkdir -p "$tmp/tree/sub"
cp "$tmp/big.c" "$tmp/tree/big.c"
head -c 3000000 "$tmp/sort.in" >"$tmp/tree/sub/part"
for i in 1 2 3 4 5 6 7 8 9 10; do echo "file $i" >"$tmp/tree/sub/f$i"; done
compare targz sh -c "tar -C '$tmp/tree' --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | gzip -n -6"
mkdir -p "$tmp/out"
if SPANALLOC_STATS=1 $run sh -c "gzip -dc '$tmp/targz.sa' | tar -C '$tmp/out' -xf -" 2>"$tmp/untar.err" &&
	diff -r "$tmp/tree" "$tmp/out" >/dev/null && grep -q '^spanalloc heap report$' "$tmp/untar.err"; then
	pass "untar: gzip -d | tar -x under spanalloc gives back the same tree"
else
	fail "untar: extraction under spanalloc differs or failed: $(head -c 300 "$tmp/untar.err")"
fi

# C++: std::map, std::string, threads
if command -v g++ >/dev/null && g++ -O2 -pthread -o "$tmp/cxx" "$srcdir/tests/preload_cxx.cpp" 2>"$tmp/cxx.build"; then
	compare cxx "$tmp/cxx"
else
	echo "SKIP: preload-programs: c++: g++ missing or failed: $(head -c 200 "$tmp/cxx.build" 2>/dev/null)"
fi
exit $status
