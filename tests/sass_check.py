"""Finds fused multiply-adds in SASS (the GPU's machine code, as `nvdisasm` prints a CUBIN) that are
not part of the compiler's IEEE division, reciprocal and square-root expansions.

The kernels are compiled with --fmad=false, yet their SASS holds thousands of FFMA: `div.rn`, `rcp.rn`
and `sqrt.rn` expand into a hardware estimate (MUFU.RCP, MUFU.RSQ) refined by Newton steps that are
FFMAs by design and still give the correctly rounded result; rare operands (huge, tiny, subnormal)
branch to a slow-path subroutine that does the same on scaled values with directed rounding
(FFMA.RM/.RP/.RZ). Any other fused multiply-add rounds once where ggml's C rounds twice.

nvdisasm (rather than `cuobjdump -sass`) because it names what a kernel calls: CUDA's own slow paths
are `$__internal_<n>_$__cuda_sm<..>_{div,rcp,sqrt}_rn_..._f32_slowpath`, while a function of the
source that the compiler did not inline keeps its own name (`$kernel$_Z5fusedfff`) and is checked
like the kernel. Each kernel is analyzed over its control-flow graph (a must-analysis: a register
keeps a mark into a block only if it has it on every path there) with three marks:

- *estimate*: written by MUFU.RCP/MUFU.RSQ, by a sanctioned FFMA step, or by a move, negation or
  multiply (FMUL) of an estimate;
- *input*: the operand of a MUFU, or the dividend or divisor of an FCHK (the division's range
  check; also when the check is scheduled after the steps, later in the same block);
- *constant*: a register loaded with an immediate, or computed by an FFMA of constants only (a
  division by a constant starts from the constant's reciprocal, folded into an immediate).

An FFMA (any rounding suffix, or FFMA32I) passes when
- its addend is RZ: a*b + 0 rounds once, a multiply (the expansions compute quotients and scale
  by 2^64 so); its result is an estimate when a multiplicand is an estimate or a constant;
- all its operands are constants or immediates (the reciprocal of a constant divisor);
- it is a refinement step: one multiplicand is an estimate and the other an estimate (then the
  addend is an estimate or an input: r + r*e, sqrt's x - s*s), an input (the addend is anything but
  an unmarked register: 1 - b*r, a - b*q with a constant a), or a constant divisor (the addend is an
  estimate or an input: a - 127*q). So `fmaf(a / b, c, d)` with c, d from elsewhere is flagged;
- it lies in one of CUDA's float slow paths (by name, above).

`HFMA2 Rd, -RZ, RZ, imm, imm` (0 * 0 + constant) is how the compiler materializes a constant. DFMA
never passes, nor does any other FFMA, FFMA32I or HFMA2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gpuquant.hostkernels import cache_dir, kernels_dir

FMA_OPCODES = ("FFMA", "FFMA32I", "HFMA2", "DFMA")
_SINGLE_FMA = ("FFMA", "FFMA32I")
_ESTIMATES = ("MUFU.RCP", "MUFU.RSQ")
_NO_DEST = ("ST", "STG", "STS", "STL", "RED", "BRA", "BSSY", "BSYNC", "BREAK", "CALL", "RET", "EXIT", "BAR",
            "NOP", "FCHK", "WARPSYNC")
_ENDS_BLOCK = ("BRA", "CALL", "RET", "EXIT", "BRX", "JMX")

_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_ENTRY = re.compile(r'^\s*\.other\s+([^,\s]+),@"STO_CUDA_ENTRY')
_FUNCTION_SYMBOL = re.compile(r"^\s*\.type\s+([^,\s]+),@function")
_LABEL = re.compile(r"^([.$\w][^\s:]*):\s*$")
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_TARGET = re.compile(r"`\(([^)]+)\)")
_REGISTER = re.compile(r"^-?\|?(R\d+|RZ)\|?(?:\.reuse|\.H[01](?:_H[01])?)*$")
# CUDA's IEEE float slow paths: $__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath, ..._sm20_rcp_rn_f32_...
SLOW_PATH = re.compile(r"^\$__internal_\d+_\$__cuda_sm\w+?_(?:div|rcp|sqrt)_rn_(?:\w+_)?f32_slowpath$")


@dataclass
class Instruction:
    address: int
    opcode: str
    operands: list[str]
    predicated: bool
    base: str = ""  # the opcode without suffixes
    dests: tuple[str, ...] = ()  # the registers it writes
    sources: tuple[str, ...] = ()  # the registers it reads (but RZ)

    target: str | None = None  # the label or function a branch or call goes to

    def __post_init__(self) -> None:
        self.base = self.opcode.split(".")[0]
        self.dests = tuple(_dest_registers(self))
        self.sources = tuple(r for r in map(_register, self.operands[1:]) if r and r != "RZ")
        m = _TARGET.search(self.operands[-1]) if self.operands else None
        self.target = m.group(1) if m else None

    def text(self) -> str:
        return f"/*{self.address:04x}*/ {self.opcode} {', '.join(self.operands)}"


@dataclass
class FunctionReport:
    """One function's fused multiply-adds: counts by opcode, the sanctioned ones by reason, the rest."""

    name: str
    fma: Counter = field(default_factory=Counter)  # opcode with its suffixes -> count
    sanctioned: Counter = field(default_factory=Counter)  # reason -> count
    flagged: list[str] = field(default_factory=list)
    slow_paths: int = 0
    instructions: int = 0

    @property
    def total(self) -> int:
        return sum(self.fma.values())


