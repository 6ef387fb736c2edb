"""Architecture programs: loaded once per stub, run with any member's weights, from several threads at once.

A program is a member artifact with its parameters and buffers replaced by empty tensors (written at
registration, model_repository/families.py). Loading one deserialises code, which holds the GIL for a long
time (~0.36 s for BERT-base TorchScript even onto the meta device); binding a member's mapped weights to it
deserialises nothing:

- **TorchScript**: `bind` builds the member its own module tree from *shallow copies* of the program's
  module objects (`copy.copy` of a `torch.ScriptModule` copies the object's attribute slots and shares its
  type, so the compiled methods and their executors are shared) and sets the member's tensors on the copies.
  No module is ever mutated once built, so the execute thread and the loader thread may both run members of
  one architecture at the same time. Measured (BERT-mini, 56 tensors): 0.2 ms per bind. The alternative,
  one module whose tensors are swapped in under a lock before each forward, costs that swap on every
  forward and serialises the forwards (benchmarks/families.py measures both).
- **torch.export**: the ExportedProgram's graph is functional: its inputs are the lifted parameters,
  buffers and constants (graph_signature.input_specs) followed by the user's inputs, so `bind` only orders
  the member's tensors; a forward is one call of the shared GraphModule with them. Nothing is swapped, so
  it is thread-safe without a lock (torch.func.functional_call instead reparametrises the module in place
  for the duration of each call).

Members of one architecture can also run as ONE forward over their stacked weights (`torch.func.vmap`):
see `Program.stacked`. Its outputs equal the per-member forwards to float rounding, not bit for bit
(a batched matmul sums in another order), which is why the pack runtime only does it where a knob says.

This file is copied into every pack next to model.py; it imports only torch and pack_weights.
"""
from __future__ import annotations

import copy
import threading
from pathlib import Path

import pack_weights

_BATCHED_SIZE_OPS = ("sym_size.int",)


class ProgramError(RuntimeError):
    """A program that cannot be loaded or bound; the message says which architecture and why."""


def _size(tensor, dim: int) -> int:
    """`aten.sym_size.int` for graphs run under vmap (which has no batching rule for it)."""
    return tensor.size(dim)


class BoundMember:
    """One member: its architecture's program with the member's tensors. Callable like the module it came
    from; `to(device)` moves it in place (as `nn.Module.to` does), which the GPU tier relies on."""

    def __init__(self, program: Program, host: dict[str, object]) -> None:
        self.program, self.host = program, host
        self.device = "cpu"
        self.tensors = host
        self.detached = {name: t.detach() for name, t in host.items()}  # for stacking, made once
        self.runner = program.bind(host)
        self.weight_bytes = sum(t.numel() * t.element_size() for t in host.values())

    def __call__(self, *inputs):
        return self.runner(*inputs)

    def parameters(self):
        return list(self.tensors.values())

    def buffers(self):
        return []

    def eval(self) -> BoundMember:
        return self

    def to(self, device) -> BoundMember:
        device = str(device)
        if device == self.device:
            return self
        if device == "cpu":
            self.tensors, self.runner, self.device = self.host, self.program.bind(self.host), "cpu"
        else:
            self.tensors = pack_weights.to_device(self.host, device)
            self.runner, self.device = self.program.on(device).bind(self.tensors), device
        self.detached = {name: t.detach() for name, t in self.tensors.items()}
        return self


