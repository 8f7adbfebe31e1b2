"""Checks backend=vllm's contract against a vLLM release by reading its sources, not importing
them: vLLM cannot run (nor even import) on a machine without its CUDA stack, and the tests run
the adapter against tests/fakes/vllm. This reads the real wheel (a zip) with `ast` and checks
that every module, class, function, keyword argument and field the adapter uses is there with
that signature, that what the adapter must not pass is absent, and the facts the adapter
relies on (temperature limit, no GGUF loader). The same contract is checked against the fake,
so the fake cannot drift from the release either.

    python3 -m pip download --no-deps vllm==0.26.0 -d /tmp/vllm-wheel   # once, ~300 MB
    .venv/bin/python scripts/vllm_contract.py [path/to/vllm-0.26.0-*.whl]

Exit status 0: every check holds; 1: one failed (each printed); 2: no wheel to read.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "engine" / "backends" / "vllm.py"
FAKE = ROOT / "tests" / "fakes"
VERSION = "0.26.0"
DEFAULT_WHEELS = "/tmp/vllm-wheel/vllm-" + VERSION + "-*.whl"

# What the adapter uses, by the public name it imports. Methods: (name, the positional
# parameters it passes, in order, after self/cls; the keywords it passes).
CLASSES: dict[str, dict[str, list]] = {
    "vllm:EngineArgs": {
        "fields": ["model", "dtype", "tensor_parallel_size", "enforce_eager",
                   "gpu_memory_utilization", "max_model_len", "seed", "disable_log_stats",
                   "max_num_batched_tokens", "max_num_seqs", "enable_prefix_caching",
                   "device_ids", "load_format", "skip_tokenizer_init", "tokenizer"],
        "absent": ["swap_space", "max_seq_len_to_capture"],   # removed before 0.26
    },
    "vllm:LLMEngine": {
        "methods": [("from_engine_args", ["engine_args"], []),
                    ("add_request", ["request_id", "prompt", "params"], []),
                    ("step", [], []), ("has_unfinished_requests", [], []),
                    ("abort_request", ["request_ids"], []), ("get_tokenizer", [], [])],
        "fields": ["engine_core"],
    },
    "vllm:SamplingParams": {
        "fields": ["temperature", "top_p", "top_k", "seed", "max_tokens", "ignore_eos",
                   "detokenize"],
    },
    "vllm:TokensPrompt": {"fields": ["prompt_token_ids"]},
    "vllm.outputs:RequestOutput": {"fields": ["request_id", "outputs", "finished",
                                              "num_cached_tokens"]},
    "vllm.outputs:CompletionOutput": {"fields": ["token_ids"]},
    "vllm.platforms.interface:Platform": {"fields": ["device_type"]},
    # LLMEngine.engine_core in process (VLLM_ENABLE_V1_MULTIPROCESSING=0); the fake has its own
    "vllm.v1.engine.core_client:InprocClient": {"methods": [("shutdown", [], [])],
                                                "real_only": True},
}
LAZY_NAMES = ["vllm.platforms:current_platform"]   # a module __getattr__ resolves them
ENV_VARS = ["VLLM_ENABLE_V1_MULTIPROCESSING"]      # in vllm/envs.py
ABSENT_FILES = ["vllm/model_executor/model_loader/gguf_loader.py"]   # no GGUF loader
# The release's behaviour the adapter (and the fake) is built on: (file, pattern, what)
FACTS = [
    ("vllm/engine/arg_utils.py", r"if self\.enable_prefix_caching is None:\s+"
     r"self\.enable_prefix_caching = default_prefix_caching",
     "enable_prefix_caching=None takes the model's default (on for generation): pass False"),
    ("vllm/config/scheduler.py", r"DEFAULT_MAX_NUM_BATCHED_TOKENS: ClassVar\[int\] = 2048",
     "LLMEngine's default budget (no ENGINE_CONTEXT entry) is 2048 tokens: size it"),
    ("vllm/v1/engine/input_processor.py", r"elif prompt_len == max_prompt_len",
     "a prompt of max_model_len tokens is refused"),
    ("vllm/engine/arg_utils.py", r"return \[cvd_ids\[i\] for i in int_ids\]",
     "device_ids are indices within CUDA_VISIBLE_DEVICES (as torch's cuda:K)"),
    ("vllm/v1/executor/multiproc_executor.py", r"daemon=True",
     "tp workers are daemon processes (a daemonic parent cannot start them)"),
    ("vllm/v1/executor/multiproc_executor.py", r"def monitor_death_pipe",
     "tp workers watch a death pipe (they end with the engine's process)"),
]


class Tree:
    """A vLLM source tree: the wheel (zip) or a folder holding a `vllm` package (the fake)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.zip = zipfile.ZipFile(where) if where.endswith(".whl") else None
        self._cache: dict[str, ast.Module | None] = {}

    def text(self, path: str) -> str | None:
        if self.zip is not None:
            try:
                return self.zip.read(path).decode()
            except KeyError:
                return None
        p = Path(self.where) / path
        return p.read_text() if p.is_file() else None

    def module(self, dotted: str) -> tuple[str, ast.Module] | None:
        base = dotted.replace(".", "/")
        for path in (base + ".py", base + "/__init__.py"):
            if path not in self._cache:
                src = self.text(path)
                self._cache[path] = ast.parse(src) if src is not None else None
            if self._cache[path] is not None:
                return path, self._cache[path]
        return None