@dataclass
class Kernel:
    """One .text section of a CUBIN: a kernel (or a device function) with the subroutines it calls."""

    name: str
    code: list[Instruction] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # label -> index of the instruction it marks
    functions: list[str] = field(default_factory=list)  # the function symbols, the section's own first
    entry: bool = False  # a __global__ function (STO_CUDA_ENTRY): a kernel that can be launched

    def function_spans(self) -> dict[str, tuple[int, int]]:
        """{function symbol: [first, end) instruction indices}."""
        starts = sorted((self.labels.get(f, len(self.code)), f) for f in self.functions)
        ends = [s for s, _ in starts[1:]] + [len(self.code)]
        return {f: (s, e) for (s, f), e in zip(starts, ends, strict=True)}


def parse(sass: str) -> dict[str, Kernel]:
    """`nvdisasm -c` text -> {section name: Kernel}."""
    kernels: dict[str, Kernel] = {}
    current: Kernel | None = None
    for line in sass.splitlines():
        m = _INSTRUCTION.search(line)
        if m:
            if current is not None:
                operands = [o.strip() for o in m.group(4).split(",") if o.strip()]
                current.code.append(Instruction(int(m.group(1), 16), m.group(3), operands, bool(m.group(2))))
            continue
        m = _SECTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        if current is None:
            continue
        m = _ENTRY.match(line)
        if m and m.group(1) == current.name:
            current.entry = True
        m = _FUNCTION_SYMBOL.match(line)
        if m:
            current.functions.append(m.group(1))
        m = _LABEL.match(line)
        if m:
            current.labels[m.group(1)] = len(current.code)
    return kernels


def analyze(sass: str) -> dict[str, FunctionReport]:
    """{kernel: report} for every kernel (__global__ function) of an `nvdisasm -c` listing."""
    return {name: analyze_kernel(kernel) for name, kernel in parse(sass).items() if kernel.entry}


# ---------------------------------------------------------------- operands (the same strings recur: cached)


@functools.cache
def _register(operand: str) -> str | None:
    m = _REGISTER.match(operand)
    return m.group(1) if m else None


@functools.cache
def _is_zero(operand: str) -> bool:
    return _register(operand) == "RZ" or operand in ("0", "+0", "-0", "0x0")


@functools.cache
def _is_immediate(operand: str) -> bool:
    if _register(operand) is not None or operand.lstrip("-|!").startswith(("c[", "UR", "P", "SR", "desc", "[")):
        return False
    return bool(re.match(r"^-?(?:0x[0-9a-f]+|[0-9.]+(?:e[+-]?\d+)?|\+?INF|\+?QNAN)\s*$", operand, re.IGNORECASE))


def _dest_registers(ins: Instruction) -> list[str]:
    if ins.base in _NO_DEST or not ins.operands:
        return []
    reg = _register(ins.operands[0])
    if reg is None or reg == "RZ":
        return []
    width = 4 if ".128" in ins.opcode else 2 if (".64" in ins.opcode or ".WIDE" in ins.opcode) else 1
    return [f"R{int(reg[1:]) + i}" for i in range(width)]


# ---------------------------------------------------------------- marks

_Marks = tuple[frozenset, frozenset, frozenset]  # (estimates, inputs, constants)
_EMPTY: _Marks = (frozenset(), frozenset(), frozenset())
_NONE: frozenset = frozenset()
_MARKING = _SINGLE_FMA + ("MUFU", "FCHK", "MOV", "FADD", "FMUL", "IMAD", "HFMA2", "CALL")


