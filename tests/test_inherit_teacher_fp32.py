"""A teacher stored in bfloat16 (the Ascend default for a frozen teacher, forced here on the CPU with
`inherit.teacher_dtype: bfloat16`) gives a student made of the checkpoint's float32 values, bit for bit."""
import numpy as np

from pangu_pro.cli import main
from pangu_pro.tensors import load_tensors
from tests.test_inherit_run import setup, write_inherit  # noqa: F401 - the module fixture (tiny teacher and data)

MATMUL = ("attention.wq.weight", "attention.wk.weight", "attention.wo.weight", "feed_forward.w1.weight",
          "feed_forward.w2.weight")


def test_a_bfloat16_teacher_materialises_the_checkpoint_float32_values(setup):
    path = write_inherit(setup, "bf16_teacher", criterion="l2", layer_selection="uniform", teacher_dtype="bfloat16")
    assert main(["inherit", str(path), "--no-progress"]) == 0
    teacher = load_tensors(str(setup / "teacher.safetensors"))[0]
    student = load_tensors(str(setup / "bf16_teacher" / "student" / "model.safetensors"))[0]
    checked = 0
    for name, value in student.items():
        if not name.endswith(MATMUL):
            continue
        # the student's values are a selection of the teacher's: every one is a checkpoint value, exactly
        source = np.concatenate([v.reshape(-1) for k, v in teacher.items() if k.endswith(name.split(".", 3)[-1])])
        assert value.dtype == np.float32
        assert np.isin(value.reshape(-1), source).all(), name
        checked += 1
    assert checked >= 5
