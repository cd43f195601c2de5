"""Generated attnserve.v1 protobuf and gRPC stubs. Do not edit: run `make proto`."""
