"""The student side of UNIX-KD: selection, mixing, teacher clients, training loop.

For a training loop of one's own (the public surface):

``TeacherModule(url, outputs=("logits",), *, mean=None, std=None, **connection_options)``
    the teacher at ``url`` (``grpc://HOST:PORT``, ``triton://HOST:PORT/MODEL``, ``local:PATH``) as an
    ``nn.Module``: ``forward(images)`` returns its logits on the images' device and in their dtype,
    ``submit(images)`` a future of them; ``pretrained_cfg``, ``num_classes`` as timm models have them, so
    ``timm.task.LogitDistillationTask(student, teacher_model=TeacherModule(url))`` takes it;
    ``counters`` and ``server_stats()`` to reconcile what was sent with what the server counted;
    ``close()`` or a ``with`` block. See ``student_trainer.library``.

``unix_select(student, images, labels, k, *, b=32, w=10, selection="entropy", generator=None)``
    UNIX-KD's step on one batch: the student's no-grad uncertainty pass, the batch sorted, each image mixed
    with a shuffled partner (the more certain, the more mixed), the k most uncertain kept: a ``UnixBatch``
    (``images``, ``labels_a``, ``labels_b``, ``mix``, ``indices``; ``task_loss(logits)``), selected and
    mixed by the functions the trainer's ``unix`` policy runs. ``kd_loss`` and ``mixed_ce``: the losses.

``UnixDistillationTask(student, teacher_model, ..., k=)``
    timm's ``LogitDistillationTask`` (same arguments and return dict, plus ``teacher_images``) on the k
    selected mixed images of each batch. See docs/library.md.

``AnswerCache(url, *, teacher_id, dataset_id, key="logits", shape=None)``, ``CachedTeacher(teacher, store)``
    the teacher's answers kept in an answer store (``lmdb:PATH``, ``redis://``) by (sample, view):
    ``lookup(samples, views)`` (``answers``, ``found``), ``keep(samples, views, answers)`` put-if-absent;
    ``CachedTeacher(...)(images, samples, views)`` asks the teacher only about the rows the store lacks.

``student_trainer.teachers.connect(url, **options)``
    the teacher client underneath (``TeacherClient``: ``describe``, ``submit``, ``infer``, ``server_stats``).
"""
__all__ = ["AnswerCache", "CachedTeacher", "Lookup", "TeacherModule", "UnixBatch", "UnixDistillationTask", "kd_loss",
           "mixed_ce", "unix_select"]


def __getattr__(name: str):
    # Imported on first use, so that `python -m student_trainer` and the trainer's own modules do not load it.
    if name in __all__:
        import student_trainer.library as library
        return getattr(library, name)
    raise AttributeError(f"module 'student_trainer' has no attribute {name!r}")
