#!/usr/bin/env bash
# Two "hosts" on one machine for `--features mpi`: two network namespaces joined by a veth pair
# (10.99.0.1 and 10.99.0.2), so that the ranks talk real TCP between two network stacks, and an
# rsh agent that makes mpirun start the second rank's daemon in the second namespace (each
# "host" would bind its rank to its first core, the same core here: --bind-to none). Needs root
# and iproute2; removes the namespaces when it ends. Usage:
#   scripts/two_hosts.sh sbfnet train flags...     (run from the repository root, after
#                                                   cargo build --release --features mpi)
# e.g. scripts/two_hosts.sh --model resnet20 --threads 1 --epochs 1 --train-limit 6400 --out /tmp/x
set -euo pipefail
cd "$(dirname "$0")/.."
agent=$(mktemp /tmp/sbfnet-netns-rsh.XXXXXX)
cleanup() {
  ip netns del sbfnet-a 2>/dev/null || true
  ip netns del sbfnet-b 2>/dev/null || true
  rm -f "$agent"
}
trap cleanup EXIT
cleanup
ip netns add sbfnet-a
ip netns add sbfnet-b
ip link add veth-sbfnet-a netns sbfnet-a type veth peer name veth-sbfnet-b netns sbfnet-b
ip -n sbfnet-a addr add 10.99.0.1/24 dev veth-sbfnet-a
ip -n sbfnet-b addr add 10.99.0.2/24 dev veth-sbfnet-b
for ns in sbfnet-a sbfnet-b; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "veth-${ns}" up
done
cat > "$agent" <<'EOF'
#!/bin/sh
# mpirun's rsh agent: runs the daemon's command in the namespace of its "host".
host=$1; shift
case $host in
  10.99.0.1) ns=sbfnet-a ;;
  10.99.0.2) ns=sbfnet-b ;;
  *) echo "two_hosts.sh: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" /bin/sh -c "$*"
EOF
chmod +x "$agent"
ip netns exec sbfnet-a mpirun --allow-run-as-root --mca plm_rsh_agent "$agent" \
  --host 10.99.0.1,10.99.0.2 -np 2 --bind-to none \
  --mca btl tcp,self --mca btl_tcp_if_include 10.99.0.0/24 --mca oob_tcp_if_include 10.99.0.0/24 \
  "$PWD/target/release/sbfnet" train "$@"
