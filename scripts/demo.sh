#!/usr/bin/env bash
# Starts the whole demo: the development escrowd of scripts/run-dev.sh
# (SoftHSM, the Vault dev server, escrowd), the reference sync backend
# (examples/syncbackend) and the demo PWA (examples/pwa), all under .run/.
# It prints the app's URL and the commands a support technician uses;
# Ctrl-C (or SIGTERM) stops all of it. `make demo` builds what it needs.
#
# Development only, as run-dev.sh: PINs, keys and Vault's token sit in .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run=$root/.run
listen=${ESCROWD_LISTEN:-127.0.0.1:7420}
health=${ESCROWD_HEALTH_LISTEN:-127.0.0.1:7421}
backend=${DEMO_BACKEND_LISTEN:-127.0.0.1:8080}
app_port=${DEMO_APP_PORT:-8000}
# WebAuthn refuses an IP address as a passkey's domain: the page is opened
# as localhost, and the backend lets that origin call it.
app_url=http://localhost:$app_port/
mkdir -p "$run"
chmod 700 "$run"

pids=()
# Stop in the reverse order of starting: the app, the sync backend, then
# run-dev.sh, which stops escrowd and then Vault.
stop() {
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# waitport ADDR PID NAME LOG: wait until ADDR accepts connections, or fail
# if PID has exited or 60 s have passed.
waitport() {
	local host=${1%:*} port=${1##*:}
	for _ in $(seq 600); do
		if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
		if ! kill -0 "$2" 2>/dev/null; then
			echo "$3 failed to start; see $4" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "$3 not ready on $1 after 60 s; see $4" >&2
	exit 1
}

"$root/examples/pwa/build.sh" "$run/pwa" "http://$backend"

ESCROWD_LISTEN=$listen "$root/scripts/run-dev.sh" -health-listen "$health" >"$run/escrowd.log" 2>&1 &
pids+=($!)
waitport "$listen" "${pids[0]}" escrowd "$run/escrowd.log"

"$root/bin/syncbackend" -escrowd "$listen" \
	-ca "$run/pki/ca.crt" -cert "$run/pki/sync-backend.crt" -key "$run/pki/sync-backend.key" \
	-listen "$backend" -store "$run/syncbackend.db" -allow-origins "http://localhost:$app_port" \
	-events 2s >"$run/syncbackend.log" 2>&1 &
pids+=($!)
waitport "$backend" "${pids[1]}" "the sync backend" "$run/syncbackend.log"

"$root/bin/pwaserve" -dir "$run/pwa" -listen "127.0.0.1:$app_port" >"$run/pwaserve.log" 2>&1 &
pids+=($!)
waitport "127.0.0.1:$app_port" "${pids[2]}" "the app's server" "$run/pwaserve.log"

cat <<MSG

escrowd demo (Ctrl-C stops everything)
  app           $app_url  (open it in Chromium, Chrome or Edge)
  sync backend  http://$backend  (log: $run/syncbackend.log)
  escrowd       $listen, gRPC health without TLS on $health
                (SoftHSM, Vault and escrowd log: $run/escrowd.log)

In the app, sign up as ann with a password and write a few notes. An
account's key group is ACCOUNT-keys: ann's is ann-keys.

A support technician, in another shell:
  export ESCROWD_ADDR=$listen ESCROWCTL_PKI=$run/pki
  bin/escrowctl codes reveal -as alice -group ann-keys -user ann -ticket SUP-77
    (read the code out to ann: "Forgot password" in the app takes it, offline too)
  bin/escrowctl codes list -as alice -group ann-keys -user ann
  bin/escrowctl group show -as carol -group ann-keys
Dual control: a reveal in a group named vip-* (an account named vip-ann has
the key group vip-ann-keys) waits until a second technician approves it:
  bin/escrowctl codes reveal -as alice -group vip-ann-keys -user vip-ann -ticket SUP-78
and, in a third shell (same export), bob approves what codes pending lists:
  bin/escrowctl codes pending -as bob
  bin/escrowctl codes approve -as bob -id ID -group vip-ann-keys -user vip-ann -ticket SUP-78
Event feed (the sync backend reads it and tells ann a code was revealed):
  bin/escrowctl events -as sync-backend [-after N] [-follow]
Audit trail:
  VAULT_ADDR=\$(cat $run/vault/addr) bin/escrowctl audit verify -vault-token-file $run/vault/token

MSG

# Run until Ctrl-C, or until one of the parts stops on its own.
set +e
wait -n "${pids[@]}"
status=$?
set -e
echo "a part of the demo stopped (status $status); stopping the rest; logs in $run" >&2
exit 1
