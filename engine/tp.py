"""Tensor parallelism: N ranks that run the engine in lockstep, rank 0 the engine process.

How it works:
- Rank 0 is the engine process the EngineClient spawned. `Configure(tp=N)` makes it start N-1
  follower processes (spawn context, daemon) and all N join one torch.distributed group (gloo
  on CPU, nccl on CUDA) at tcp://127.0.0.1:<free port>. Which GPU each rank drives is
  engine/tp_placement.py's answer: the set `--gpus` names, else the best-linked set of the
  visible GPUs (profilers/gpu_set.py over the NVML / amdsmi link matrix), else, for an explicit
  `--device cuda:K`, cuda:K..cuda:K+N-1.
- Every rank loads the model sharded with transformers' tensor-parallel plan (the model's
  `base_model_tp_plan`): a checkpoint through `from_pretrained(distributed_config=...)`, which
  reads only this rank's slices; a synthetic model is built whole from the same seed on every
  rank (so its weights are exactly those of tp=1) and then sharded in place (`shard`).
- Rank 0 mirrors each Configure and Generate to the followers (`broadcast_object_list` of the
  protocol's plain dict over a gloo control group, which never touches the GPU). Followers run
  the same `Engine.configure` / `Engine.generate` with their events thrown away, so every
  forward pass, and so every collective, happens on every rank in the same order.
- Greedy ids, sampling (same seed, same gathered logits) and EOS are the same on every rank by
  construction; the one decision that is not, stopping early, is agreed once per decode step:
  rank 0 broadcasts its stop flag inside `should_stop` (only when N > 1), off the critical path.
- No orphans: each follower holds one end of a pipe whose other end only rank 0 holds, and
  exits the moment it reads EOF, however rank 0 went. Rank 0 exits (after one Error event) if a
  follower dies, since a process group with a dead member can only hang or fail.
- Multi-node: torchrun starts the ranks instead (`torchrun ... -m llmtop.torchrun run ...`):
  its rank 0 runs the normal llmtop command and the engine joins with env://; the others run
  the follower loop. See docs/tensor-parallel.md.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import torch
import torch.distributed as dist

from llmtop.engine.protocol import Configure, Generate, Shutdown, decode, encode

from . import catalogue
from . import spec as specs
from .tp_placement import EXTERNAL_ENV, _current_cuda, device_index

JOIN_TIMEOUT_S = 300          # followers import torch and transformers before they can join
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # one rank may compile minutes longer than another
IDLE_TIMEOUT = timedelta(days=365)          # followers wait on the control group between runs


# ---- the group of ranks, as each rank sees it -------------------------------------------------

class Ranks:
    """One rank alone (tp=1): every lockstep helper is a no-op, nothing is mirrored."""

    rank = 0
    size = 1
    closed = False

    def mirror(self, message: Any) -> None:
        """Rank 0: send a Configure / Generate to the followers before running it itself."""

    def agree(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        """`should_stop` as every rank's common decision: rank 0's flag, broadcast each step.

        The flag travels while the device computes the next step (an async gloo broadcast,
        waited for one step later), so no step waits on the network for it; the price is that
        a stop lands one token later than with one rank. Every rank calls this equally often
        (the conditions before it in generate.run are the same on every rank).
        """
        if self.size == 1:
            return should_stop
        control, rank = self.control, self.rank
        pending: list[tuple[Any, torch.Tensor]] = []  # the broadcast the previous step started

        def agreed() -> bool:
            stop = False
            if pending:
                work, flag = pending.pop()
                work.wait()
                stop = bool(flag[0])
            flag = torch.tensor([1 if rank == 0 and should_stop() else 0], dtype=torch.uint8)
            pending.append((dist.broadcast(flag, src=0, group=control, async_op=True), flag))
            return stop

        return agreed

    def devices(self, device: str) -> list[str]:
        """The device of every rank, rank 0 first (each rank's own word, gathered; hosts too
        when torchrun placed the ranks). Every rank calls this at the same point of a load."""
        if self.size == 1:
            return [device]
        mine = device
        if os.environ.get(EXTERNAL_ENV) == "1":
            mine = f"{socket.gethostname()}/{device}"
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, mine, group=self.control)
        return out

    def close(self) -> None:
        pass


class Leader(Ranks):
    """Rank 0 of a group of `size` ranks: it starts the followers (unless torchrun did)."""

    def __init__(self, size: int, devices: list[str], on_lost: Callable[[str], None]) -> None:
        self.size = size
        self.procs: list[Any] = []
        self.lifelines: list[Connection] = []
        self.closing = False
        self.threads = torch.get_num_threads()  # rank 0's own, restored when the group ends
        # rank 0 makes its GPU the current one; plain "cuda" means cuda:0 again after the group
        self.cuda_before = _current_cuda() if devices[0].startswith("cuda") else None
        backend = "nccl" if devices[0].startswith("cuda") else "gloo"
        self.placement = tuple(devices)
        if os.environ.get(EXTERNAL_ENV) == "1":
            # torchrun started every rank (any number of nodes); its env:// store joins them
            _join(0, size, "env://", backend, None)
        else:
            self._spawn(size, devices, backend)
            threading.Thread(target=self._watch, args=(on_lost,), name="tp-watch",
                             daemon=True).start()
        self.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)

    def _spawn(self, size: int, devices: list[str], backend: str) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        init = f"tcp://127.0.0.1:{_free_port()}"
        cuda = devices[0].startswith("cuda")
        local = [device_index(d) if cuda else None for d in devices]  # each rank's cuda:K
        first = local[0]
        # The engine process is itself a daemon (of the EngineClient), and multiprocessing lets
        # no daemon start children: lift the flag while the followers start. The followers are
        # daemons (ended at rank 0's exit) and hold a lifeline (they exit when rank 0 vanishes).
        me = mp.current_process()
        was_daemon = me.daemon
        me.daemon = False
        try:
            for r in range(1, size):
                ours, theirs = ctx.Pipe(duplex=True)
                p = ctx.Process(target=follower_main, name=f"llmtop-tp-rank{r}", daemon=True,
                                args=(r, size, init, backend, local[r], theirs))
                p.start()
                theirs.close()  # only the follower holds its end now: EOF = rank 0 is gone
                self.procs.append(p)
                self.lifelines.append(ours)
        finally:
            me.daemon = was_daemon
        # each follower says "joining" once its imports are done; a follower that dies first
        # (bad install, no GPU) fails the configure instead of hanging rank 0 in the rendezvous
        pending = set(self.lifelines)
        while pending:
            ready = wait(list(pending) + [p.sentinel for p in self.procs], timeout=JOIN_TIMEOUT_S)
            dead = [p for p in self.procs if p.sentinel in ready]
            if not ready or dead:
                self._kill()
                if not ready:
                    raise RuntimeError(f"tensor-parallel followers did not start in {JOIN_TIMEOUT_S} s")
                raise RuntimeError(f"tensor-parallel {dead[0].name} exited (code {dead[0].exitcode}) "
                                   "before joining; see engine.log")
            for conn in ready:
                conn.recv()
                pending.discard(conn)
        if first is not None:
            torch.cuda.set_device(first)
        _join(0, size, init, backend, first)

    def _watch(self, on_lost: Callable[[str], None]) -> None:
        """A follower that dies outside close() takes the group down: say so, then end rank 0."""
        ready = wait([p.sentinel for p in self.procs])
        if self.closing:
            return
        dead = next(p for p in self.procs if p.sentinel in ready)
        dead.join(0.1)
        code = dead.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        try:
            on_lost(f"tensor-parallel {dead.name} died ({how}); the engine stops with it")
        finally:
            os._exit(1)

    def mirror(self, message: Any) -> None:
        dist.broadcast_object_list([encode(message)], src=0, group=self.control)

    def close(self) -> None:
        """Ends every follower (Shutdown in order, then signals for stragglers) and the group."""
        if self.closed:
            return
        self.closed = self.closing = True
        try:
            self.mirror(Shutdown())
        except Exception:  # a follower already gone: the kill below still ends the others
            pass
        for p in self.procs:
            p.join(10)
        self._kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(self.threads)
        if self.cuda_before is not None:
            torch.cuda.set_device(self.cuda_before)
        if os.environ.get(EXTERNAL_ENV) != "1":  # what _join set for transformers' mesh
            for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                os.environ.pop(name, None)

    def _kill(self) -> None:
        self.closing = True
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        for conn in self.lifelines:
            conn.close()


class Follower(Ranks):
    """Rank r > 0: receives rank 0's commands, runs them, reports nothing."""

    def __init__(self, rank: int, size: int, local_index: int | None) -> None:
        self.rank = rank
        self.size = size
        self.local_index = local_index   # this rank's GPU, None on CPU
        self.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)

    def receive(self) -> Any:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        message = decode(box[0])
        if isinstance(message, Configure) and self.local_index is not None:
            message.device = f"cuda:{self.local_index}"   # rank 0 placed us on this GPU
        return message


