"""Data construction with a teacher model: Self-Instruct generation and augmentation (paraphrase,
back-translation). Teachers: any OpenAI-compatible endpoint (`openai:MODEL`) or a local model (`local:PATH`)."""

from .augment import AugmentConfig, augment_file
from .self_instruct import SelfInstructConfig, read_seed_tasks, self_instruct
from .teachers import TEACHERS, LocalTeacher, OpenAITeacher, Teacher, TeacherError, TeacherOptions, make_teacher

__all__ = ["AugmentConfig", "LocalTeacher", "OpenAITeacher", "SelfInstructConfig", "TEACHERS", "Teacher",
           "TeacherError", "TeacherOptions", "augment_file", "make_teacher", "read_seed_tasks", "self_instruct"]
