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

mkdir -p m4 build-aux
autoreconf -fi
./configure "$@"
