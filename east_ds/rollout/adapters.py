"""LoRA adapters in the vLLM engines (training.lora): the engine's and its workers' adapter methods.

An engine built with LoRA enabled (device_plan.engine_kwargs) keeps its base weights for the whole run and serves
one adapter, the policy's: `LLMEngine.lora_request` names it, and the generation path passes it with every
request (None: the base model, as in iteration 1 and the starting model's evaluation). Loading a new adapter
replaces the old one in its slot (vLLM 0.32's `load_inplace`, vllm/lora/worker_manager.py: an adapter id already
loaded is read again only with that flag), then the prefix cache is reset, as after every weight update.

    load_adapter(path)                    from a peft directory the engine can read (`rollout.weight_sync: path`)
    load_adapter_from_refs(refs, config)  from Ray object refs of tensor buckets (object_store): written as a
                                          peft directory on this node (/dev/shm when it has room), then loaded
    load_adapter_broadcast(metas, config) every worker receives the tensors from trainer rank 0 (broadcast),
                                          writes its own peft directory and loads it

The directory an adapter was loaded from stays until the next adapter is loaded (vLLM reads it again if the
adapter ever leaves its cache). vLLM is imported inside the functions (`lora_request`), as vllm_engine.py does at
the top: these are that module's engine and worker classes' methods, kept apart by size.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

ADAPTER_NAME = "east_ds_policy"  # the one adapter an engine serves; replaced in place by every update
ADAPTER_ID = 1


def lora_request(path: str, load_inplace: bool = False):
    """vLLM's LoRARequest for the policy's adapter at `path`. `load_inplace`: read it even though an adapter of
    the same id is loaded (an update); requests carry the flag off, so a step never reloads it."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=ADAPTER_NAME, lora_int_id=ADAPTER_ID, lora_path=str(path),
                       load_inplace=load_inplace)


class AdapterWorkerMethods:
    """Mixed into vllm_engine.EastWorkerExtension (so into vLLM's worker class): `self` is a vLLM worker."""

    def east_adapter_from_broadcast(self, buckets_meta: list, config: dict, directory: str) -> None:
        """Receive the adapter's tensors from rank 0 of the weight-broadcast group this worker joined
        (`east_init_weight_group`), write them with `config` as a peft directory of its own under `directory`,
        and load it in place of the current adapter (the worker's own `add_lora`, what vLLM's engine core calls
        on every worker)."""
        import torch

        from east_ds.cluster.weight_sync import write_adapter_dir

        comm = self._east_weight_comm
        tensors = [(name, comm.broadcast(torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=comm.device)))
                   for meta in buckets_meta for name, dtype, shape in meta]
        comm.finish()
        self._east_weight_comm = None  # one group per update
        path = write_adapter_dir(tensors, config, Path(directory) / f"worker_{self.rank}")
        self.add_lora(lora_request(path, load_inplace=True))


class AdapterEngineMethods:
    """Mixed into vllm_engine.LLMEngine: `self.llm` is the engine's vllm.LLM, `self.engine_index` its index."""

    lora_request = None  # the adapter requests go through; None: the base weights
    _adapter_dir: str | None = None  # the handoff directory of the adapter loaded last, removed at the next one

    def load_adapter(self, path: str) -> float:
        """Serve the peft adapter at `path` from now on; returns the seconds taken."""
        t0 = time.perf_counter()
        self.llm.llm_engine.add_lora(lora_request(path, load_inplace=True))
        self._serve_adapter(str(path), None, "path")
        return time.perf_counter() - t0

    def load_adapter_from_refs(self, bucket_refs: list, config: dict, nbytes: int = 0) -> float:
        """The adapter's tensors from Ray object refs of buckets (`(name, tensor)` lists) and its peft config:
        written as a peft directory on this node, then loaded as `load_adapter`."""
        import ray

        from east_ds.cluster.weight_sync import write_adapter_dir

        t0 = time.perf_counter()
        handoff = self._handoff(nbytes)
        path = write_adapter_dir((item for ref in bucket_refs for item in ray.get(ref)), config, handoff)
        self.llm.llm_engine.add_lora(lora_request(path, load_inplace=True))
        self._serve_adapter(path, handoff, "object_store")
        return time.perf_counter() - t0

    def load_adapter_broadcast(self, buckets_meta: list, config: dict) -> float:
        """Every worker receives the adapter from trainer rank 0 and loads it (AdapterWorkerMethods)."""
        from east_ds.cluster.weight_sync import moved

        t0 = time.perf_counter()
        handoff = self._handoff(moved(buckets_meta)["bytes"])
        self.llm.collective_rpc("east_adapter_from_broadcast", args=(buckets_meta, config, handoff))
        self._serve_adapter(os.path.join(handoff, "worker_0"), handoff, "broadcast")
        return time.perf_counter() - t0

    def _handoff(self, nbytes: int) -> str:
        """A new directory on this node for an adapter's files (device_plan.weight_handoff_dir)."""
        from east_ds.cluster.device_plan import SHM_DIR, weight_handoff_dir

        shm_free = shutil.disk_usage(SHM_DIR).free if os.path.isdir(SHM_DIR) else None
        parent = weight_handoff_dir(nbytes, shm_free, tempfile.gettempdir())
        return tempfile.mkdtemp(prefix=f"east-adapter-{self.engine_index}-", dir=parent)

    def _serve_adapter(self, path: str, handoff: str | None, how: str) -> None:
        """Requests go through the adapter at `path` from now on; the previous handoff directory goes."""
        self.lora_request = lora_request(path)
        self.llm.reset_prefix_cache()
        old, self._adapter_dir = self._adapter_dir, handoff
        if old and old != handoff:
            shutil.rmtree(old, ignore_errors=True)
        if hasattr(self, "_event"):  # PlacedLLMEngine's event log
            self._event(f"load_adapter {how}")
