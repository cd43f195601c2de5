"""Thin gRPC servicers: protobuf in, domain types to a handler, protobuf out."""
