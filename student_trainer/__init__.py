"""The student side of UNIX-KD: selection, mixing, teacher clients, training loop.

For a training loop of one's own (the public surface):

``TeacherModule(url, outputs=("logits",), *, mean=None, std=None, **connection_options)``
    the teacher at ``url`` (``grpc://HOST:PORT``, ``triton://HOST:PORT/MODEL``, ``local:PATH``) as an
    ``nn.Module``: ``forward(images)`` returns its logits on the images' device and in their dtype,
    ``submit(images)`` a future of them; ``pretrained_cfg``, ``num_classes`` as timm models have them, so
    ``timm.task.LogitDistillationTask(student, teacher_model=TeacherModule(url))`` takes it;
    ``counters`` and ``server_stats()`` to reconcile what was sent with what the server counted;
    ``close()`` or a ``with`` block. See ``student_trainer.library``.

``student_trainer.teachers.connect(url, **options)``
    the teacher client underneath (``TeacherClient``: ``describe``, ``submit``, ``infer``, ``server_stats``).
"""
__all__ = ["TeacherModule"]


def __getattr__(name: str):
    # Imported on first use, so that `python -m student_trainer` and the trainer's own modules do not load it.
    if name == "TeacherModule":
        from student_trainer.library import TeacherModule
        return TeacherModule
    raise AttributeError(f"module 'student_trainer' has no attribute {name!r}")