def _kind(operand: str, estimates: set | frozenset, inputs: set | frozenset, constants: set | frozenset) -> str:
    """E estimate, I input, C constant (register or immediate), Z zero, ? anything else."""
    if _is_zero(operand):
        return "Z"
    reg = _register(operand)
    if reg is None:
        return "C" if _is_immediate(operand) else "?"
    if reg in estimates:
        return "E"
    if reg in inputs:
        return "I"
    return "C" if reg in constants else "?"


def _fma_kinds(ins: Instruction, marks: tuple) -> tuple[str, str, str]:
    a, b, c = (ins.operands[1:4] + ["?", "?", "?"])[:3]
    return _kind(a, *marks), _kind(b, *marks), _kind(c, *marks)


def _classify_ffma(kinds: tuple[str, str, str]) -> str | None:
    """The reason an FFMA with these operand kinds belongs to an expansion, or None."""
    m1, m2, addend = kinds
    if addend == "Z":
        return "multiply"
    if all(k == "C" for k in kinds):
        return "constant divisor"
    if "E" not in (m1, m2):
        return None
    other = m2 if m1 == "E" else m1
    allowed = {"E": ("E", "I"), "I": ("E", "I", "C"), "C": ("E", "I")}.get(other, ())
    return "refinement" if addend in allowed else None


def _transfer(ins: Instruction, marks: tuple[set, set, set], pending: frozenset = frozenset()) -> None:
    """Updates the marks (in place) past one instruction (a predicated one as if it ran: the expansions
    guard whole sequences with one predicate). pending: inputs that a later FCHK checks."""
    estimates, inputs, constants = marks
    if ins.base not in _MARKING:
        for reg in ins.dests:  # the common case: an instruction that only clears marks
            estimates.discard(reg)
            inputs.discard(reg)
            constants.discard(reg)
        return
    if ins.base == "CALL":
        for s in marks:  # the callee may write any register
            s.clear()
        return
    is_estimate = is_input = is_constant = False
    if ins.base in _SINGLE_FMA:
        kinds = _fma_kinds(ins, (estimates, inputs | pending, constants))
        reason = _classify_ffma(kinds)
        if reason == "multiply":
            is_estimate = "E" in kinds[:2] or "C" in kinds[:2]
        elif reason == "constant divisor":
            is_constant = True
        else:
            is_estimate = reason is not None
    elif ins.opcode.startswith(_ESTIMATES):
        is_estimate = True
        inputs.update(ins.sources)
    elif ins.base == "FCHK":
        inputs.update(ins.sources)
    elif ins.base in ("MOV", "FADD", "FMUL") or ins.opcode.startswith("IMAD.MOV"):
        # A move (IMAD.MOV x = 0 * 0 + x) or a negation (x + -0) keeps the marks of x.
        values = [o for o in ins.operands[1:] if not _is_zero(o)] if ins.base != "FMUL" else ins.operands[1:]
        kinds = [_kind(o, estimates, inputs, constants) for o in values]
        is_estimate = "E" in kinds
        is_input = ins.base != "FMUL" and kinds == ["I"]
        is_constant = ins.base != "FMUL" and kinds == ["C"]
    elif ins.base == "HFMA2":
        is_constant = _is_constant_hfma2(ins)
    for reg in ins.dests:
        estimates.discard(reg)
        inputs.discard(reg)
        constants.discard(reg)
        if is_estimate:
            estimates.add(reg)
        elif is_input:
            inputs.add(reg)
        elif is_constant:
            constants.add(reg)


def _is_constant_hfma2(ins: Instruction) -> bool:
    a, b = (ins.operands[1:3] + ["", ""])[:2]
    return _register(a) == "RZ" and _register(b) == "RZ" and all(_is_immediate(o) for o in ins.operands[3:])


def _pending_checks(code: list[Instruction], start: int, end: int) -> list[frozenset]:
    """For each instruction of a block, the registers whose current value a later FCHK of the block
    checks: the dividend and divisor of a division whose check is scheduled after some of its steps."""
    pending: list[frozenset] = [_NONE] * (end - start)
    live: set[str] = set()
    for i in range(end - 1, start - 1, -1):
        live.difference_update(code[i].dests)
        pending[i - start] = frozenset(live) if live else _NONE
        if code[i].base == "FCHK":
            live.update(code[i].sources)
    return pending


# ---------------------------------------------------------------- control flow


