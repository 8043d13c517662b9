from student_trainer.cli import main

main()
