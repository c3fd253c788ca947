#!/bin/sh
# CUDA builds must compile the NCCL backend for real, not the "no NCCL" fallback of CPU builds
# (a missing nccl.h at configure time only warns).
# Usage: check_nccl_tu.sh OBJECT... (the one named distributed_nccl.cc.o is checked)
for o in "$@"; do
  case "$o" in
    */distributed_nccl.cc.o)
      if nm -C "$o" | grep -q "c10d::ProcessGroupNCCL::ProcessGroupNCCL"; then
        echo "ok: $o constructs ProcessGroupNCCL"
        exit 0
      fi
      echo "$o does not construct ProcessGroupNCCL: the NCCL backend was not compiled"
      exit 1
      ;;
  esac
done
echo "no distributed_nccl.cc.o among the objects"
exit 1
