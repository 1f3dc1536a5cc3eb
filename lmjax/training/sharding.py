"""Device mesh and the logical-axis rules that place parameters and activations on it.

Models name their axes logically ('embed', 'heads', ...); these rules map the names onto the
mesh axes ('data', 'fsdp', 'tensor'), so a new layout is a change of rules, not of the model.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lmjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Logical name -> mesh axis (None: replicated). The embedding table's model dim stays
# replicated: sharding it over fsdp makes XLA fully rematerialise the gather.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_vocab", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("length", None),
    ("length_pos", None),
    ("act_embed", None),
    ("norm", None),
    ("layers", None),  # the stacked-layer axis of scan_layers=True
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolve config.mesh (a MeshConfig: one entry may be -1, meaning 'the remaining devices')."""
    sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh fsdp*tensor={known} does not divide the {num_devices} devices; "
                "choose sizes whose product divides the device count"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config.mesh data*fsdp*tensor={'*'.join(map(str, sizes))}={math.prod(sizes)} does not "
            f"match the {num_devices} available devices; set config.mesh.data=-1 to use them all"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: Linen's logical partitioning does not work with the Explicit default.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def replica_axis(mesh: Mesh, replicas: int) -> str | None:
    """The mesh axis that config.train.replicas' leading axis is split over: 'data' when the
    replicas fill it evenly (each replica's batch then splits over fsdp alone), else None (every
    device holds every replica, the batch splits as usual). One process only: a job of several
    would have to hand each process whole replicas' batches."""
    spare = mesh.shape["data"] > 1 and replicas % mesh.shape["data"] == 0
    return "data" if replicas > 1 and spare and jax.process_count() == 1 else None


def logical_rules(replica: str | None = None) -> tuple:
    """LOGICAL_RULES, with the batch off the mesh axis that the replicas take."""
    if replica is None:
        return LOGICAL_RULES
    return tuple((name, tuple(a for a in axes if a != replica) if name == "batch" else axes)
                 for name, axes in LOGICAL_RULES)


def batch_axes(replica: str | None = None) -> tuple[str, ...]:
    return dict(logical_rules(replica))["batch"]


def batch_sharding(mesh: Mesh, replica: str | None = None, replicas: int = 1) -> NamedSharding:
    """A batch [B, ...]; with replicas > 1, [replicas, B, ...] (one batch per replica)."""
    lead = (replica,) if replicas > 1 else ()
    return NamedSharding(mesh, P(*lead, batch_axes(replica)))


def with_replicas(shardings, replica: str | None):
    """Shardings of a replicated state: its leading replica axis over `replica`, the rest as one
    replica's."""
    return jax.tree.map(lambda s: NamedSharding(s.mesh, P(replica, *s.spec)) if isinstance(s, NamedSharding) else s,
                        shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def tree_shardings(mesh: Mesh, boxed_abstract_tree):
    """NamedShardings for a tree of (possibly nn.LogicallyPartitioned) abstract arrays.

    A dimension that the mesh axis does not divide (a 65-character vocabulary over tensor=2)
    is replicated instead: correct, only less sharded.
    """
    specs = nn.get_partition_spec(boxed_abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, LOGICAL_RULES)
    shapes = nn.unbox(boxed_abstract_tree)

    def fit(spec, x):
        if not hasattr(x, "shape"):  # an empty optimizer-state node (optax's MaskedNode, Muon's)
            return x
        if not isinstance(spec, P):
            return NamedSharding(mesh, P())
        parts = []
        for dim, axes in zip(x.shape, tuple(spec) + (None,) * (len(x.shape) - len(spec))):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            size = math.prod(mesh.shape[a] for a in names)
            parts.append(axes if names and dim % size == 0 else None)
        return NamedSharding(mesh, P(*parts))

    return jax.tree.map(fit, mesh_specs, shapes, is_leaf=lambda s: isinstance(s, P) or s is None)


def check_batch(batch_size: int, grad_accum: int, mesh: Mesh, process_count: int = 1,
                replicas: int = 1) -> None:
    replica = replica_axis(mesh, replicas)
    axes = batch_axes(replica)
    shards = math.prod(mesh.shape[a] for a in axes)
    micro = batch_size // grad_accum
    if micro % shards:
        raise ConfigError(
            f"micro-batch of {micro} sequences (config.train.batch_size={batch_size} / grad_accum="
            f"{grad_accum}) is not divisible by the {shards} data-parallel devices (mesh {'*'.join(axes)}"
            f"{'; the replicas take the data axis' if replica else ''}); "
            f"use a batch size that is a multiple of {shards * grad_accum}"
        )
    if batch_size % process_count:
        raise ConfigError(
            f"config.train.batch_size={batch_size} is not divisible by the {process_count} processes"
        )


def global_batch(local_batch, mesh: Mesh, sharding: NamedSharding | None = None):
    """Assemble each process's rows into one global array sharded over the batch axes (or
    `sharding`: a Setup's batch_sharding); a dict of arrays (packed documents' tokens and
    segments) leaf by leaf, each sharded alike."""
    sharding = sharding or batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_put(x, sharding), local_batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
