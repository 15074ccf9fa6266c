"""Cluster: where actors run, and what differs when they run on GPUs.

Reads the run config's `placement`, `rollout` and `training` sections and the Ray cluster's resources; writes
nothing of the pipeline (the driver records where engines and ranks landed in `placement.json`).

    ray_utils    init_ray (start or join Ray; what every actor's environment holds), cluster_gpus, NodeLostError
    placement    Need, placement_needs, shortfall, Placement (colocated / split), wait_placement_group,
                 wait_scheduled, SchedulingTimeout, actor_location, device_memory
    storage      check_shared_path (does every node see a path as the driver does), StorageNotShared
    weight_sync  weight buckets: iter_buckets, bucket_meta, checkpoint_tensors, checkpoint_metas, bucket files
    device_plan  every GPU-only decision as a small pure function, pinned by tests/test_gpu_plan.py (docs/gpu.md)

Ray is imported inside the functions that need it; importing this package loads no Ray, vLLM or DeepSpeed.
"""
