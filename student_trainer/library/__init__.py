"""The teacher for a training loop of one's own: ``TeacherModule(url)``, an ``nn.Module`` whose forward is the
served teacher's answer, in the shape timm's distillation tasks take as a teacher."""
from student_trainer.library.teacher_module import TeacherModule

__all__ = ["TeacherModule"]