def _blocks(kernel: Kernel, starts: set[int]) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """Basic blocks as [first, end) index ranges, and each block's successors. starts: where
    functions begin."""
    code, labels = kernel.code, kernel.labels
    leaders = {0} | starts
    for i, ins in enumerate(code):
        if ins.base in _ENDS_BLOCK:
            leaders.add(i + 1)
        if ins.target is not None and ins.target in labels:
            leaders.add(labels[ins.target])
    bounds = sorted(i for i in leaders if i < len(code))
    blocks = list(zip(bounds, bounds[1:] + [len(code)], strict=True))
    block_at = {s: b for b, (s, _) in enumerate(blocks)}
    successors: list[list[int]] = []
    for b, (_, end) in enumerate(blocks):
        last = code[end - 1]
        succ = []
        if last.base == "BRA" and labels.get(last.target or "", len(code)) < len(code):
            succ.append(block_at[labels[last.target]])
        if (last.base not in ("BRA", "RET", "EXIT", "BRX", "JMX") or last.predicated) and end < len(code):
            succ.append(b + 1)  # a CALL returns to the next instruction
        successors.append(succ)
    return blocks, successors


def analyze_kernel(kernel: Kernel) -> FunctionReport:
    code = kernel.code
    report = FunctionReport(kernel.name, instructions=len(code))
    in_slow_path = [False] * len(code)
    spans = kernel.function_spans()
    for name, (first, end) in spans.items():
        if SLOW_PATH.match(name):
            report.slow_paths += 1
            in_slow_path[first:end] = [True] * (end - first)

    # Entry points start with no marks: the kernel's, each function's, each call's target (the compiler
    # also calls unnamed blocks, e.g. an integer division), and with an indirect branch every block.
    starts = {first for first, _ in spans.values()}
    starts |= {kernel.labels[i.target] for i in code if i.base == "CALL" and i.target in kernel.labels}
    blocks, successors = _blocks(kernel, starts)
    pending = [_pending_checks(code, start, end) for start, end in blocks]
    indirect = any(ins.base in ("BRX", "JMX") for ins in code)
    entry: list[_Marks | None] = [_EMPTY if indirect or s in starts or s == 0 else None for s, _ in blocks]
    work = [b for b, marks in enumerate(entry) if marks is not None]
    while work:
        b = work.pop()
        start, end = blocks[b]
        state = tuple(set(s) for s in entry[b])
        for i in range(start, end):
            _transfer(code[i], state, pending[b][i - start])
        marks = tuple(frozenset(s) for s in state)
        for n in successors[b]:
            old = entry[n]
            new = marks if old is None else (old[0] & marks[0], old[1] & marks[1], old[2] & marks[2])
            if new != old and not (indirect or blocks[n][0] in starts):
                entry[n] = new
                work.append(n)

    for b, (start, end) in enumerate(blocks):
        state = tuple(set(s) for s in (entry[b] or _EMPTY))  # None: no path reaches the block
        for i in range(start, end):
            ins, checked = code[i], pending[b][i - start]
            if ins.base in FMA_OPCODES:
                report.fma[ins.opcode] += 1
                reason = _sanction(ins, (state[0], state[1] | checked, state[2]), in_slow_path[i])
                if reason is None:
                    report.flagged.append(ins.text())
                else:
                    report.sanctioned[reason] += 1
            _transfer(ins, state, checked)
    return report


def _sanction(ins: Instruction, marks: tuple, in_slow_path: bool) -> str | None:
    """Why this fused multiply-add is not arithmetic of the source's, or None."""
    if ins.base == "DFMA":
        return None
    if ins.base == "HFMA2":
        return "constant" if _is_constant_hfma2(ins) else None
    if in_slow_path:
        return "slow path"
    return _classify_ffma(_fma_kinds(ins, marks))


# ---------------------------------------------------------------- tools: nvdisasm, PTX entry names

_NVDISASM_WHEEL_PATHS = ("nvidia/cu13/bin/nvdisasm", "nvidia/cuda_nvdisasm/bin/nvdisasm")


def find_nvdisasm() -> str | None:
    """nvdisasm from the PyPI wheel nvidia-cuda-nvdisasm, else from PATH; None when there is none.
    pip may install the wheel's binary without its executable bit: then a copy in the cache folder
    is made executable (site-packages may not be ours to change)."""
    for d in [*site.getsitepackages(), site.getusersitepackages(), *sys.path]:
        for relative in _NVDISASM_WHEEL_PATHS:
            path = Path(d) / relative
            if path.is_file():
                return str(path) if os.access(path, os.X_OK) else _executable_copy(path)
    return shutil.which("nvdisasm")


def _executable_copy(path: Path) -> str | None:
    data = path.read_bytes()
    target = cache_dir() / "bin" / f"{path.name}-{hashlib.sha256(data).hexdigest()[:16]}"
    if not (target.is_file() and os.access(target, os.X_OK)):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=target.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(partial, 0o755)
            os.replace(partial, target)
        except OSError:
            return None
    return str(target)