class Program:
    """The loaded program of one architecture on one device; `ProgramCache` makes each once."""

    def __init__(self, architecture: str, path: Path, fmt: str, spec: list[dict], device: str = "cpu") -> None:
        self.architecture, self.path, self.format, self.spec, self.device = architecture, Path(path), fmt, spec, device
        self.names = [entry["name"] for entry in spec]
        self._on: dict[str, Program] = {device: self}
        self._on_lock = threading.Lock()

    def on(self, device: str) -> Program:
        """The same program on another device (loaded once per device)."""
        with self._on_lock:
            program = self._on.get(device)
            if program is None:
                program = load_program(self.architecture, self.path, self.format, self.spec, device)
                program._on = self._on
                self._on[device] = program
            return program

    def member(self, weights_path: Path) -> BoundMember:
        """A member from its weights file: mapped, checked against this architecture, bound."""
        return BoundMember(self, pack_weights.map_weights(weights_path, self.spec))

    def bind(self, tensors: dict[str, object]):
        raise NotImplementedError

    def stacked(self, stacked: dict[str, object], inputs: list):
        """One forward for M members: `stacked` holds each tensor with a leading member dimension, `inputs`
        each input as [M, rows, ...]; returns the outputs as [M, rows, ...] (a tuple where the module
        returns one).

        This is `torch.func.vmap(self._one_of_stack)` done with functorch's own primitives: the same batched
        tensors and batching rules (outputs identical), without vmap's Python wrapper, which cost more than the
        forwards it saved for small members (measured: 0.17 vs 0.07 ms for 32 tiny MLPs)."""
        import torch
        from torch.utils import _pytree

        try:
            from torch._C._functorch import (
                _add_batch_dim,
                _remove_batch_dim,
                _vmap_decrement_nesting,
                _vmap_increment_nesting,
            )
        except ImportError:  # another torch: the public API
            return torch.func.vmap(self._one_of_stack)(stacked, *inputs)
        size = inputs[0].shape[0]
        level = _vmap_increment_nesting(size, "error")
        try:
            batched = {name: _add_batch_dim(tensor, 0, level) for name, tensor in stacked.items()}
            result = self._one_of_stack(batched, *[_add_batch_dim(t, 0, level) for t in inputs])
            flat, spec = _pytree.tree_flatten(result)
            return _pytree.tree_unflatten([_remove_batch_dim(t, level, size, 0) for t in flat], spec)
        finally:
            _vmap_decrement_nesting()

    def _one_of_stack(self, tensors, *inputs):
        raise NotImplementedError


class TorchScriptProgram(Program):
    def __init__(self, architecture: str, path: Path, fmt: str, spec: list[dict], device: str = "cpu") -> None:
        import torch

        super().__init__(architecture, path, fmt, spec, device)
        try:
            self.module = torch.jit.load(str(path), map_location=device)
        except Exception as error:  # noqa: BLE001  a program that does not load is this architecture's problem
            raise ProgramError(f"architecture {architecture[:12]}: program {Path(path).name} does not load as "
                               f"TorchScript ({str(error).splitlines()[0][:200] if str(error) else error!r})") \
                from None
        self.module.eval()
        self.plan = _script_plan(self.module._c, set(self.names))

    def bind(self, tensors: dict[str, object]):
        return _bound_script(self.module._c, self.plan, tensors).forward

    def _one_of_stack(self, tensors, *inputs):
        return _bound_script(self.module._c, self.plan, tensors).forward(*inputs)


def _script_plan(module, names: set[str], prefix: str = "") -> list[tuple]:
    """Which attribute of which submodule gets which tensor: [(attribute, tensor name or None, subplan)]."""
    from torch._C import BufferDict, ModuleDict, ParameterDict

    plan = []
    for attribute, _ in list(ParameterDict(module).items()) + list(BufferDict(module).items()):
        full = prefix + attribute
        if full not in names:
            raise ProgramError(f"the program has a tensor '{full}' its architecture table does not list")
        plan.append((attribute, full, None))
    for attribute, child in ModuleDict(module).items():
        plan.append((attribute, None, _script_plan(child, names, f"{prefix}{attribute}.")))
    return plan


def _bound_script(module, plan: list[tuple], tensors: dict[str, object]):
    """A shallow copy of a ScriptModule's object tree carrying `tensors` (the program stays untouched)."""
    bound = copy.copy(module)
    for attribute, name, subplan in plan:
        if subplan is None:
            bound.setattr(attribute, tensors[name])
        else:
            bound.setattr(attribute, _bound_script(module.getattr(attribute), subplan, tensors))
    return bound