def _absolute(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    parts = module.split(".")
    keep = parts if is_pkg else parts[:-1]
    if level > 1:
        keep = keep[:len(keep) - (level - 1)]
    return ".".join(keep + ([name] if name else []))


def resolve(tree: Tree, module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
    """The definition `name` of `module` stands for, following re-exports, aliases and a
    lazy MODULE_ATTRS table (vllm/__init__.py)."""
    found = tree.module(module)
    if found is None or depth > 12:
        return None
    path, mod = found
    is_pkg = path.endswith("__init__.py")
    for node in mod.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
    for node in ast.walk(mod):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)):
            return resolve(tree, module, node.value.id, depth + 1)
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "MODULE_ATTRS" for t in node.targets):
            table = ast.literal_eval(node.value)
            if name in table:
                target, attr = table[name].split(":")
                dots = len(target) - len(target.lstrip("."))
                return resolve(tree, _absolute(module, is_pkg, dots, target.lstrip(".") or None)
                               if dots else target, attr, depth + 1)
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    src = (_absolute(module, is_pkg, node.level, node.module) if node.level
                           else node.module)
                    return resolve(tree, src, alias.name, depth + 1)
    return None


def members(tree: Tree, module: str, cls: ast.ClassDef) -> dict[str, ast.AST]:
    """Fields and methods of a class with its bases': class-body annotations and assignments,
    methods, and `self.x = ...` in any method."""
    out: dict[str, ast.AST] = {}
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else None
        hit = resolve(tree, module, name) if name else None
        if hit and isinstance(hit[1], ast.ClassDef):
            out.update(members(tree, hit[0], hit[1]))
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = node
            for sub in ast.walk(node):
                targets = (sub.targets if isinstance(sub, ast.Assign) else
                           [sub.target] if isinstance(sub, ast.AnnAssign) else [])
                for t in targets:
                    if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                            and t.value.id == "self"):
                        out.setdefault(t.attr, sub)
    return out


def signature_problem(fn: ast.FunctionDef, positional: list[str], keywords: list[str]) -> str:
    """Why a call passing `positional` (in order) and `keywords` would not bind ('' if it
    would), read from the definition's parameters."""
    args = fn.args
    pos = [a.arg for a in args.posonlyargs + args.args]
    if pos and pos[0] in ("self", "cls"):
        pos = pos[1:]
    if pos[:len(positional)] != positional:
        return f"positional parameters are ({', '.join(pos)}), the adapter passes ({', '.join(positional)})"
    named = set(pos) | {a.arg for a in args.kwonlyargs}
    missing = [k for k in keywords if k not in named and args.kwarg is None]
    if missing:
        return f"no keyword {', '.join(missing)}"
    n_defaults = len(args.defaults)
    required = pos[:len(pos) - n_defaults] if n_defaults else pos
    unpassed = [p for p in required if p not in positional and p not in keywords]
    return f"required parameter(s) {', '.join(unpassed)} not passed" if unpassed else ""


@dataclass
class Report:
    failed: int = 0
    passed: int = 0

    def check(self, ok: bool, what: str, why: str = "") -> None:
        if ok:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failed += 1
            print(f"  FAIL  {what}: {why}")