def resize(ranks: Ranks, size: int, devices: list[str], on_lost: Callable[[str], None]) -> Ranks:
    """Rank 0: the group for a new configuration (followers started or ended to match): a
    group on other GPUs is a new group."""
    if isinstance(ranks, Follower):
        return ranks
    same_place = (size == 1 or os.environ.get(EXTERNAL_ENV) == "1"   # torchrun placed them
                  or getattr(ranks, "placement", None) == tuple(devices))
    if ranks.size == size and not ranks.closed and same_place:
        return ranks
    ranks.close()
    return Ranks() if size == 1 else Leader(size, devices, on_lost)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, size: int, init: str, backend: str, local_index: int | None) -> None:
    if backend == "gloo":  # CPU ranks share the cores: N ranks x all threads would oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    # transformers binds each rank to its accelerator through LOCAL_RANK (and reads the others)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(local_index if local_index is not None else
                                     os.environ.get("LOCAL_RANK", rank)))
    kwargs: dict[str, Any] = {}
    if backend == "nccl" and local_index is not None:
        kwargs["device_id"] = torch.device("cuda", local_index)
    if init == "env://":
        dist.init_process_group(backend, init_method=init, timeout=COLLECTIVE_TIMEOUT, **kwargs)
    else:
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=size,
                                timeout=COLLECTIVE_TIMEOUT, **kwargs)


