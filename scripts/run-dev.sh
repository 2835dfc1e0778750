#!/usr/bin/env bash
# Starts a development escrowd with everything it needs under .run/: a
# SoftHSM token with its master KEK, a Vault dev server with a file audit
# device, and the daemon on the embedded store. Ctrl-C stops all of it;
# running it again reuses the same token, Vault data and store.
#
# Development only: the token's PINs and Vault's root token sit in .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run=$root/.run
listen=${ESCROWD_LISTEN:-127.0.0.1:7420}
mkdir -p "$run/vault"
chmod 700 "$run"

export SOFTHSM2_CONF=$run/softhsm/softhsm2.conf
module=$("$root/bin/escrowctl" dev token -dir "$run/softhsm" -token escrowd-dev)

rm -f "$run/vault/addr"
"$root/.cache/bin/vaultdev" -listen 127.0.0.1:0 -addr-file "$run/vault/addr" \
	-token-file "$run/vault/token" -audit-file "$run/vault/audit.log" -data "$run/vault/data" \
	>>"$run/vault/vaultdev.log" 2>&1 &
vault_pid=$!
trap 'kill "$vault_pid" 2>/dev/null || true; wait "$vault_pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
	[ -s "$run/vault/addr" ] && break
	kill -0 "$vault_pid" 2>/dev/null || { echo "Vault dev server failed; see $run/vault/vaultdev.log" >&2; exit 1; }
	sleep 0.1
done
[ -s "$run/vault/addr" ] || { echo "Vault dev server not ready after 60 s; see $run/vault/vaultdev.log" >&2; exit 1; }
vault_addr=$(cat "$run/vault/addr")

cat <<MSG

escrowd development stack
  HSM     SoftHSM token escrowd-dev ($run/softhsm)
  Vault   $vault_addr (file audit log: $run/vault/audit.log)
  store   $run/escrowd.db
  gRPC    $listen

In another shell:
  export ESCROWD_ADDR=$listen
  bin/escrowctl group provision -group family-1
  bin/escrowctl dev seal-escrow -group family-1 -out .run/escrow-slot.json
  bin/escrowctl codes issue -group family-1 -user alice -escrow-slot .run/escrow-slot.json -out .run/slots
  bin/escrowctl codes reveal -group family-1 -user alice -ticket SUP-1
  bin/escrowctl codes list -group family-1 -user alice
  bin/escrowctl group show -group family-1

MSG

"$root/bin/escrowd" -listen "$listen" -store "$run/escrowd.db" \
	-hsm-module "$module" -hsm-token escrowd-dev -hsm-pin-file "$run/softhsm/user.pin" \
	-vault-addr "$vault_addr" -vault-token-file "$run/vault/token"
