#!/usr/bin/env bash
# Builds the references from llama-cpp-python 0.3.36's sdist (its vendor/llama.cpp is llama.cpp
# 3aa0ce9): llama-quantize, llama-imatrix and llama-perplexity (the quality measurements of
# benchmarks/target_quality.py), and benchmarks/ggml_harness.c against its ggml-base. About
# 15 minutes on 2 cores; the build is kept under build/reference and reused.
set -euo pipefail
PYTHON=${PYTHON:-python3}
out=build/reference
mkdir -p "$out"
if [ ! -d "$out/llama_cpp_python-0.3.36" ]; then
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$out"
    tar -xzf "$out/llama_cpp_python-0.3.36.tar.gz" -C "$out"
fi
src="$out/llama_cpp_python-0.3.36/vendor/llama.cpp"
tools=(llama-quantize llama-imatrix llama-perplexity)
missing=()
for t in "${tools[@]}"; do
    [ -x "$out/$t" ] || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
    cmake -S "$src" -B "$src/build" -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF > "$out/cmake.log"
    cmake --build "$src/build" --target "${missing[@]}" -j"$(nproc)" > "$out/build.log"
    for t in "${missing[@]}"; do
        cp "$src/build/bin/$t" "$out/$t"
    done
fi
if [ ! -x "$out/ggml-harness" ]; then
    gcc -O2 -I"$src/ggml/include" benchmarks/ggml_harness.c "$src/build/ggml/src/libggml-base.a" \
        -lm -lpthread -lstdc++ -fopenmp -o "$out/ggml-harness"
fi
echo "${tools[*]/#/$out/} and $out/ggml-harness are ready"
