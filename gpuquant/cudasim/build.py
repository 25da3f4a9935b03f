"""The CUDA simulator's build: a kernels/*.cu file compiled by the host C++ compiler with __CUDACC__
defined, after cuda_sim.h, into a shared library that runs its __global__ functions on the CPU.

The kernels' C signatures are read from the preprocessed source (with `__global__` left as a marker),
so the simulator knows each kernel's name and the C type of every argument, as a GPU's loader does
from the cubin; a generated trampoline per kernel unpacks an argument array (cuLaunchKernel's
kernelParams) into the call. Builds are cached by a hash of the kernel sources, the simulator's own
sources, the compiler and the flags.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..hostkernels import DEVICE_SOURCES, cache_dir, find_compiler, kernel_sources_digest, kernels_dir

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_sim.h"
RUNTIME = HERE / "cuda_sim.cpp"

# No fused multiply-add and no fast math, as the device build (--fmad=false); -O1 compiles the
# four modules in a fraction of -O2's time, and the simulator runs small inputs.
CXX_FLAGS = ("-O1", "-std=c++17", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-shared", "-pthread")

_GLOBAL_MARKER = "__gqsim_global__"
_KERNEL = re.compile(_GLOBAL_MARKER + r"\s+void\s+(\w+)\s*\(([^)]*)\)")

# C parameter types the kernels use -> (kind, NumPy dtype name): "pointer" takes a device array of
# that dtype, "scalar" a NumPy scalar of exactly that dtype. A kernel with any other parameter type
# fails the build, so a new one is added here on purpose.
_BASE_TYPES = {
    "float": "float32",
    "double": "float64",
    "int": "int32",
    "gq_i32": "int32",
    "unsigned": "uint32",
    "unsigned int": "uint32",
    "gq_u32": "uint32",
    "long long": "int64",
    "gq_i64": "int64",
    "unsigned long long": "uint64",
    "gq_u8": "uint8",
    "unsigned char": "uint8",
    "gq_i8": "int8",
    "signed char": "int8",
    "gq_u16": "uint16",
    "unsigned short": "uint16",
}


class SimulatorBuildError(RuntimeError):
    """The simulator build of a kernel module failed (compiler error or an unknown parameter type)."""


@dataclass(frozen=True)
class Parameter:
    name: str
    c_type: str  # as the trampoline casts to, e.g. "const float*" or "gq_i64"
    kind: str  # "pointer" or "scalar"
    dtype: str  # NumPy dtype name of the pointee or of the scalar
    const: bool  # a pointer to const: the kernel may not write through it


@dataclass(frozen=True)
class KernelSignature:
    name: str
    parameters: tuple[Parameter, ...]

    def describe(self) -> str:
        return f"{self.name}({', '.join(f'{p.c_type} {p.name}' for p in self.parameters)})"


def _parameter(text: str, kernel: str) -> Parameter:
    tokens = text.replace("*", " * ").replace("__restrict__", " ").split()
    if len(tokens) < 2 or not re.fullmatch(r"[A-Za-z_]\w*", tokens[-1]):
        raise SimulatorBuildError(f"kernel {kernel}: cannot read parameter {text.strip()!r}")
    name, type_tokens = tokens[-1], tokens[:-1]
    stars = type_tokens.count("*")
    const = "const" in type_tokens
    base = " ".join(t for t in type_tokens if t not in ("*", "const"))
    if base not in _BASE_TYPES or stars > 1:
        raise SimulatorBuildError(f"kernel {kernel}: parameter {text.strip()!r} has a type the simulator does "
                                  f"not know (add it to gpuquant/cudasim/build.py's _BASE_TYPES)")
    c_type = ("const " if const else "") + base + ("*" if stars else "")
    return Parameter(name, c_type, "pointer" if stars else "scalar", _BASE_TYPES[base], const and stars == 1)


def kernel_signatures(source_name: str, directory: Path | None = None, compiler: str | None = None) -> \
        tuple[KernelSignature, ...]:
    """The __global__ functions of kernels/<source_name>, in source order, from the preprocessed text."""
    directory = directory or kernels_dir()
    compiler = compiler or _compiler()
    text = f'#define __CUDACC__ 1\n#include "{HEADER}"\n#undef __global__\n#define __global__ {_GLOBAL_MARKER}\n' \
           f'#include "{source_name}"\n'
    result = subprocess.run([compiler, "-E", "-P", "-std=c++17", "-I", str(directory), "-x", "c++", "-"],
                            input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise SimulatorBuildError(f"preprocessing {source_name} failed:\n{result.stderr[-4000:]}")
    kernels = []
    for name, params in _KERNEL.findall(result.stdout):
        params = " ".join(params.split())
        parts = [] if params in ("", "void") else params.split(",")
        kernels.append(KernelSignature(name, tuple(_parameter(p, name) for p in parts)))
    if not kernels:
        raise SimulatorBuildError(f"{source_name} defines no __global__ function")
    return tuple(kernels)


def _wrapper_source(source_name: str, kernels: tuple[KernelSignature, ...]) -> str:
    lines = [
        "// Generated by gpuquant/cudasim/build.py: one kernels/*.cu file for the CUDA simulator.",
        "#define __CUDACC__ 1",
        f'#include "{HEADER}"',
        f'#include "{source_name}"',
        "namespace {",
    ]
    for k, kernel in enumerate(kernels):
        unpacked = ", ".join(f"*static_cast<P{k}_{i}*>(args[{i}])" for i in range(len(kernel.parameters)))
        lines += [f"using P{k}_{i} = {p.c_type};" for i, p in enumerate(kernel.parameters)]
        lines.append(f"void gqsim_entry_{k}(void** args) {{ (void)args; {kernel.name}({unpacked}); }}")
    lines.append("}  // namespace")
    lines.append('extern "C" {')
    lines += [f"void* gqsim_entry_of_{kernel.name}() {{ return (void*)&gqsim_entry_{k}; }}"
              for k, kernel in enumerate(kernels)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _compiler() -> str:
    compiler = find_compiler()
    if compiler is None:
        raise SimulatorBuildError("the CUDA simulator needs a C++ compiler (set CXX, or install g++)")
    return compiler


def _digest(compiler: str, directory: Path) -> str:
    h = hashlib.sha256()
    parts = (kernel_sources_digest(directory, DEVICE_SOURCES), HEADER.read_text(), RUNTIME.read_text(),
             Path(__file__).read_text(), compiler, " ".join(CXX_FLAGS))
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


@dataclass
class SimulatorModule:
    """A loaded simulator build of one kernels/*.cu: its library and its kernels' signatures."""

    source_name: str
    path: Path
    library: ctypes.CDLL
    kernels: dict[str, KernelSignature]

    def entry(self, name: str) -> int:
        """The address of kernel `name`'s trampoline."""
        getter = getattr(self.library, f"gqsim_entry_of_{name}")
        getter.restype = ctypes.c_void_p
        getter.argtypes = []
        return getter()

    def has_c_linkage(self, name: str) -> bool:
        """Whether the kernel is exported under its own name (extern "C"), as CuPy's get_function needs."""
        try:
            getattr(self.library, name)
        except AttributeError:
            return False
        return True


_lock = threading.Lock()
_modules: dict[tuple[str, str], SimulatorModule] = {}


def load(source_name: str, directory: Path | None = None) -> SimulatorModule:
    """The simulator build of kernels/<source_name>, compiled once per source version and loaded once."""
    directory = directory or kernels_dir()
    compiler = _compiler()
    key = (str(directory), source_name)
    with _lock:
        module = _modules.get(key)
        if module is not None:
            return module
    path, kernels = build(source_name, directory, compiler)
    library = ctypes.CDLL(str(path))
    library.gqsim_launch.restype = ctypes.c_int
    library.gqsim_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    module = SimulatorModule(source_name, path, library, {k.name: k for k in kernels})
    with _lock:
        return _modules.setdefault(key, module)


def build(source_name: str, directory: Path | None = None, compiler: str | None = None) -> \
        tuple[Path, tuple[KernelSignature, ...]]:
    """Compile (or find cached) the simulator library of kernels/<source_name>: (path, signatures)."""
    directory = directory or kernels_dir()
    compiler = compiler or _compiler()
    kernels = kernel_signatures(source_name, directory, compiler)
    target = cache_dir() / "cudasim" / f"{Path(source_name).stem}-{_digest(compiler, directory)}.so"
    if target.is_file():
        return target, kernels
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wrapper = Path(tmp) / f"{Path(source_name).stem}_sim.cpp"
        wrapper.write_text(_wrapper_source(source_name, kernels))
        partial = Path(tmp) / "module.so"
        command = [compiler, *CXX_FLAGS, "-I", str(directory), "-I", str(HERE), str(wrapper), str(RUNTIME),
                   "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SimulatorBuildError(f"the simulator build of {source_name} failed: {' '.join(command)}\n"
                                      f"{result.stderr[-6000:]}")
        os.replace(partial, target)  # whole files only: a concurrent process never loads a partial one
    return target, kernels
