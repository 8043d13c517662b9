"""The teacher side of UNIX-KD: a trained model behind an inference server."""
