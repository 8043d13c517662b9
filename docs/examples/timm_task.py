"""UNIX-KD as a timm training task with a served teacher: UnixDistillationTask where LogitDistillationTask was.

python docs/examples/timm_task.py --teacher-url grpc://HOST:PORT --steps 20   (synthetic data, the teacher's shape)
"""
import argparse

import timm
import torch
from torch.utils.data import DataLoader

from common.data import build_dataset
from student_trainer import TeacherModule, UnixDistillationTask

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--teacher-url", required=True)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--k", type=int, default=48, help="images of each batch the teacher is asked about")
parser.add_argument("--student", default="resnet18", help="a timm model name")
args = parser.parse_args()

with TeacherModule(args.teacher_url) as teacher:
    shape, classes = tuple(teacher.info.input_shape), teacher.num_classes
    data = build_dataset("synthetic", image_shape=shape, num_classes=classes, test_size=16,
                         train_size=args.steps * args.batch_size)
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    student = timm.create_model(args.student, num_classes=classes, in_chans=shape[0])
    # The images are normalised as the teacher's: say so, and timm sends them on as they are.
    student.pretrained_cfg = {**student.pretrained_cfg, "mean": teacher.pretrained_cfg["mean"],
                              "std": teacher.pretrained_cfg["std"]}
    # was: LogitDistillationTask(student, teacher_model=teacher, task_loss_weight=0.1, temperature=4.0)
    task = UnixDistillationTask(student, teacher_model=teacher, task_loss_weight=0.1, temperature=4.0,
                                verbose=False, k=args.k, b=args.batch_size / 2, batch_size=args.batch_size)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    task.train()
    for step, (images, labels) in enumerate(loader):
        result = task(images, labels)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
        print(f"step {step}: loss {result['loss'].item():.3f} (kd {result['kd_loss'].item():.3f}, task "
              f"{result['task_loss'].item():.3f}), teacher asked about {result['teacher_images']} of {len(images)}")
    print(f"the teacher saw {teacher.counters.images} images in {args.steps} steps")