def adapter_keywords() -> dict[str, set[str]]:
    """The keyword names the adapter passes to EngineArgs and SamplingParams (call keywords,
    and the string keys of the `kw` dicts it spreads into them), read from its source."""
    tree = ast.parse(ADAPTER.read_text())
    out: dict[str, set[str]] = {"EngineArgs": set(), "SamplingParams": set()}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        calls = [c for c in ast.walk(fn) if isinstance(c, ast.Call)
                 and isinstance(c.func, ast.Name) and c.func.id in out]
        for call in calls:
            out[call.func.id] |= {k.arg for k in call.keywords if k.arg}
            if any(k.arg is None for k in call.keywords):   # **kw: the dict literals of kw
                for node in ast.walk(fn):
                    if isinstance(node, ast.Dict):
                        out[call.func.id] |= {k.value for k in node.keys
                                              if isinstance(k, ast.Constant)
                                              and isinstance(k.value, str)}
                    if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                            and isinstance(node.targets[0].slice, ast.Constant)):
                        out[call.func.id].add(node.targets[0].slice.value)
    return out


def check_tree(tree: Tree, report: Report, real: bool) -> None:
    classes: dict[str, dict[str, ast.AST]] = {}
    for public, want in CLASSES.items():
        if want.get("real_only") and not real:
            continue
        module, name = public.split(":")
        hit = resolve(tree, module, name)
        report.check(hit is not None and isinstance(hit[1], ast.ClassDef),
                     f"class {public}", "not found")
        if hit is None or not isinstance(hit[1], ast.ClassDef):
            continue
        have = members(tree, hit[0], hit[1])
        classes[name] = have
        for f in want.get("fields", []):
            report.check(f in have, f"{name}.{f}", f"no field {f} (in {hit[0]})")
        for f in want.get("absent", []):
            report.check(f not in have, f"{name} has no {f}",
                         "present: the fake must refuse it as the release does" if not real
                         else "present in the release")
        for meth, positional, keywords in want.get("methods", []):
            fn = have.get(meth)
            ok = isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            why = "not a method" if not ok else signature_problem(fn, positional, keywords)
            sig = ", ".join(positional + [f"{k}=" for k in keywords])
            report.check(ok and not why, f"{name}.{meth}({sig})", why)
    used = adapter_keywords()
    for cls, names in used.items():
        for k in sorted(names):
            report.check(k in classes.get(cls, {}), f"adapter passes {cls}({k}=)",
                         f"{cls} has no field {k}")
    for public in LAZY_NAMES:
        module, name = public.split(":")
        found = tree.module(module)
        lazy = found is not None and any(
            isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
            and any(isinstance(c, ast.Constant) and c.value == name for c in ast.walk(n))
            for n in found[1].body)
        report.check(lazy or resolve(tree, module, name) is not None, f"{public}", "not found")
    if not real:
        return
    envs = tree.text("vllm/envs.py") or ""
    for var in ENV_VARS:
        report.check(f'"{var}"' in envs, f"environment variable {var}", "not in vllm/envs.py")
    for path in ABSENT_FILES:
        report.check(tree.text(path) is None, f"no {path}", "present")
    for path, pattern, what in FACTS:
        report.check(re.search(pattern, tree.text(path) or "") is not None, what,
                     f"/{pattern}/ not in {path}")
    check_temperature(tree, report)


def check_temperature(tree: Tree, report: Report) -> None:
    """SamplingParams raises above llmtop's MAX_TEMPERATURE, and not below it."""
    from llmtop.engine.protocol import MAX_TEMPERATURE

    src = tree.text("vllm/sampling_params.py") or ""
    limits = {float(m) for m in re.findall(r"self\.temperature > ([0-9.]+):", src)}
    report.check(limits == {MAX_TEMPERATURE},
                 f"SamplingParams refuses temperature > {MAX_TEMPERATURE:g} (llmtop's limit)",
                 f"the release's limits: {sorted(limits) or 'none found'}")


def find_wheel(argv: list[str]) -> str | None:
    if argv:
        return argv[0]
    named = os.environ.get("LLMTOP_VLLM_WHEEL")
    if named:
        return named
    hits = sorted(glob.glob(DEFAULT_WHEELS))
    return hits[-1] if hits else None


def main(argv: list[str]) -> int:
    wheel = find_wheel(argv)
    if wheel is None or not Path(wheel).is_file():
        print(f"no vLLM {VERSION} wheel to read (looked for {wheel or DEFAULT_WHEELS}): "
              f"python3 -m pip download --no-deps vllm=={VERSION} -d /tmp/vllm-wheel")
        return 2
    report = Report()
    print(f"vLLM release: {Path(wheel).name}")
    check_tree(Tree(wheel), report, real=True)
    print(f"the fake: {FAKE / 'vllm'}")
    check_tree(Tree(str(FAKE)), report, real=False)
    print(f"{report.passed} checks hold, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
