#!/usr/bin/env bash
# Two `mgm serve` replicas behind nginx on loopback (least connections, streaming unbuffered,
# a draining or failed replica skipped), driven with the openai SDK: 16 concurrent clients through
# nginx must get the answers one replica gives directly, and both replicas must have served.
# This is the README's multi-replica setup, runnable: on a GPU machine give each replica its own
# --device cuda:N instead of sharing the CPU.
#
# Usage: scripts/serve_replicas_nginx.sh --model DIR [--workdir DIR] [--keep]
#   --keep leaves nginx and the replicas running (prints how to stop them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"
model="" work="" keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --workdir) work="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$model" && -f "$model/config.json" ]] || { echo "usage: $0 --model DIR (an MGM checkpoint folder)" >&2; exit 2; }
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || { echo "nginx is not installed (apt-get install nginx-light)" >&2; exit 1; }
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
bd="${MGM_BUILD_DIR:-build}"
[[ "$bd" == /* ]] || bd="$root/$bd"
mgm="$bd/eval/mgm"
py="$MGM_VENV/bin/python"
work="${work:-$(mktemp -d /tmp/mgm_replicas.XXXXXX)}"
mkdir -p "$work"

pids=()
stop_all() {
  [[ -f "$work/nginx.pid" ]] && "$nginx_bin" -p "$work" -c "$work/nginx.conf" -s quit 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
[[ $keep == 1 ]] || trap stop_all EXIT

ports=()
for r in 1 2; do
  OMP_NUM_THREADS=1 "$mgm" serve --model-path "$model" --port 0 --max-num-seqs 8 > "$work/replica$r.log" 2>&1 &
  pids+=($!)
done
for r in 1 2; do
  for _ in $(seq 900); do
    grep -q "on http://" "$work/replica$r.log" && break
    kill -0 "${pids[$((r - 1))]}" 2>/dev/null || { cat "$work/replica$r.log"; exit 1; }
    sleep 0.2  # polling for the replica's port announcement
  done
  ports+=("$(grep -o 'on http://127.0.0.1:[0-9]*' "$work/replica$r.log" | grep -o '[0-9]*$')")
done

# nginx needs its port in the file: one the kernel hands out, closed again just before.
lb_port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx_error.log;
events { worker_connections 256; }
http {
    access_log $work/nginx_access.log;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    upstream mgm {
        least_conn;
        server 127.0.0.1:${ports[0]} max_fails=2 fail_timeout=10s;
        server 127.0.0.1:${ports[1]} max_fails=2 fail_timeout=10s;
    }
    server {
        listen 127.0.0.1:$lb_port;
        client_max_body_size 32m;
        location / {
            proxy_pass http://mgm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_next_upstream error timeout http_503;
        }
    }
}
EOF
"$nginx_bin" -p "$work" -c "$work/nginx.conf"
echo "replicas on ${ports[*]}, nginx on $lb_port (files in $work)"

"$py" - "$lb_port" "${ports[0]}" "${ports[1]}" <<'PY'
import sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
from openai import OpenAI
lb, r1, r2 = sys.argv[1:4]
questions = [f"What is shape number {i}?" for i in range(8)]
def ask(port, q, stream=False):
    c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    args = dict(model=c.models.list().data[0].id, temperature=0, max_tokens=16,
                messages=[{"role": "user", "content": q}])
    if stream:
        return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **args) if ch.choices)
    return c.chat.completions.create(**args).choices[0].message.content
direct = {q: ask(r1, q) for q in questions}
jobs = [(questions[i % 8], i % 2 == 0) for i in range(16)]
with ThreadPoolExecutor(16) as pool:
    got = list(pool.map(lambda j: ask(lb, j[0], j[1]), jobs))
bad = [(q, g, direct[q]) for (q, _), g in zip(jobs, got) if g != direct[q]]
def served(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("mgm:request_success_total"))
n1, n2 = served(r1) - len(questions), served(r2)
print(f"16 requests through nginx (8 streamed): {16 - len(bad)} equal to the direct answers; "
      f"replica 1 served {n1:.0f}, replica 2 served {n2:.0f}")
if bad or n1 < 1 or n2 < 1:
    print("FAILED:", bad[:3])
    sys.exit(1)
PY
if [[ $keep == 1 ]]; then
  echo "left running: nginx -p $work -c $work/nginx.conf -s quit; kill ${pids[*]}"
fi
