#!/bin/sh
# Captures, on a real GPU machine, the outputs that tests/unit/test_gpu.py parses, and runs the
# detection and verification code there for real. Usage: sh tests/data/gpu/capture.sh OUTDIR
out=${1:?usage: capture.sh OUTDIR}
mkdir -p "$out"
python3 -c 'from ai_deploy.gpu import probe_script; print(probe_script())' > "$out/probe.sh"
sh "$out/probe.sh" > "$out/probe-gpu-host.txt" 2>&1
python3 -m ai_deploy.gpu > "$out/report.json"; echo "report exit $?" >> "$out/report.json"
# The same probe with the driver's control device hidden: what a host whose driver does not
# work prints (the GPU is still on PCI).
unshare -m sh -c 'for d in /dev/nvidiactl /dev/nvidia0; do mount --bind /dev/null $d; done; sh "$0"' \
  "$out/probe.sh" > "$out/probe-driver-broken.txt" 2>&1
{
  echo "== uname"; uname -a
  echo "== os-release"; cat /etc/os-release
  echo "== python"; python3 --version
  echo "== devices"; ls -l /dev/nvidia* 2>&1
  echo "== nvidia-smi"; /usr/local/nvidia/bin/nvidia-smi 2>&1 || nvidia-smi 2>&1
} > "$out/machine.txt" 2>&1
# GPU memory as blue/green reads it (ai_deploy.host.gpu_memory): the same two queries, with
# nounits (what the deploy runs) and without (the parsers accept both), as the GPU is now.
# capture_memory.py beside this file captures them in four states, holding memory itself.
smi=$(command -v nvidia-smi || echo /usr/local/nvidia/bin/nvidia-smi)
for units in nounits units; do
  fmt=csv,noheader; [ $units = nounits ] && fmt=csv,noheader,nounits
  "$smi" --query-gpu=index,uuid,memory.total,memory.used,memory.free --format=$fmt \
    > "$out/query-gpu-$units.txt" 2>&1; echo "rc $?" >> "$out/query-gpu-$units.txt"
  "$smi" --query-compute-apps=pid,gpu_uuid,used_memory --format=$fmt \
    > "$out/compute-apps-$units.txt" 2>&1; echo "rc $?" >> "$out/compute-apps-$units.txt"
done
"$smi" --query-gpu=memory.reserved --format=csv,noheader > "$out/memory-reserved.txt" 2>&1
cat "$out/report.json"
