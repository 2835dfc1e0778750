#!/usr/bin/env bash
# Lints the gRPC API and checks that it stays wire- and source-compatible
# with the last release: buf lint, then buf breaking against the API of the
# newest v* tag (or, before the first release, of main's merge base, so
# that a branch cannot break what main serves). buf comes from the Go
# module proxy at the version pinned in the Makefile ($BUF).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
BUF=${BUF:?set BUF to buf as module@version}
buf() { "$GO" run "$BUF" "$@"; }

buf lint

base=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)
what="release $base"
if [ -z "$base" ]; then
	for ref in main origin/main; do
		if base=$(git merge-base HEAD "$ref" 2>/dev/null); then
			what="$ref (no release tag yet), at ${base:0:12}"
			break
		fi
	done
fi
if [ -z "$base" ]; then
	# A checkout with neither a release tag nor main (a bare CI clone of a
	# detached commit) has nothing older to hold the API to: lint only.
	echo "check-api: buf lint clean; no release tag (v*) and no main branch, so no breaking check" >&2
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$base" api | tar -x -C "$tmp"
cp buf.yaml "$tmp/"
buf breaking --against "$tmp"
echo "check-api: buf lint clean; no breaking change against $what"
