#!/bin/sh
# Set up a fresh checkout: install the build dependencies when missing (apt-get as root,
# otherwise print the command), generate the build system, and run ./configure "$@".
set -e
cd "$(dirname "$0")"

pkgs=""
need() { dpkg -s "$1" >/dev/null 2>&1 || pkgs="$pkgs $1"; }
if command -v dpkg >/dev/null 2>&1; then
	for p in autoconf automake libtool pkg-config make gcc libnuma-dev liburing-dev check; do
		need "$p"
	done
fi
if [ -n "$pkgs" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "autogen.sh: installing$pkgs"
		apt-get update -qq || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
	else
		echo "autogen.sh: missing packages; run as root:"
		echo "  apt-get install$pkgs"
		exit 1
	fi
fi

# Peer allocators for `make bench`: best effort, never fatal.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
	peers=""
	for p in libjemalloc2 libtcmalloc-minimal4 libmimalloc2.0; do
		dpkg -s "$p" >/dev/null 2>&1 || peers="$peers $p"
	done
	if [ -n "$peers" ]; then
		echo "autogen.sh: installing benchmark peers$peers"
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $peers >/dev/null 2>&1 ||
			{ apt-get update -qq >/dev/null 2>&1 &&
			  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $peers >/dev/null 2>&1; }; } ||
			echo "autogen.sh: could not install$peers; make bench will skip them"
	fi
fi

mkdir -p m4 build-aux
autoreconf -fi
./configure "$@"
