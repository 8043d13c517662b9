"""For a training loop of one's own: the served teacher as a module, and UNIX-KD's step as functions.

``TeacherModule(url)``: an ``nn.Module`` whose forward is the served teacher's answer, in the shape timm's
distillation tasks take as a teacher. ``unix_select(student, images, labels, k)``: UNIX-KD's selection and
mixing of one batch (a ``UnixBatch``), with ``kd_loss`` and ``mixed_ce`` the trainer's losses.
``UnixDistillationTask``: timm's ``LogitDistillationTask`` on UNIX-KD's batch (imported on first use: timm).
``AnswerCache`` and ``CachedTeacher``: the teacher's answers kept in an answer store by (sample, view), so
a loop asks the teacher about each row once (imported on first use).
See docs/library.md.
"""
from student_trainer.library.teacher_module import TeacherModule
from student_trainer.library.unix import UnixBatch, kd_loss, mixed_ce, unix_select

__all__ = ["AnswerCache", "CachedTeacher", "Lookup", "TeacherModule", "UnixBatch", "UnixDistillationTask", "kd_loss",
           "mixed_ce", "unix_select"]
_STORED = ("AnswerCache", "CachedTeacher", "Lookup")


def __getattr__(name: str):
    if name == "UnixDistillationTask":  # timm's task package, loaded only when asked for
        from student_trainer.library.timm_task import UnixDistillationTask
        return UnixDistillationTask
    if name in _STORED:  # the answer store's backends, loaded only when asked for
        from student_trainer.library import answer_cache
        return getattr(answer_cache, name)
    raise AttributeError(f"module 'student_trainer.library' has no attribute {name!r}")
