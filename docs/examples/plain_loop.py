"""UNIX-KD in a plain PyTorch loop, asking a served teacher about the k most uncertain images of each batch.

python docs/examples/plain_loop.py --teacher-url grpc://HOST:PORT --steps 20   (synthetic data, the teacher's shape)
"""
import argparse

import torch
from torch.utils.data import DataLoader

from common.data import build_dataset
from common.models import build_model
from student_trainer import TeacherModule, kd_loss, unix_select

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--teacher-url", required=True)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--k", type=int, default=48, help="images of each batch the teacher is asked about")
args = parser.parse_args()

with TeacherModule(args.teacher_url) as teacher:
    shape, classes = tuple(teacher.info.input_shape), teacher.num_classes
    data = build_dataset("synthetic", image_shape=shape, num_classes=classes, test_size=16,
                         train_size=args.steps * args.batch_size)
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    student = build_model("resnet8", num_classes=classes, in_channels=shape[0]).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)  # the partners and the mixing strength: a run repeats
    for step, (images, labels) in enumerate(loader):
        batch = unix_select(student, images, labels, args.k, b=args.batch_size / 2, generator=generator)
        answer = teacher.submit(batch.images)  # the teacher works while the student does
        logits = student(batch.images)
        loss = kd_loss(logits, answer.result(), T=4.0) + 0.1 * batch.task_loss(logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.3f}, teacher asked about {len(batch)} of {len(images)} images")
    print(f"the teacher saw {teacher.counters.images} images in {args.steps} steps")