# ---- sharding a model that is already built ----------------------------------------------------

def shard(model: Any, size: int) -> Any:
    """Applies the model's tensor-parallel plan to a model whose full weights every rank holds.

    The same two steps `from_pretrained(distributed_config=...)` takes, with real weights in
    place of meta tensors: every parameter becomes a DTensor whose local part is this rank's
    slice, cut locally (`src_data_rank=None`: no communication, so the weights must already be
    identical on every rank, as the synthetic builder's fixed seed makes them).
    """
    from transformers import DistributedConfig

    cls = type(model)
    config, _, mesh = cls.prepare_distribute_model(DistributedConfig(tp_size=size))
    return cls.maybe_distribute_model(model, config, mesh)


def from_pretrained_kwargs(size: int) -> dict[str, Any]:
    """What `from_pretrained` needs to load only this rank's shards (nothing for tp=1)."""
    if size == 1:
        return {}
    from transformers import DistributedConfig

    return {"distributed_config": DistributedConfig(tp_size=size)}


# ---- the follower process ---------------------------------------------------------------------

def follower_main(rank: int, size: int, init: str, backend: str, local_index: int | None,
                  lifeline: Connection | None) -> None:
    """A follower's whole life: join, then run rank 0's commands until Shutdown (or rank 0 dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's; rank 0 ends us in order
    if lifeline is not None:
        def hold() -> None:
            try:
                while True:
                    lifeline.recv()
            except (EOFError, OSError):
                os._exit(0)

        threading.Thread(target=hold, name="tp-lifeline", daemon=True).start()
    from .runner import Engine

    if local_index is not None:
        torch.cuda.set_device(local_index)
    if lifeline is not None:
        lifeline.send("joining")
    _join(rank, size, init, backend, local_index)
    ranks = Follower(rank, size, local_index)
    engine = Engine(lambda event: None, threading.Event(), ranks)
    while True:
        message = ranks.receive()
        if isinstance(message, Shutdown):
            break
        try:
            if isinstance(message, Configure):
                engine.configure(message)
            elif isinstance(message, Generate):
                engine.generate(message)
        except (specs.ModelSpecError, catalogue.OptionError):
            pass  # rank 0 met the same error at the same point and reports it
        except Exception:
            traceback.print_exc()
    dist.destroy_process_group()


def follower_from_env() -> None:
    """A follower rank started by torchrun (llmtop/torchrun.py): its rank and group from env://."""
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    follower_main(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://",
                  "nccl" if cuda else "gloo", local if cuda else None, None)
