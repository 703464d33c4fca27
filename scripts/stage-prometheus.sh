#!/bin/sh
# stage-prometheus.sh DIR: copy the prometheus binary (PROMETHEUS, default
# the one on PATH: Debian's package) and every shared library ldd lists for
# it into DIR at their absolute paths, as the build context of
# deploy/Dockerfile.prometheus (FROM scratch).
set -eu
dir=$1
bin=${PROMETHEUS:-$(command -v prometheus || true)}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
	echo "stage-prometheus: no prometheus binary: install Debian's package (apt-get install prometheus) or set PROMETHEUS=/path/to/prometheus" >&2
	exit 1
fi
rm -rf "$dir"
mkdir -p "$dir/usr/bin"
cp -L "$bin" "$dir/usr/bin/prometheus"
# ldd prints "name => /path (addr)" and "/lib64/ld-linux... (addr)"; a static
# binary prints "not a dynamic executable" (nothing to copy).
for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
	mkdir -p "$dir$(dirname "$lib")"
	cp -L "$lib" "$dir$lib"
done
