#!/bin/sh
# Builds the demo PWA into OUT, configured for the sync backend at BACKEND:
#   examples/pwa/build.sh OUT http://127.0.0.1:8080
# esbuild comes from the device SDK's lock file (npm ci --prefix clients/web).
set -eu
out=${1:?usage: build.sh OUT BACKEND_URL}
backend=${2:?usage: build.sh OUT BACKEND_URL}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
"$here/../../clients/web/node_modules/.bin/esbuild" "$here/src/app.ts" "$here/src/sw.ts" \
  --bundle --format=esm --target=es2022 --log-level=warning --outdir="$out"
cp "$here/index.html" "$here/style.css" "$here/manifest.webmanifest" "$here/icon.svg" "$out/"
printf '{"backend":"%s"}\n' "$backend" > "$out/config.json"
