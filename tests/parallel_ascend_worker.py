"""One msrun worker of tests/test_parallel_ascend.py: a tiny PanGu-pi on 8 NPUs, dp 2 x mp 2 x pp 2.

Builds the network, optimizer and step exactly as `pangu-pro train` does (`trainer.build_training`:
the layout of pangu_pro.model.sharding, the PipelineCell, nn.PipelineGradReducer and the trainer's
own `train/step.py` step with its norm and overflow flag over every rank), trains three steps,
and saves this rank's checkpoint and strategy under OUT (argv[1]); the test then merges them on the host.
"""
import sys

import numpy as np
import mindspore as ms
from mindspore import Tensor
from mindspore.communication import get_group_size, get_rank, init

from pangu_pro.config import config_from_dict
from pangu_pro.model.distributed_ckpt import rank_checkpoint_dir
from pangu_pro.model.sharding import set_parallel_context, strategy_file_path
from pangu_pro.train.trainer import Parallel, build_training

out = sys.argv[1]
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("Ascend")
init()
rank = get_rank()
config = config_from_dict({
    "model": {"vocab_size": 512, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 256,
              "seq_length": 128, "aug_shortcut_ratio": 8, "compute_dtype": "bfloat16", "use_flash_attention": True},
    "parallel": {"data_parallel": 2, "model_parallel": 2, "pipeline_stage": 2, "micro_batch_num": 2,
                 "sequence_parallel": True, "optimizer_shard": True, "recompute": "selective"},
    "train": {"batch_size": 1, "lr": 1e-3, "steps": 3, "output_dir": out}})
set_parallel_context(config.parallel, strategy_file=strategy_file_path(out, rank), config=config)
par = Parallel(rank, get_group_size(), semi_auto=True, replicas=2, num_shards=1, shard_id=0, read_factor=4,
               micro_batches=2, writer=4)
model, loss_net, optimizer, step = build_training(config, par)
ids = Tensor(np.random.default_rng(0).integers(3, 512, (1 * 2 * 2, 129)).astype(np.int32))  # global batch
for i in range(3):
    result = step([ids], 1e-3)
    print(f"rank {rank} step {i} loss {result.loss:.4f} grad_norm {result.grad_norm:.4f} finite {result.finite}",
          flush=True)
    assert result.finite, f"rank {rank}: step {i} not finite"
target = rank_checkpoint_dir(out, rank)
target.mkdir(parents=True, exist_ok=True)
# the slices as held (integrated_save=False): the strategy file says how they fit together
ms.save_checkpoint(loss_net, str(target / "step_3.safetensors"), integrated_save=False, format="safetensors")