class ExportProgram(Program):
    def __init__(self, architecture: str, path: Path, fmt: str, spec: list[dict], device: str = "cpu") -> None:
        import torch

        super().__init__(architecture, path, fmt, spec, device)
        try:
            program = torch.export.load(str(path))
        except Exception as error:  # noqa: BLE001
            raise ProgramError(f"architecture {architecture[:12]}: program {Path(path).name} does not load as a "
                               f"torch.export program ({str(error).splitlines()[0][:200] if str(error) else error!r})"
                               ) from None
        signature = program.graph_signature
        self.graph = program.graph_module
        if device != "cpu":
            self.graph = self.graph.to(device)  # subgraphs and get_attr constants, if any
        order: list[tuple[str, str]] = []  # ("weight", name) | ("constant", name) | ("input", name)
        for spec_entry in signature.input_specs:
            kind = spec_entry.kind.name
            if kind in ("PARAMETER", "BUFFER"):
                order.append(("weight", spec_entry.target))
            elif kind == "CONSTANT_TENSOR":
                order.append(("constant", spec_entry.target))
            elif kind == "USER_INPUT":
                order.append(("input", spec_entry.arg.name))
            else:
                raise ProgramError(f"architecture {architecture[:12]}: graph input of kind {kind} is not supported")
        missing = [name for kind, name in order if kind == "weight" and name not in set(self.names)]
        if missing:
            raise ProgramError(f"architecture {architecture[:12]}: the program's inputs {missing[:4]} are not in "
                               "its architecture table")
        self.constants = {name: value.to(device) if hasattr(value, "to") else value
                          for name, value in program.constants.items()}
        self.order = order
        self.in_spec, self.out_spec = program.call_spec.in_spec, program.call_spec.out_spec
        placeholders = {node.name: node for node in self.graph.graph.find_nodes(op="placeholder")}
        self.user_placeholders = [placeholders[name] for kind, name in order if kind == "input"]
        self.range_constraints = program.range_constraints
        self._stackable = None
        self._stack_lock = threading.Lock()

    def _flat(self, tensors: dict[str, object]) -> list:
        return [tensors[name] if kind == "weight" else self.constants[name] for kind, name in self.order
                if kind != "input"]

    def bind(self, tensors: dict[str, object]):
        lifted = self._flat(tensors)
        return lambda *inputs: self._call(self.graph, lifted, inputs)

    def _call(self, graph, lifted: list, inputs: tuple, check: bool = True):
        from torch.utils import _pytree

        if check:
            _check_inputs(self, inputs)
        outputs = graph(*lifted, *inputs)
        return _pytree.tree_unflatten(list(outputs), self.out_spec)

    def _one_of_stack(self, tensors, *inputs):
        return self._call(self._graph_for_vmap(), self._flat(tensors), inputs, check=False)

    def _graph_for_vmap(self):
        """A copy of the graph whose `sym_size` calls read the size from the tensor (vmap has no batching
        rule for aten.sym_size.int); made once."""
        import torch

        with self._stack_lock:
            if self._stackable is None:
                graph = copy.deepcopy(self.graph)
                for node in graph.graph.nodes:
                    if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
                        node.target = _size
                graph.recompile()
                self._stackable = graph
            return self._stackable


def _check_inputs(program: ExportProgram, inputs: tuple) -> None:
    """The checks `ExportedProgram.module()` runs before each call: the inputs' structure and the ranges
    of their dynamic dimensions (e.g. a batch above the exported maximum is refused, not run)."""
    try:
        from torch._export.utils import _check_input_constraints_for_graph
        from torch.export._unlift import _check_inputs_match
    except ImportError:  # another torch: the runtime still checks shapes against the member's signature
        return
    flat = _check_inputs_match(tuple(inputs), {}, program.in_spec)
    _check_input_constraints_for_graph(program.user_placeholders, flat, program.range_constraints)


class ProgramCache:
    """Each architecture's program, loaded once per stub and charged once to the host budget: what loading it
    grew the process by (`measure`, e.g. the stub's RSS), or its file's size if more. A program no resident
    member uses is evicted only when the pack's budget asks for it (`evict_unused`).

    Loads happen in the pack's loader thread; readers (metrics, eviction) may be on any thread.
    """

    def __init__(self, measure) -> None:
        self.measure = measure
        self.lock = threading.Lock()
        self.slots: dict[str, tuple[Program, int]] = {}

    def get(self, architecture: str) -> Program | None:
        with self.lock:
            slot = self.slots.get(architecture)
        return slot[0] if slot else None

    def load(self, architecture: str, path: Path, fmt: str, spec: list[dict], file_bytes: int | None) -> Program:
        before = self.measure()
        program = load_program(architecture, path, fmt, spec)
        cost = max(self.measure() - before, file_bytes or 0)
        with self.lock:
            self.slots[architecture] = (program, cost)
        return program

    @property
    def charged(self) -> int:
        with self.lock:
            return sum(cost for _, cost in self.slots.values())

    def __len__(self) -> int:
        with self.lock:
            return len(self.slots)

    def evict_unused(self, used: set) -> int:
        """Drop every program not in `used`; returns the bytes they were charged."""
        with self.lock:
            unused = [a for a in self.slots if a not in used]
            return sum(self.slots.pop(a)[1] for a in unused)


def load_program(architecture: str, path: Path, fmt: str, spec: list[dict], device: str = "cpu") -> Program:
    kind = ExportProgram if fmt == "torch_export" else TorchScriptProgram
    return kind(architecture, path, fmt, spec, device)


def stack_tensors(members: list[BoundMember]) -> dict[str, object]:
    """Each tensor of the members' architecture with a leading member dimension (a copy: M x weights)."""
    import torch

    names = members[0].program.names
    return {name: torch.stack([m.detached[name] for m in members]) for name in names}
