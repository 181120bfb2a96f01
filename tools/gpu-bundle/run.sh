#!/bin/sh
# The GPU check: runs on any Linux machine with a GPU driver and a Vulkan loader, without a
# Rust toolchain. Prints the adapter, the GPU-vs-CPU exactness tests and the benchmark table
# (4M, 16M and 64M elements at 2, 4 and 8 bits, min/max and lsq, dequantize, and every ggml
# block type with an importance matrix and without); the table's JSON goes to bench.json here.
#   ./run.sh                          everything
#   SIZES="1M" ./run.sh               a quicker benchmark
#   TYPES=q4_k IMATRIX=0 ./run.sh     one ggml type, without an importance matrix
set -u
cd "$(dirname "$0")"
OUT=${OUT:-.}
status=0

echo "== machine"
uname -srm
nproc | sed 's/^/cpus: /'
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader || true
fi
if ! (ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1') && ! ls /usr/lib*/libvulkan.so.1 /usr/lib/*/libvulkan.so.1 >/dev/null 2>&1; then
    echo "warning: no Vulkan loader (libvulkan.so.1) found; install libvulkan1 (and the GPU's Vulkan driver)" >&2
fi
# NVIDIA's Vulkan driver (libGLX_nvidia) loads through libglvnd: without it wgpu finds no
# adapter at all (seen on a CUDA-only image with an H200).
if ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1 && ! (ldconfig -p 2>/dev/null | grep -q 'libGLdispatch\.so\.0'); then
    echo "warning: NVIDIA's Vulkan driver needs libglvnd (libGLdispatch.so.0); install libglvnd0 (Debian/Ubuntu)" >&2
fi

echo "== exactness: GPU bytes against the CPU backend and the reference"
for t in ./gpu_exact ./gpu_device ./lsq ./gpu_ggml; do
    if ! "$t" --test-threads=1 -q 2>&1; then
        echo "FAILED: $t" >&2
        status=1
    fi
done

echo "== benchmark (GB/s of f32 input; ratios against baselines measured in the same run)"
imatrix=""
[ "${IMATRIX:-1}" = 1 ] && imatrix="--imatrix"
# shellcheck disable=SC2086
./bench-gpu ${SIZES:-4M 16M 64M} --bits 2,4,8 --methods minmax,lsq --dequantize --group-size 128 --types ${TYPES:-q4_0,q4_1,q5_0,q5_1,q8_0,q2_k,q3_k,q4_k,q5_k,q6_k} $imatrix --iters ${ITERS:-5} --json-out "$OUT/bench.json" || status=1
echo "json: $OUT/bench.json"
exit $status
