"""``python -m student_trainer.tools.experiment``: the command lives in ``cli`` so tests can call it."""
from student_trainer.tools.experiment.cli import main

if __name__ == "__main__":
    main()
