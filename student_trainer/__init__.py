"""The student side of UNIX-KD: selection, mixing, teacher clients, training loop."""
