"""A CUDA simulator for gpuquant's kernels: the real kernels/*.cu and the CuPy backend's launchers,
run on the CPU with no GPU and no CuPy (GPUQUANT_CUDA_SIM=1; see gpuquant/backends/cupy/device.py).

- build.py compiles a .cu file with the host C++ compiler, __CUDACC__ defined, after cuda_sim.h
  (threadIdx and friends, __shared__, barriers, shuffles, the intrinsics the kernels call);
- cuda_sim.cpp runs a launch: blocks over CPU threads, each block's threads as fibers;
- cupy.py is the stand-in for the part of CuPy the backend uses: device arrays with guard bytes,
  streams that defer work until the host waits, and Module/Function that launch the real kernels
  with CuPy's argument rules checked against each kernel's C signature.
"""
