"""Reduced outputs under Triton's names, without starting a server (the live checks, over a real
tritonserver, are in tests/test_triton.py, which shares its one server): every key the teacher
offers is a Triton output; LibTorch's ``NAME__INDEX`` names of the exported model split back to the
keys by the rule the LibTorch backend applies (the text before the *first* ``__``, then digits: the
tuple position), and the client's ``plain_name`` maps them back."""
from common.reductions import offered_keys
from student_trainer.teachers.triton_config import plain_name
from teacher_server.export import FORMATS
from teacher_server.triton_backend import output_shapes, teacher_parameters


def test_pytriton_outputs_are_every_key_with_its_shape(random_teacher):
    shapes = output_shapes(random_teacher)
    assert shapes == offered_keys(random_teacher.output_shapes)
    assert shapes["stage3.attention"] == (8, 8) and shapes["stage3.pool"] == (64,) and shapes["stage3"] == (64, 8, 8)
    assert "pool.attention" not in shapes and "logits.attention" not in shapes
    assert teacher_parameters(random_teacher)["reductions"] == "none,attention,pool"


def test_the_parameters_carry_the_data_set_where_the_checkpoint_records_one(random_teacher):
    from common.teacher_model import load_teacher
    from tests.conftest import SHIPPED_TEACHER

    assert teacher_parameters(load_teacher(str(SHIPPED_TEACHER)))["dataset"] == "fashion-mnist"
    assert "dataset" not in teacher_parameters(random_teacher)


def test_libtorch_names_split_back_to_the_keys(random_teacher):
    keys = list(random_teacher.output_keys)
    input_name, names = FORMATS["torchscript"].tensor_names(keys)
    assert input_name == "images__0"
    for position, (key, name) in enumerate(zip(keys, names)):
        at = name.find("__")  # LibTorch: the first "__" ends the name; all after it must be the index
        assert name[:at] == key and name[at + 2:].isdigit() and int(name[at + 2:]) == position, name
        assert plain_name(name) == key
    assert FORMATS["onnx"].tensor_names(keys) == ("images", keys)  # ONNX keeps the keys as they are


def test_a_timm_teachers_named_features_are_triton_outputs():
    """A timm teacher (``--arch timm.NAME``) on Triton: each ``stageN`` map of timm's feature_info and the
    embedding, with their reductions, under names the LibTorch convention splits back."""
    from common.teacher_model import load_teacher

    teacher = load_teacher(arch="timm.resnet10t", input_shape=(3, 32, 32))
    shapes = output_shapes(teacher)
    assert shapes["stage1"] == (64, 8, 8) and shapes["stage4.attention"] == (1, 1) and shapes["pool"] == (512,)
    assert shapes["logits"] == (10,) and "pool.attention" not in shapes
    _, names = FORMATS["torchscript"].tensor_names(list(shapes))
    assert [plain_name(n) for n in names] == list(shapes)
