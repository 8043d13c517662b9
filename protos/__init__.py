"""Generated gRPC code for protos/teacher.proto (regenerate with `make protos`)."""
