# Shell functions shared by the launch scripts; `source launch/lib.sh` (nothing runs on sourcing).

# node_ipv4: print this node's IPv4 address as other nodes reach it. With NODE_IFACE set, the address of that
# interface (`ip -4 -o addr show dev $NODE_IFACE`); else the first non-loopback IPv4 of `hostname -I`. Never
# `hostname --ip-address`, which can give IPv6, 127.0.1.1 (Debian's /etc/hosts) or a management NIC.
# Fails (status 1, message on stderr) when only 127.* addresses or none are found.
node_ipv4() {
  local addrs ip
  local -a list=()
  if [[ -n "${NODE_IFACE:-}" ]]; then  # "2: eth0    inet 10.1.2.3/24 brd ... scope global eth0 ..."
    addrs=$(ip -4 -o addr show dev "$NODE_IFACE" | awk '{ sub(/\/.*/, "", $4); print $4 }') || addrs=
  else
    addrs=$(hostname -I) || addrs=
  fi
  read -r -d '' -a list <<< "$addrs" || true
  for ip in "${list[@]+"${list[@]}"}"; do
    if [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ && "$ip" != 127.* ]]; then
      echo "$ip"
      return 0
    fi
  done
  echo "node_ipv4: no non-loopback IPv4 address on $(hostname)${NODE_IFACE:+ interface $NODE_IFACE}" \
       "(found: ${list[*]:-nothing}); set NODE_IFACE to the interface the other nodes reach" >&2
  return 1
}

# write_deepspeed_env FILE: write the environment that multi-node deepspeed (pdsh/ssh, mpirun, ...) must forward
# to the remote ranks into FILE, one KEY=VALUE per line (the format deepspeed/launcher/runner.py reads). The
# launcher forwards by itself only MLFLOW*, PYTHON*, MV2*, UCX* and the accelerator's (NCCL*); this adds HF_*,
# TOKENIZERS_*, TORCH_*, DS_*, CUDA_HOME, LD_LIBRARY_PATH and OMP_NUM_THREADS from this environment.
# The caller then exports DS_ENV_FILE=FILE (absolute): runner.py joins that name with ~ and the working
# directory, and an absolute name replaces both, so nothing is written into the checkout or the caller's
# directory. The files the launcher would otherwise have read (~/.deepspeed_env, ./.deepspeed_env, or
# $DS_ENV_FILE there) are appended, so their values still apply and win. Mode 600: HF_TOKEN may be among them.
write_deepspeed_env() {
  local file=$1 name=${DS_ENV_FILE:-.deepspeed_env} var src
  local -a sources=("$HOME/$name" "./$name")
  [[ "$name" == /* ]] && sources=("$name")
  (
    umask 077
    {
      for var in $(compgen -e); do
        case "$var" in
          DS_ENV_FILE) ;;
          HF_*|TOKENIZERS_*|TORCH_*|DS_*|CUDA_HOME|LD_LIBRARY_PATH|OMP_NUM_THREADS)
            [[ "${!var}" == *$'\n'* ]] || printf '%s=%s\n' "$var" "${!var}" ;;  # one line per variable
        esac
      done
      for src in "${sources[@]}"; do
        if [[ -f "$src" && ! "$src" -ef "$file" ]]; then
          grep -v '^[[:space:]]*$' "$src" || true  # runner.py splits every line at '=': no blank lines
        fi
      done
    } > "$file.tmp"
    mv "$file.tmp" "$file"
  )
}
