"""AdamW with decoupled weight decay, and which parameters it decays.

`AdamW` is a Cell that owns the first and second moments (``adam_m.<param>``, ``adam_v.<param>``) and
the update count (``adam_step``); the learning rate is an input of every call, so the schedule stays a
pure Python function (`schedule.lr_at`) and a resumed run simply passes the same numbers again.
The update is AdamW with decoupled weight decay and bias correction (t = update count):

    p <- p * (1 - lr * wd)                       (wd = 0 for excluded parameters)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

The last line is MindSpore's fused `ops.Adam` kernel (5x faster on the CPU than the same update
written as separate ops). It equals PyTorch's `m_hat / (sqrt(v_hat) + eps)` with eps scaled by
sqrt(1 - b2^t): the same up to a different epsilon during the first few hundred steps.

Weight decay (`decays`, `pangu_pro.model.params`): every matrix is decayed (projections, embedding, LM head) except
  * 1-D parameters: the RMSNorm weights (and any bias);
  * SIAF's ``scale`` and ``bias`` [n, F]: 2-D only because they hold n terms per channel; they are
    activation-function parameters (initialised to exactly SiLU), and pulling them to zero would turn
    the activation off, so they are treated like norm gains.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from pangu_pro.model.params import decays  # the rule is the model's: MindFormers' route uses it too



_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Number",
                        "Tensor", "Tensor", "Tensor", "Tensor")
def _update_one(adam, beta1_power, beta2_power, lr, beta1, beta2, eps, weight_decay, param, m, v, grad):
    """One parameter: decoupled decay, then MindSpore's fused Adam kernel (in place on param, m, v)."""
    if weight_decay != 0.0:
        param = ops.depend(param, ops.assign(param, param * (1.0 - lr * weight_decay)))
    return adam(param, m, v, beta1_power, beta2_power, lr, beta1, beta2, eps, grad)


class AdamW(nn.Cell):
    """AdamW over `params`; ``optimizer(grads, lr)`` applies one update (returns True)."""

    def __init__(self, params, *, weight_decay: float = 0.1, beta1: float = 0.9, beta2: float = 0.95,
                 eps: float = 1e-8):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)
        self.moments1 = self.params.clone(prefix="adam_m", init="zeros")
        self.moments2 = self.params.clone(prefix="adam_v", init="zeros")
        self.step = Parameter(Tensor([0], ms.int32), name="adam_step", requires_grad=False)  # [1]: updates so far
        self.weight_decays = tuple(float(weight_decay) if decays(p.name, p.shape) else 0.0 for p in self.params)
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.adam = ops.Adam()
        self.hyper_map = ops.HyperMap()

    def state_parameters(self) -> list[Parameter]:
        """What a checkpoint must hold to resume the optimizer exactly."""
        return [self.step, *self.moments1, *self.moments2]

    def construct(self, grads, lr):
        step = ops.assign_add(self.step, ops.ones_like(self.step))
        t = ops.cast(step, ms.float32)[0]
        beta1_power = ops.pow(self.beta1, t)
        beta2_power = ops.pow(self.beta2, t)
        updated = self.hyper_map(ops.partial(_adamw_update, self.adam, beta1_power, beta2_power, lr, self.beta1,
                                             self.beta2, self.eps),
                                 self.weight_decays, self.params, self.moments1, self.moments2, grads)
        return ops.depend(True, updated)


def build_optimizer(params, train_cfg) -> AdamW:
    """The AdamW of a TrainConfig (betas, eps, weight decay) over `params`."""
    return AdamW(params, weight_decay=train_cfg.weight_decay, beta1=train_cfg.beta1, beta2=train_cfg.beta2,
                 eps=train_cfg.eps)
