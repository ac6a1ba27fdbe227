# shellcheck shell=bash
# Source me: puts the project's Node 24 (.tools/node24, installed by scripts/setup.sh)
# first on PATH. Exports KV_EPP_ROOT, KV_EPP_NODE24_BIN, and KV_EPP_SYSTEM_NODE (the
# first other `node` on PATH, empty if none) for the engines>=20 smoke run.
KV_EPP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KV_EPP_NODE24_BIN="$KV_EPP_ROOT/.tools/node24/node_modules/node/bin"
if [[ -z "${KV_EPP_SYSTEM_NODE+set}" ]]; then
  KV_EPP_SYSTEM_NODE=""
  IFS=: read -r -a _kv_epp_path <<<"$PATH"
  for _kv_epp_dir in "${_kv_epp_path[@]}"; do
    if [[ "$_kv_epp_dir" != "$KV_EPP_NODE24_BIN" && -x "$_kv_epp_dir/node" ]]; then
      KV_EPP_SYSTEM_NODE="$_kv_epp_dir/node"
      break
    fi
  done
  unset _kv_epp_path _kv_epp_dir
fi
case ":$PATH:" in
  *":$KV_EPP_NODE24_BIN:"*) ;;
  *) PATH="$KV_EPP_NODE24_BIN:$PATH" ;;
esac
export KV_EPP_ROOT KV_EPP_NODE24_BIN KV_EPP_SYSTEM_NODE PATH
