#!/usr/bin/env bash
# Starts a development escrowd with everything it needs under .run/: a
# SoftHSM token with its master KEK, a Vault dev server with a file audit
# device, and the daemon on the embedded store. Ctrl-C (or SIGTERM) stops
# all of it; running it again reuses the same token, Vault data and store.
# Arguments are passed on to escrowd (scripts/demo.sh adds -health-listen).
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
"$root/bin/escrowctl" dev pki -dir "$run/pki"

rm -f "$run/vault/addr"
"$root/.cache/bin/vaultdev" -listen 127.0.0.1:0 -addr-file "$run/vault/addr" \
	-token-file "$run/vault/token" -audit-file "$run/vault/audit.log" -data "$run/vault/data" \
	>>"$run/vault/vaultdev.log" 2>&1 &
vault_pid=$!
escrowd_pid=
# escrowd stops first (it flushes its audit records to Vault), then Vault.
stop() {
	for pid in $escrowd_pid $vault_pid; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
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

  policy  $run/pki/policy.yaml (edit, then: kill -HUP \$(cat $run/escrowd.pid))
  limits  reveals-per-user 100 per 1h, reveals-per-technician 1000 per 1h: meant for
          trying things out (rate_limits in the policy; a .run/pki made by an
          older escrowctl has 3 per user per 24h: edit it or delete .run/pki)

Callers use the certificates in $run/pki: sync-backend; alice and bob
(support); carol (security). In another shell:
  export ESCROWD_ADDR=$listen ESCROWCTL_PKI=$run/pki
  bin/escrowctl group provision -as sync-backend -group family-1
  bin/escrowctl dev seal-escrow -as sync-backend -group family-1 -out .run/escrow-slot.json
  bin/escrowctl codes issue -as sync-backend -group family-1 -user dana -escrow-slot .run/escrow-slot.json -out .run/slots
  bin/escrowctl codes reveal -as alice -group family-1 -user dana -ticket SUP-1
  bin/escrowctl codes list -as alice -group family-1 -user dana
  bin/escrowctl group show -as carol -group family-1
Dual control: reveals in groups named vip-* wait until another person runs
  bin/escrowctl codes pending -as bob
  bin/escrowctl codes approve -as bob -id ID -group GROUP -user USER -ticket TICKET
(stating the group, user and ticket that codes pending lists for ID)
Event feed (what the sync backend tells users; a .run/pki made before the
feed existed needs ListEvents added to its sync-backend role):
  bin/escrowctl events -as sync-backend [-after N] [-follow]
Every command: bin/escrowctl --help; -o json for machine-readable output;
shell completion: source <(bin/escrowctl completion bash)
Audit trail:
  VAULT_ADDR=$vault_addr bin/escrowctl audit verify -vault-token-file $run/vault/token

MSG

"$root/bin/escrowd" -listen "$listen" -store "$run/escrowd.db" \
	-tls-cert "$run/pki/server.crt" -tls-key "$run/pki/server.key" -client-ca "$run/pki/ca.crt" \
	-policy "$run/pki/policy.yaml" \
	-hsm-module "$module" -hsm-token escrowd-dev -hsm-pin-file "$run/softhsm/user.pin" \
	-vault-addr "$vault_addr" -vault-token-file "$run/vault/token" \
	-pid-file "$run/escrowd.pid" "$@" &
escrowd_pid=$!
wait "$escrowd_pid"
