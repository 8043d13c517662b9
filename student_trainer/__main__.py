from common.host_memory import keep_freed_memory

keep_freed_memory()  # a program-wide malloc setting: the entry point's to make, not the library's

from student_trainer.cli import main  # noqa: E402

main()
