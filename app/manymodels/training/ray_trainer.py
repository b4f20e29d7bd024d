"""Training a task with Ray Train's ``TorchTrainer``: data-parallel workers, the weights back.

Ray 2.60 runs the Ray Train V2 API by default (``RAY_TRAIN_V2_ENABLED`` unset means on): a
controller actor drives the worker group and ``ray.train.report`` is a barrier across workers, so
every worker reports the same number of times. Workers report once, at the end: each report is a
barrier plus a round trip to the controller, which costs far more than an epoch of a small model.
Each worker builds the task from its import path and options, so user classes are imported in the
worker processes (they ship in the image) rather than pickled by value.

The trained weights come back through Ray's object store, not as a Ray Train checkpoint: rank 0
hands its state dict to a small actor the driver created (``_WeightsDrop``). A checkpoint would be
persisted under ``RunConfig.storage_path``, which must then be storage every node reaches (a shared
mount or a bucket) once the workers run on other pods than the driver; the object store reaches
every node of the Ray cluster already, so the RayJob needs no shared storage for Ray Train.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from manymodels.training.settings import Scaling
from manymodels.training.task import TrainingTask, load_task


@dataclass(frozen=True)
class TrainOutcome:
    model: torch.nn.Module  # the trained model, on the CPU, in eval mode
    final_loss: float | None  # rank 0's mean loss over its last epoch; None with 0 epochs


def train_with_ray(
    task_path: str,
    options: dict[str, Any],
    scaling: Scaling,
    *,
    run_name: str,
) -> TrainOutcome:
    """Run the task's training loop on ``scaling.num_workers`` Ray Train workers; return the model.

    Ray must be initialised (``ray.init``) by the caller. Ray Train's run folder (its bookkeeping;
    no weights) is a temporary folder, removed afterwards.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if scaling.num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {scaling.num_workers}")
    storage = tempfile.mkdtemp(prefix="manymodels-train-")
    drop = ray.remote(num_cpus=0)(_WeightsDrop).remote()
    try:
        resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
        if scaling.use_gpu:
            resources["GPU"] = 1.0
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"task": task_path, "options": options, "drop": drop},
            scaling_config=ScalingConfig(
                num_workers=scaling.num_workers,
                use_gpu=scaling.use_gpu,
                resources_per_worker=resources,
            ),
            run_config=RunConfig(name=run_name, storage_path=storage),
        )
        trainer.fit()
        handed = ray.get(drop.take.remote())
        if handed is None:
            raise RuntimeError(f"Ray Train run {run_name!r} finished without rank 0's weights")
        weights, loss = handed
        task = load_task(task_path, options)
        model = task.build_model()
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return TrainOutcome(model=model, final_loss=None if loss is None else float(loss))
    finally:
        ray.kill(drop)
        shutil.rmtree(storage, ignore_errors=True)


class _WeightsDrop:
    """Rank 0's serialised state dict and last-epoch loss, until the driver takes them (an actor)."""

    def __init__(self) -> None:
        self.handed: tuple[bytes, float | None] | None = None

    def put(self, weights: bytes, loss: float | None) -> None:
        self.handed = (weights, loss)

    def take(self) -> tuple[bytes, float | None] | None:
        return self.handed


def _train_worker(config: dict[str, Any]) -> None:
    """The per-worker loop Ray Train runs on every worker (rank 0 hands back the weights)."""
    import ray.train
    import ray.train.torch

    task = load_task(config["task"], config["options"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = ray.train.torch.prepare_model(task.build_model())
    loader = ray.train.torch.prepare_data_loader(
        torch.utils.data.DataLoader(task.train_dataset(), batch_size=task.batch_size, shuffle=True)
    )
    optimizer = task.optimizer(model.parameters())
    loss_value: float | None = None
    for epoch in range(task.epochs):
        if context.get_world_size() > 1:
            loader.sampler.set_epoch(epoch)  # a new shuffle per epoch, still disjoint per worker
        model.train()
        total, batches = 0.0, 0
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = task.loss(model(inputs), targets)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        loss_value = total / max(batches, 1)
        if rank == 0 and (epoch + 1 == task.epochs or (epoch + 1) % 10 == 0):
            # stderr: Ray forwards it to the driver's stderr (the job's stdout is its JSON summary)
            print(f"epoch {epoch + 1}/{task.epochs}: loss {loss_value:.6g} (rank 0)", file=sys.stderr)
    _report_final(model, rank, loss_value, task, config["drop"])


def _report_final(
    model: torch.nn.Module, rank: int, loss: float | None, task: TrainingTask, drop: Any
) -> None:
    import ray.train

    metrics: dict[str, Any] = {"epoch": task.epochs, "final": True}
    if loss is not None:
        metrics["loss"] = loss
    if rank == 0:
        import ray

        inner = getattr(model, "module", model)  # unwrap DistributedDataParallel
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in inner.state_dict().items()}, buffer)
        ray.get(drop.put.remote(buffer.getvalue(), loss))  # before the report: the driver reads it after fit
    ray.train.report(metrics)  # a barrier: every worker calls it
