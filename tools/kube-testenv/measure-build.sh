#!/usr/bin/env bash
# Measures one `scripts/testenv build` into scratch directories, so the figures in docs/testing.md
# can be reproduced: wall time, the largest single process (GNU time) and the peak of the summed
# resident memory of every process of the build (sampled each second), plus the cache sizes.
#
#   measure-build.sh warm          the real Go caches (binaries go to a scratch cache, so it builds)
#   measure-build.sh cold-build    empty GOCACHE, module cache kept
#   measure-build.sh cold-all      empty GOCACHE, GOMODCACHE and GOPATH: everything downloaded again
#
# Needs GNU time (/usr/bin/time). Scratch directories are removed at the end.
set -euo pipefail
mode=${1:?usage: measure-build.sh warm|cold-build|cold-all}
root=$(cd "$(dirname "$0")/../.." && pwd)
scratch=$(mktemp -d /tmp/testenv-measure.XXXXXX)
trap 'chmod -R u+w "$scratch" 2>/dev/null || true; rm -rf "$scratch"' EXIT
export LIFECYCLE_TESTENV_CACHE="$scratch/cache"
case "$mode" in
  warm) ;;
  cold-build) export GOCACHE="$scratch/gocache" ;;
  cold-all) export GOCACHE="$scratch/gocache" GOMODCACHE="$scratch/gopath/pkg/mod" GOPATH="$scratch/gopath" ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac

setsid /usr/bin/time -v -o "$scratch/time.txt" "$root/scripts/testenv" build &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
  kb=$(ps -o rss= -s "$pid" 2>/dev/null | awk '{s += $1} END {print s + 0}')
  [ "$kb" -gt "$peak" ] && peak=$kb
  sleep 1
done
wait "$pid"

echo "mode:                          $mode"
grep -E 'Elapsed \(wall clock\)|Maximum resident set size|User time|System time' "$scratch/time.txt" | sed 's/^[[:space:]]*/  /'
echo "  peak summed RSS of the build (MiB): $(( peak / 1024 ))"
[ "$mode" != warm ] && echo "  Go build cache size: $(du -sh "$GOCACHE" | cut -f1)"
[ "$mode" = cold-all ] && echo "  Go module cache size: $(du -sh "$GOMODCACHE" | cut -f1)"
echo "  binaries: $(du -sh "$LIFECYCLE_TESTENV_CACHE" | cut -f1)"
