"""The GPU nodes of a Ray cluster whose torch cannot use their GPU (a CPU wheel, a missing
driver): asked once before a search that trains on GPUs, so that a misconfigured node is named
before its trials fail there (each also fails at once itself: `trial.trial_device`)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _probe() -> tuple[bool, str, str]:
    import socket

    import torch

    from raysearch.training.train import cuda_report

    return torch.cuda.is_available(), socket.gethostname(), cuda_report()


def unusable_gpu_nodes(timeout_s: float = 60.0) -> list[str]:
    """One line per live GPU node whose torch sees no CUDA device under the GPU Ray gives it; a
    node that does not answer within ``timeout_s`` (busy, still starting) is not judged."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    if not nodes:
        return []
    probe = ray.remote(num_cpus=0, num_gpus=0.01, max_retries=0)(_probe)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in late:
        ray.cancel(ref, force=True)
    lines = []
    for node, ref in zip(nodes, refs):
        if ref not in ready:
            continue
        usable, host, report = ray.get(ref)
        if not usable:
            lines.append(f"GPU node {host} ({node['NodeManagerAddress']}): {report}")
    return lines
