"""Train state, the head reset and the jitted per-batch functions (train step, feature extraction).

The state is replicated over the device mesh and the batch sharded on its 'data' axis; XLA inserts
the gradient all-reduce and BatchNorm sees the global batch, as the reference's single-GPU batch
statistics do. The body and the head (`params['top_layer']`) have separate optimizers: the body's
(SGD with momentum) persists across epochs, the head's (SGD, no momentum) is created anew with the
head each epoch (docs/design.md section 1, step 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dcjax.data.pipeline import normalize

HEAD = "top_layer"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # full tree, head included
    batch_stats: Any
    body_opt_state: Any
    head_opt_state: Any


def split_head(params: dict) -> tuple[dict, dict]:
    body = {k: v for k, v in params.items() if k != HEAD}
    return body, params[HEAD]


def body_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with momentum; weight decay on every parameter, added to the gradient (PyTorch SGD)."""
    o = config.optim
    return optax.chain(optax.add_decayed_weights(o.weight_decay),
                       optax.sgd(o.lr, momentum=o.momentum or None))


def head_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    o = config.optim
    return optax.chain(optax.add_decayed_weights(o.head_weight_decay), optax.sgd(o.head_lr))


def lr_scale(config: ml_collections.ConfigDict, step, steps_per_epoch: int):
    """The factor the body's learning rate is multiplied by at global step `step` (jnp scalar):
    1 for config.optim.lr_schedule 'constant'; for 'cosine', (1 + cos(pi * t)) / 2 with
    t = step / (lr_decay_epochs * steps_per_epoch), capped at 1 (so 0 from then on). Scaling the
    SGD update after momentum is PyTorch's semantics for a learning-rate schedule. The head keeps
    head_lr: it is drawn anew every epoch and has to fit that epoch's pseudo-labels (decayed with
    the body, the last epochs trained the body against a head that could no longer learn: loss back
    at log k)."""
    o = config.optim
    if o.lr_schedule == "constant":
        return jnp.ones((), jnp.float32)
    total = max(1, o.lr_decay_epochs * steps_per_epoch)
    t = jnp.minimum(jnp.asarray(step, jnp.float32) / total, 1.0)
    return 0.5 * (1.0 + jnp.cos(jnp.pi * t))


def new_head(rng: jax.Array, head: dict) -> dict:
    """A fresh top_layer like `head`: weights N(0, 0.01), bias 0."""
    kernel = 0.01 * jax.random.normal(rng, head["kernel"].shape, head["kernel"].dtype)
    return {"kernel": kernel, "bias": jnp.zeros_like(head["bias"])}


def create_train_state(model, config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    size = config.data.image_size
    variables = model.init({"params": rng, "dropout": rng}, jnp.zeros((1, size, size, 3)),
                           train=False)
    params = variables["params"]
    body, head = split_head(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      body_opt_state=body_optimizer(config).init(body),
                      head_opt_state=head_optimizer(config).init(head))


def reset_head(state: TrainState, config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """New top_layer weights and a new head optimizer; the body and its momentum are kept."""
    head = new_head(rng, state.params[HEAD])
    return state.replace(params={**state.params, HEAD: head},
                         head_opt_state=head_optimizer(config).init(head))


def make_train_step(model, config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> Callable:
    """(state, images uint8 [B,H,W,3], labels [B], rng) -> (state, {'loss', 'accuracy'}).
    `steps_per_epoch` sets the length of a config.optim.lr_schedule other than 'constant'."""
    body_tx, head_tx = body_optimizer(config), head_optimizer(config)

    def loss_fn(params, batch_stats, images, labels, rng):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                      normalize(images), train=True, rngs={"dropout": rng},
                                      mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, (updates["batch_stats"], accuracy)

    def train_step(state: TrainState, images, labels, rng):
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (batch_stats, accuracy)), grads = grad_fn(state.params, state.batch_stats, images,
                                                          labels, rng)
        body, head = split_head(state.params)
        body_grads, head_grads = split_head(grads)
        body_updates, body_opt_state = body_tx.update(body_grads, state.body_opt_state, body)
        head_updates, head_opt_state = head_tx.update(head_grads, state.head_opt_state, head)
        if config.optim.lr_schedule != "constant":
            scale = lr_scale(config, state.step, steps_per_epoch)
            body_updates = jax.tree_util.tree_map(lambda u: u * scale.astype(u.dtype), body_updates)
        body = optax.apply_updates(body, body_updates)
        head = optax.apply_updates(head, head_updates)
        new_state = state.replace(step=state.step + 1, params={**body, HEAD: head},
                                  batch_stats=batch_stats, body_opt_state=body_opt_state,
                                  head_opt_state=head_opt_state)
        return new_state, {"loss": loss, "accuracy": accuracy}

    return train_step


def make_feature_fn(model, output: str = "embedding") -> Callable:
    """(params, batch_stats, images uint8) -> eval-mode features: the model's embedding (the vector
    that is clustered) by default."""

    def features(params, batch_stats, images):
        return model.apply({"params": params, "batch_stats": batch_stats}, normalize(images),
                           train=False, output=output)

    return features