def disassemble(cubin: bytes, nvdisasm: str) -> str:
    """`nvdisasm -c` (the code sections) of a CUBIN."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "module.cubin"
        path.write_bytes(cubin)
        result = subprocess.run([nvdisasm, "-c", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {result.stderr.strip()}")
    return result.stdout


def sass_target(sass: str) -> str | None:
    """The architecture a listing is for ("sm_90"), from nvdisasm's `.target sm_XX` line."""
    m = re.search(r"^\s*\.target\s+(sm_\w+)", sass, re.MULTILINE)
    return m.group(1) if m else None


def ptx_entries(ptx: str) -> list[str]:
    """The kernels (.entry) that a PTX file defines, by the names the driver looks them up by."""
    return re.findall(r"^\s*\.(?:visible\s+|weak\s+)?\.entry\s+([\w$]+)\s*\(", ptx, re.MULTILINE)


def source_name(symbol: str) -> str:
    """The source's name of a kernel: an Itanium-mangled C++ name (_Z<length><name>..., _ZN...E)
    gives its last identifier, an extern "C" name is itself."""
    m = re.match(r"_Z(N(?:\d+[A-Za-z_]\w*)+|\d+[A-Za-z_]\w*)", symbol)
    if not m:
        return symbol
    names, rest = [], m.group(1).lstrip("N")
    while rest and rest[0].isdigit():
        length = re.match(r"\d+", rest).group(0)
        names.append(rest[len(length) : len(length) + int(length)])
        rest = rest[len(length) + int(length) :]
    return names[-1] if names else symbol


# ---------------------------------------------------------------- analysis of a CUBIN, cached


@dataclass
class CubinReport:
    target: str | None  # e.g. sm_90
    functions: dict[str, FunctionReport]  # by kernel: the CUBIN's entry points (STO_CUDA_ENTRY)


def analyze_cubin(cubin: bytes, nvdisasm: str, cache: Path | None = None) -> CubinReport:
    """The analysis of a CUBIN's SASS, cached (in cache, default hostkernels.cache_dir()/nvrtc-sass) by
    the CUBIN, this analyzer's source and the nvdisasm: a disassembly costs 0.4 s at least, and a
    module's analysis seconds, and an unchanged tree must cost nothing."""
    key = hashlib.sha256(cubin + Path(__file__).read_bytes() + nvdisasm.encode()).hexdigest()[:32]
    path = (cache or cache_dir() / "nvrtc-sass") / f"{key}.json"
    try:
        data = json.loads(path.read_text())
        return CubinReport(data["target"], {
            name: FunctionReport(name, Counter(r["fma"]), Counter(r["sanctioned"]), r["flagged"], r["slow_paths"],
                                 r["instructions"])
            for name, r in data["functions"].items()
        })
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sass = disassemble(cubin, nvdisasm)
    report = CubinReport(sass_target(sass), analyze(sass))
    data = {"target": report.target, "functions": {
        name: {"fma": r.fma, "sanctioned": r.sanctioned, "flagged": r.flagged, "slow_paths": r.slow_paths,
               "instructions": r.instructions}
        for name, r in report.functions.items()
    }}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(partial, path)
    except OSError:
        pass
    return report


def summary(reports: dict[str, FunctionReport]) -> str:
    """One line per kernel: its fused multiply-adds, sanctioned by reason, and flagged."""
    lines = []
    for name, r in sorted(reports.items()):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.sanctioned.items()))
        lines.append(f"{name}: {r.total} FMA ({reasons or 'none'}); flagged {len(r.flagged)}")
        lines += [f"    {text}" for text in r.flagged[:20]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """python tests/sass_check.py [sm_80 sm_90 ...]: the per-kernel counts of every kernels/*.cu."""
    from gpuquant.backends.cupy import compile as cupy_compile

    nvdisasm = find_nvdisasm()
    if nvdisasm is None:
        print("nvdisasm not found (pip install nvidia-cuda-nvdisasm)")
        return 2
    flagged = 0
    for source in sorted(p.name for p in kernels_dir().glob("*.cu")):
        for arch in argv or ["sm_80", "sm_90"]:
            report = analyze_cubin(cupy_compile.compile_module(source, arch), nvdisasm)
            functions = report.functions.values()
            total = sum(r.total for r in functions)
            n_flagged = sum(len(r.flagged) for r in functions)
            by_opcode = sum((r.fma for r in functions), Counter())
            print(f"== {source} {arch}: {len(report.functions)} kernels, {total} FMA "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(by_opcode.items()))}), "
                  f"{total - n_flagged} sanctioned, {n_flagged} flagged")
            print(summary(report.functions))
            flagged += n_flagged
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(sys.argv[1:]))
