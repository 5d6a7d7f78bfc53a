#!/bin/sh
# chan-tsan.sh — build the channel code (lib/chan.c, lib/select.c, lib/gcchan.c) with clang's
# ThreadSanitizer on libc malloc (tests/chan_tsan_shim.c) and run check_chan and check_chanring
# under it. Not part of `make check` (TSan slows the many-thread tests a lot); run it with
# `make chan-tsan` or directly: tests/chan-tsan.sh [srcdir]. Exits non-zero on any TSan report
# or test failure.
set -eu
SRC=$(cd "${1:-$(dirname "$0")/..}" && pwd)
CC=${CC_TSAN:-clang}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/chan-tsan.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
CFLAGS="-std=gnu11 -O1 -g -fsanitize=thread -fno-omit-frame-pointer -pthread -I$SRC/lib -I$SRC/include"
[ -f "$SRC/config.h" ] && CFLAGS="$CFLAGS -I$SRC -DHAVE_CONFIG_H"
CHECK=$(pkg-config --cflags --libs check)
for t in check_chan check_chanring; do
	$CC $CFLAGS -o "$tmp/$t" "$SRC/tests/$t.c" "$SRC/lib/chan.c" "$SRC/lib/select.c" \
		"$SRC/lib/gcchan.c" "$SRC/tests/chan_tsan_shim.c" $CHECK
done
rc=0
for t in check_chan check_chanring; do
	echo "# $t under ThreadSanitizer"
	# no fork per test: TSan follows threads, and a report fails the run (exitcode)
	CK_FORK=no CK_DEFAULT_TIMEOUT=0 TSAN_OPTIONS="exitcode=66 halt_on_error=1 ${TSAN_OPTIONS:-}" \
		"$tmp/$t" || rc=1
done
exit $rc
