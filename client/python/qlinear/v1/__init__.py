"""Generated qlinear.v1 stubs (protoc + grpc_python_plugin at build time)."""
