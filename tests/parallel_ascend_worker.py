"""One msrun worker of tests/test_parallel_ascend.py: a tiny PanGu-pi on 8 NPUs, dp 2 x mp 2 x pp 2.

Trains three steps with the layout of pangu_pro.model.sharding, saves this rank's checkpoint and
strategy under OUT (argv[1]); the test then merges them on the host.
"""
import sys

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.communication import get_rank, init

from pangu_pro.config import ModelConfig, ParallelConfig
from pangu_pro.model.distributed_ckpt import rank_checkpoint_dir
from pangu_pro.model.pangu_pi import PanGuPiForCausalLM, PanGuPiWithLoss
from pangu_pro.model.sharding import configure_model, set_parallel_context, strategy_file_path, wrap_for_pipeline

out = sys.argv[1]
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("Ascend")
init()
rank = get_rank()
model_cfg = ModelConfig(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256,
                        seq_length=128, aug_shortcut_ratio=8, compute_dtype="bfloat16", use_flash_attention=True)
parallel = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
                          sequence_parallel=True, optimizer_shard=True, recompute="selective")
set_parallel_context(parallel, strategy_file=strategy_file_path(out, rank))
ms.set_seed(0)
network = PanGuPiWithLoss(PanGuPiForCausalLM(model_cfg))
configure_model(network, parallel)
piped = wrap_for_pipeline(network, parallel)
optimizer = nn.AdamWeightDecay(network.trainable_params(), 1e-3)
step = nn.TrainOneStepCell(piped, optimizer)
ids = Tensor(np.random.default_rng(0).integers(3, 512, (2 * 2, 129)).astype(np.int32))  # global batch
for i in range(3):
    print(f"rank {rank} step {i} loss {float(step(ids).asnumpy()):.4f}", flush=True)
target = rank_checkpoint_dir(out, rank)
target.mkdir(parents=True, exist_ok=True)
# the slices as held (integrated_save=False): the strategy file says how they fit together
ms.save_checkpoint(network, str(target / "step_3.safetensors"), integrated_save=False, format="safetensors")
